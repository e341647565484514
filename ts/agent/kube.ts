/**
 * The Kubernetes API as the cluster: informers (list + watch, bookmarks, relist on 410 Gone,
 * handled by @kubernetes/client-node) on Namespaces and on this node's Pods. An informer that
 * fails (API server gone) is restarted with backoff; the caches keep serving meanwhile.
 */
import { EventEmitter } from 'node:events';
import * as k8s from '@kubernetes/client-node';
import { logger } from '../util/log.js';
import { MeshError } from '../util/errors.js';
import type { NamespaceObj, PodObj } from './policy.js';
import type { ClusterSource, SourceEvents } from './source.js';

export function loadKubeConfig(kubeconfig?: string): k8s.KubeConfig {
  const kc = new k8s.KubeConfig();
  if (kubeconfig) kc.loadFromFile(kubeconfig);
  else kc.loadFromCluster();
  return kc;
}

export class KubeSource extends EventEmitter<SourceEvents> implements ClusterSource {
  readonly #api: k8s.CoreV1Api;
  #nsInf?: k8s.ListWatch<k8s.V1Namespace>;
  #podInf?: k8s.ListWatch<k8s.V1Pod>;
  #stopped = false;
  readonly #log = logger('kube');

  constructor(readonly kc: k8s.KubeConfig, readonly nodeName: string, readonly backoff = { minMs: 200, maxMs: 10_000 }) {
    super();
    this.#api = kc.makeApiClient(k8s.CoreV1Api);
  }

  async start(): Promise<void> {
    const fieldSelector = `spec.nodeName=${this.nodeName}`;
    const watch = new k8s.Watch(this.kc);
    // Only a successful list counts as synced: deciding from an empty cache would unenroll
    // every pod after a restart while the API server is unreachable.
    const listed = { namespaces: false, pods: false };
    const nsInf = new k8s.ListWatch<k8s.V1Namespace>('/api/v1/namespaces', watch, async () => {
      const l = await this.#api.listNamespace();
      listed.namespaces = true;
      return l;
    }, false);
    const podInf = new k8s.ListWatch<k8s.V1Pod>('/api/v1/pods', watch, async () => {
      const l = await this.#api.listPodForAllNamespaces({ fieldSelector });
      listed.pods = true;
      return l;
    }, false, undefined, fieldSelector);
    this.#listed = listed;
    this.#nsInf = nsInf;
    this.#podInf = podInf;
    const ns = (o: k8s.V1Namespace): void => void this.emit('namespace', o.metadata?.name ?? '');
    const pod = (o: k8s.V1Pod): void => void this.emit('pod', o.metadata?.namespace ?? '', o.metadata?.name ?? '');
    for (const ev of ['add', 'update', 'delete'] as const) {
      nsInf.on(ev, ns);
      podInf.on(ev, pod);
    }
    this.#restartOnError(nsInf as unknown as k8s.Informer<k8s.KubernetesObject>, 'namespaces');
    this.#restartOnError(podInf as unknown as k8s.Informer<k8s.KubernetesObject>, 'pods');
    await Promise.all([
      this.#startWithRetry(nsInf as unknown as k8s.Informer<k8s.KubernetesObject>, 'namespaces'),
      this.#startWithRetry(podInf as unknown as k8s.Informer<k8s.KubernetesObject>, 'pods'),
    ]);
    this.emit('synced');
  }

  #listed = { namespaces: false, pods: false };

  /** Starts until the first list succeeded (errors meanwhile are retried by #restartOnError). */
  async #startWithRetry(inf: k8s.Informer<k8s.KubernetesObject>, what: 'namespaces' | 'pods'): Promise<void> {
    await inf.start().catch(() => {});
    while (!this.#listed[what] && !this.#stopped) await new Promise((r) => setTimeout(r, 50));
  }

  #restartOnError(inf: k8s.Informer<k8s.KubernetesObject>, what: string): void {
    let delay = this.backoff.minMs;
    for (const ev of ['add', 'update', 'delete'] as const) inf.on(ev, () => (delay = this.backoff.minMs));
    inf.on('error', (err: unknown) => {
      if (this.#stopped) return;
      this.emit('error', err instanceof Error ? err : new Error(String(err)));
      this.#log.warn({ what, err: String((err as Error)?.message ?? err), retryInMs: delay }, 'watch failed; restarting');
      setTimeout(() => void inf.start().catch(() => {}), delay);
      delay = Math.min(delay * 2, this.backoff.maxMs);
    });
  }

  stop(): void {
    this.#stopped = true;
    void this.#nsInf?.stop();
    void this.#podInf?.stop();
  }

  namespace(name: string): NamespaceObj | undefined {
    return this.#nsInf?.get(name) as NamespaceObj | undefined;
  }

  listNamespaces(): NamespaceObj[] {
    return (this.#nsInf?.list() ?? []) as NamespaceObj[];
  }

  pod(namespace: string, name: string): PodObj | undefined {
    return this.#podInf?.get(name, namespace) as PodObj | undefined;
  }

  pods(): PodObj[] {
    return (this.#podInf?.list() ?? []) as PodObj[];
  }

  /**
   * JSON merge patch of one annotation (null removes it), through the client's own transport, on
   * the pod's status subresource: it may change metadata too, and `patch pods/status` is a
   * narrower grant than `patch pods` (as istio cni/pkg/util/podutil.go AnnotateEnrolledPod).
   */
  async annotatePod(namespace: string, name: string, key: string, value: string | null): Promise<void> {
    try {
      await this.#api.patchNamespacedPodStatus(
        { namespace, name, body: { metadata: { annotations: { [key]: value } } } },
        k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
      );
    } catch (e) {
      throw new MeshError('INPOD_ERR_AGENT', `annotating pod ${namespace}/${name} failed: ${(e as Error).message}`, { retryable: true, cause: e });
    }
  }
}
