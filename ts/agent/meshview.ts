/**
 * The mesh view: what the CNI plugin (cni/inpod-cni.c) reads to know, without asking the agent,
 * whether a new pod concerns the mesh. A node-local file the agent rewrites whole (written
 * aside, renamed over, so a reader sees the old view or the new one) whenever its cache changes.
 * The decisions are policy.ts's `meshVerdict`; the plugin only looks them up:
 *
 * - `namespaces`: every namespace the agent knows -> whether a pod there with no labels of its
 *   own is in the mesh (the namespace label, and the excluded namespaces);
 * - `pods`: every pod of this node ("namespace/name") -> its uid and its own verdict.
 *
 * The plugin's rule (mesh_lookup in cni/inpod-cni.c, ARCHITECTURE.md "CNI"): a pod the view has
 * (same uid) by its verdict, else by its namespace's; a namespace the view does not know, or no
 * view at all, asks the agent (fail closed). A pod that started uncaptured because the view was
 * behind (a namespace labelled a moment ago, a pod with its own ambient label the view has not
 * seen) is enrolled live by the agent from its cache, as any running pod is.
 *
 * Written only once the cache has been listed, so it never claims less than the cluster has. The
 * file stays when the agent stops: it is what lets pods outside the mesh start meanwhile.
 */
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { logger, type Logger } from '../util/log.js';
import { meshVerdict, NO_EXCLUSIONS, type NamespaceObj, type PodObj } from './policy.js';

/** The format's version; the plugin reads only this one (cni/inpod-cni.c MESH_VIEW_VERSION). */
export const MESH_VIEW_VERSION = 1;

export interface MeshView {
  version: typeof MESH_VIEW_VERSION;
  /** namespace -> whether a pod there with no labels of its own is in the mesh */
  namespaces: Record<string, boolean>;
  /** "namespace/name" of each pod of this node -> its uid and its verdict */
  pods: Record<string, { uid: string; mesh: boolean }>;
}

/** The view of a cache (pure). */
export function meshView(namespaces: NamespaceObj[], pods: PodObj[], nsOf: (name: string) => NamespaceObj | undefined, excluded: ReadonlySet<string> = NO_EXCLUSIONS): MeshView {
  const nsEntries = namespaces
    .map((ns) => ns.metadata?.name ?? '')
    .filter(Boolean)
    .map((name) => [name, meshVerdict(nsOf(name), { metadata: { namespace: name } }, excluded).enroll] as const);
  const podEntries = pods
    .filter((p) => p.metadata?.name && p.metadata.namespace)
    .map((p) => [`${p.metadata!.namespace}/${p.metadata!.name}`, { uid: p.metadata!.uid ?? '', mesh: meshVerdict(nsOf(p.metadata!.namespace!), p, excluded).enroll }] as const);
  // fromEntries defines own properties: a name like "__proto__" from a manifest stays a key
  return { version: MESH_VIEW_VERSION, namespaces: Object.fromEntries(nsEntries.sort(([a], [b]) => a.localeCompare(b))), pods: Object.fromEntries(podEntries.sort(([a], [b]) => a.localeCompare(b))) };
}

export interface MeshViewWriterOptions {
  /** changes within this long become one write (default 10 ms) */
  delayMs?: number;
  log?: Logger;
}

/**
 * Keeps the file at `path` equal to `read()`. `start` writes at once; `changed` rewrites within
 * delayMs, once for a burst; an unchanged view is not rewritten. A failed write is logged and
 * tried again a second later (the old file stays meanwhile, whole).
 */
export class MeshViewWriter {
  readonly #delayMs: number;
  readonly #log: Logger;
  #started = false;
  #timer?: NodeJS.Timeout;
  #last = '';

  constructor(readonly path: string, private readonly read: () => MeshView, o: MeshViewWriterOptions = {}) {
    this.#delayMs = o.delayMs ?? 10;
    this.#log = o.log ?? logger('meshview');
  }

  start(): void {
    this.#started = true;
    this.#write();
  }

  /** The cache changed (ignored before start: start writes the whole view). */
  changed(): void {
    if (!this.#started || this.#timer) return;
    this.#timer = setTimeout(() => this.#write(), this.#delayMs);
  }

  stop(): void {
    this.#started = false;
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #write(): void {
    this.#timer = undefined;
    if (!this.#started) return;
    const text = `${JSON.stringify(this.read())}\n`;
    if (text === this.#last) return;
    try {
      mkdirSync(dirname(this.path), { recursive: true });
      writeFileSync(`${this.path}.tmp`, text, { mode: 0o644 });
      renameSync(`${this.path}.tmp`, this.path);
      this.#last = text;
    } catch (e) {
      this.#log.warn({ path: this.path, err: (e as Error).message }, 'mesh view not written; trying again in 1 s');
      this.#timer = setTimeout(() => this.#write(), 1000);
      this.#timer.unref();
    }
  }
}
