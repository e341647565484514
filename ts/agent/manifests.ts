/**
 * A directory of Namespace and Pod YAML as the cluster (one host, no API server): read at
 * start, re-read on every change. Annotations the agent writes are kept in memory only.
 */
import { EventEmitter } from 'node:events';
import { existsSync, readdirSync, readFileSync, watch, type FSWatcher } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { logger } from '../util/log.js';
import type { NamespaceObj, PodObj } from './policy.js';
import type { ClusterSource, SourceEvents } from './source.js';

export class ManifestSource extends EventEmitter<SourceEvents> implements ClusterSource {
  #ns = new Map<string, NamespaceObj>();
  #pods = new Map<string, PodObj>();
  #annotations = new Map<string, Record<string, string>>();
  #watcher?: FSWatcher;
  #timer?: NodeJS.Timeout;
  readonly #log = logger('manifests');

  constructor(readonly dir: string, readonly nodeName?: string) {
    super();
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
    const files = existsSync(this.dir) ? readdirSync(this.dir).filter((f) => /\.ya?ml$/.test(f)).sort() : [];
    for (const f of files) {
      let docs;
      try {
        docs = parseAllDocuments(readFileSync(join(this.dir, f), 'utf8'));
      } catch (e) {
        this.#log.warn({ file: f, err: (e as Error).message }, 'manifest unreadable; skipped');
        continue;
      }
      for (const d of docs) {
        const o = d.toJS() as { kind?: string; metadata?: { name?: string; namespace?: string } } | null;
        if (!o?.metadata?.name) continue;
        if (o.kind === 'Namespace') ns.set(o.metadata.name, o as NamespaceObj);
        else if (o.kind === 'Pod') {
          const p = o as PodObj;
          if (this.nodeName && p.spec?.nodeName && p.spec.nodeName !== this.nodeName) continue;
          pods.set(`${o.metadata.namespace ?? 'default'}/${o.metadata.name}`, p);
        }
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
