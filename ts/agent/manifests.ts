/**
 * A directory of Namespace and Pod YAML as the cluster (one host, no API server): read at
 * start, re-read on every change. Annotations the agent writes are kept in memory only.
 * A file that cannot be read (broken, an alias bomb, too large) is named in a warning and keeps
 * what it held before; the rest of the directory applies, and the agent still becomes ready.
 * A Pod without spec.serviceAccountName gets "default", as the API server's ServiceAccount
 * admission gives it (the agent then copies it to ZDS as it is, as istio-cni does).
 */
import { EventEmitter } from 'node:events';
import { watch, type FSWatcher } from 'node:fs';
import { logger } from '../util/log.js';
import { ManifestDir, metaString } from '../util/manifestdir.js';
import type { NamespaceObj, PodObj } from './policy.js';
import type { ClusterSource, SourceEvents } from './source.js';

export class ManifestSource extends EventEmitter<SourceEvents> implements ClusterSource {
  #ns = new Map<string, NamespaceObj>();
  #pods = new Map<string, PodObj>();
  #annotations = new Map<string, Record<string, string>>();
  #watcher?: FSWatcher;
  #timer?: NodeJS.Timeout;
  readonly #log = logger('manifests');
  readonly #files: ManifestDir;

  constructor(readonly dir: string, readonly nodeName?: string) {
    super();
    this.#files = new ManifestDir(dir);
  }

  async start(): Promise<void> {
    this.#load();
    this.#watcher = watch(this.dir, () => {
      clearTimeout(this.#timer);
      this.#timer = setTimeout(() => this.#load(), 50);
    });
    this.emit('synced');
  }

  stop(): void {
    this.#watcher?.close();
    clearTimeout(this.#timer);
  }

  #load(): void {
    const ns = new Map<string, NamespaceObj>();
    const pods = new Map<string, PodObj>();
    const { objects, problems } = this.#files.read();
    for (const p of problems) {
      if (p.repeated) continue;
      this.#log.warn({ file: p.file, err: p.error }, p.keptPrevious ? 'manifest unreadable; keeping what it held before' : 'manifest unreadable; skipped');
    }
    for (const o of objects) {
      const name = metaString(o, 'name');
      if (!name) continue;
      if (o.kind === 'Namespace') ns.set(name, o as NamespaceObj);
      else if (o.kind === 'Pod') {
        const p = withDefaultServiceAccount(o as PodObj);
        const node = typeof p.spec?.nodeName === 'string' ? p.spec.nodeName : undefined;
        if (this.nodeName && node && node !== this.nodeName) continue;
        pods.set(`${metaString(o, 'namespace') ?? 'default'}/${name}`, p);
      }
    }
    const changedNs = [...new Set([...ns.keys(), ...this.#ns.keys()])].filter((k) => JSON.stringify(ns.get(k)) !== JSON.stringify(this.#ns.get(k)));
    const changedPods = [...new Set([...pods.keys(), ...this.#pods.keys()])].filter((k) => JSON.stringify(pods.get(k)) !== JSON.stringify(this.#pods.get(k)));
    this.#ns = ns;
    this.#pods = pods;
    for (const n of changedNs) this.emit('namespace', n);
    for (const k of changedPods) {
      const [n, name] = k.split('/') as [string, string];
      this.emit('pod', n, name);
    }
  }

  namespace(name: string): NamespaceObj | undefined {
    return this.#ns.get(name);
  }

  listNamespaces(): NamespaceObj[] {
    return [...this.#ns.values()];
  }

  pod(namespace: string, name: string): PodObj | undefined {
    const p = this.#pods.get(`${namespace}/${name}`);
    if (!p) return undefined;
    const extra = this.#annotations.get(`${namespace}/${name}`);
    return extra ? { ...p, metadata: { ...p.metadata, annotations: { ...p.metadata?.annotations, ...extra } } } : p;
  }

  pods(): PodObj[] {
    return [...this.#pods.values()].map((p) => this.pod(p.metadata?.namespace ?? 'default', p.metadata!.name!)!);
  }

  async annotatePod(namespace: string, name: string, key: string, value: string | null): Promise<void> {
    const k = `${namespace}/${name}`;
    const a = { ...this.#annotations.get(k) };
    if (value === null) delete a[key];
    else a[key] = value;
    this.#annotations.set(k, a);
  }
}

/** The API server's ServiceAccount admission: a pod names "default" when it names no account. */
function withDefaultServiceAccount(p: PodObj): PodObj {
  return p.spec?.serviceAccountName ? p : { ...p, spec: { ...p.spec, serviceAccountName: 'default' } };
}
