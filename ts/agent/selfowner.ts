/**
 * The agent's own pod, its owning DaemonSet and its node, read from the API for the shutdown
 * decision (lifecycle.ts decides; this file only asks). Loaded only when the agent's cluster is
 * the Kubernetes API.
 *
 * The agent's namespace being deleted counts as the DaemonSet being deleted: an uninstall that
 * deletes the namespace may stop the agent's pod before the DaemonSet object goes.
 * The DaemonSet is found through the pod's controller reference, read once at start-up (while the
 * pod surely exists) and again at shutdown; a pod already gone at shutdown (force-deleted) falls
 * back to the start-up answer. istio-cni reads the DaemonSet by a fixed name instead
 * (cni/pkg/nodeagent/server.go, "<name>-node"); the reference follows a renamed DaemonSet.
 */
import * as k8s from '@kubernetes/client-node';
import { logger, type Logger } from '../util/log.js';
import { shutdownVerdict, type DaemonSetObj, type NodeObj, type OwnerLookup } from './lifecycle.js';

export interface SelfRef {
  podName: string;
  podNamespace: string;
  nodeName: string;
}

export interface SelfOwnerOptions {
  /** tries of the whole lookup when the API does not answer (default 3) */
  attempts?: number;
  /** pause between tries (default 500 ms) */
  delayMs?: number;
  /** bound of each request (default 1500 ms) */
  timeoutMs?: number;
  /** bound of the whole lookup, tries and pauses included (default 6000 ms): a shutdown has the pod's grace period in all */
  budgetMs?: number;
  log?: Logger;
}

/** An API answer that ends the lookup (404, 401, 403) rather than being retried. */
class Final extends Error {
  constructor(readonly lookup: OwnerLookup) {
    super(lookup.state);
  }
}

export class SelfOwner {
  readonly #core: k8s.CoreV1Api;
  readonly #apps: k8s.AppsV1Api;
  readonly #o: Required<Omit<SelfOwnerOptions, 'log'>>;
  readonly #log: Logger;
  /** the owning DaemonSet's name as last read from the pod (null: the pod has no DaemonSet owner) */
  #daemonSet: string | null | undefined;

  constructor(kc: k8s.KubeConfig, readonly self: SelfRef, o: SelfOwnerOptions = {}) {
    this.#core = kc.makeApiClient(k8s.CoreV1Api);
    this.#apps = kc.makeApiClient(k8s.AppsV1Api);
    this.#o = { attempts: o.attempts ?? 3, delayMs: o.delayMs ?? 500, timeoutMs: o.timeoutMs ?? 1500, budgetMs: o.budgetMs ?? 6000 };
    this.#log = o.log ?? logger('lifecycle');
  }

  /**
   * At start-up: reads the pod's owner and logs what a shutdown now would do, warning when the
   * agent cannot read what it needs (every shutdown would then keep the plugin). Never throws.
   */
  async remember(): Promise<OwnerLookup> {
    const l = await this.lookup();
    const v = shutdownVerdict(l);
    const fields = { pod: `${this.self.podNamespace}/${this.self.podName}`, daemonSet: this.#daemonSet, node: this.self.nodeName };
    if (l.state === 'present') this.#log.info(fields, 'owner found: a shutdown while it schedules here keeps inpod-cni installed');
    else this.#log.warn({ ...fields, state: l.state, now: v.reason }, 'cannot read the owning DaemonSet: check POD_NAME/POD_NAMESPACE and the role (get pods, daemonsets, nodes)');
    return l;
  }

  /** What the API says now, retried while it does not answer (see OwnerLookup). Never throws. */
  async lookup(): Promise<OwnerLookup> {
    let last = '';
    const end = Date.now() + this.#o.budgetMs;
    for (let i = 0; i < this.#o.attempts && Date.now() < end; i++) {
      if (i > 0) await new Promise((r) => setTimeout(r, Math.min(this.#o.delayMs, end - Date.now())));
      try {
        return await this.#once(end);
      } catch (e) {
        if (e instanceof Final) return e.lookup;
        last = describe(e);
        this.#log.debug({ attempt: i + 1, err: last }, 'owner lookup failed');
      }
    }
    return { state: 'unknown', error: last };
  }

  async #once(end: number): Promise<OwnerLookup> {
    const { podName, podNamespace, nodeName } = this.self;
    const pod = await this.#get(`pod ${podNamespace}/${podName}`, () => this.#core.readNamespacedPod({ name: podName, namespace: podNamespace }), end);
    if (pod) {
      const ref = pod.metadata?.ownerReferences?.find((r) => r.controller && r.kind === 'DaemonSet' && r.apiVersion.startsWith('apps/'));
      this.#daemonSet = ref?.name ?? null;
    }
    // kubectl delete -k deletes the namespace with everything in it: its pods may go before the DaemonSet does
    const ns = await this.#get(`namespace ${podNamespace}`, () => this.#core.readNamespace({ name: podNamespace }), end);
    if (!ns || ns.metadata?.deletionTimestamp) return { state: 'gone', why: `namespace ${podNamespace} is ${ns ? 'being deleted' : 'gone'}` };
    if (this.#daemonSet === undefined) return { state: 'unknown', error: `pod ${podNamespace}/${podName} is gone and its owner was never read` };
    if (this.#daemonSet === null) return { state: 'gone', why: `pod ${podNamespace}/${podName} is not run by a DaemonSet: nothing brings an agent back to this node` };
    const name = this.#daemonSet;
    const ds = await this.#get(`DaemonSet ${podNamespace}/${name}`, () => this.#apps.readNamespacedDaemonSet({ name, namespace: podNamespace }), end);
    if (!ds) return { state: 'gone', why: `DaemonSet ${podNamespace}/${name} is gone` };
    const node = await this.#get(`node ${nodeName}`, () => this.#core.readNode({ name: nodeName }), end);
    return { state: 'present', daemonSet: ds as DaemonSetObj, node: (node as NodeObj | undefined) ?? null };
  }

  /** One GET with a deadline: the object, undefined on 404, Final on 401/403; anything else throws (retried). */
  async #get<T>(what: string, call: () => Promise<T>, end: number): Promise<T | undefined> {
    let timer: NodeJS.Timeout | undefined;
    const ms = Math.max(0, Math.min(this.#o.timeoutMs, end - Date.now()));
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
    });
    try {
      return await Promise.race([call(), deadline]);
    } catch (e) {
      const code = (e as { code?: unknown }).code;
      if (code === 404) return undefined;
      if (code === 401 || code === 403) throw new Final({ state: 'revoked', status: code, what });
      throw new Error(`${what}: ${describe(e)}`);
    } finally {
      clearTimeout(timer);
    }
  }
}

function describe(e: unknown): string {
  const code = (e as { code?: unknown }).code;
  if (typeof code === 'number') return `HTTP ${code}`;
  return ((e as Error)?.message ?? String(e)).split('\n')[0]!;
}
