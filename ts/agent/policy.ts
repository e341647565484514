/**
 * Who is in the mesh (pure): a pod of a namespace labelled istio.io/dataplane-mode=ambient,
 * unless the pod opts out (label =none), runs an Istio sidecar, uses the host network, or its
 * namespace is excluded by configuration (the agent's --exclude-namespaces, the same list the
 * plugin reads from its conflist entry).
 */

export const DATAPLANE_MODE = 'istio.io/dataplane-mode';
export const REDIRECTION_ANNOTATION = 'ambient.istio.io/redirection';
export const SIDECAR_STATUS = 'sidecar.istio.io/status';

export interface ObjectMeta {
  name?: string;
  namespace?: string;
  uid?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  deletionTimestamp?: string | Date;
}
export interface NamespaceObj {
  metadata?: ObjectMeta;
}
export interface PodObj {
  metadata?: ObjectMeta;
  spec?: { nodeName?: string; hostNetwork?: boolean; serviceAccountName?: string; containers?: { name: string }[] };
  status?: { podIP?: string; podIPs?: { ip: string }[]; phase?: string };
}

export interface Verdict {
  enroll: boolean;
  reason: string;
}

/** No namespace excluded. */
export const NO_EXCLUSIONS: ReadonlySet<string> = new Set();

/**
 * `excluded`: namespaces whose pods are never in the mesh, whatever their labels (as istio-cni's
 * excludeNamespaces, cni/pkg/nodeagent/informers.go: the plugin passes them through, and the
 * agent never enrolls them live either, so the two never disagree).
 */
export function meshVerdict(ns: NamespaceObj | undefined, pod: PodObj, excluded: ReadonlySet<string> = NO_EXCLUSIONS): Verdict {
  const labels = pod.metadata?.labels ?? {};
  const ann = pod.metadata?.annotations ?? {};
  const nsName = pod.metadata?.namespace ?? ns?.metadata?.name ?? '';
  if (excluded.has(nsName)) return { enroll: false, reason: `namespace ${nsName} is excluded from the mesh (excludeNamespaces)` };
  if (pod.spec?.hostNetwork) return { enroll: false, reason: 'hostNetwork pod' };
  if (ann[SIDECAR_STATUS] !== undefined || pod.spec?.containers?.some((c) => c.name === 'istio-proxy')) {
    return { enroll: false, reason: 'pod has an Istio sidecar' };
  }
  if (labels[DATAPLANE_MODE] === 'none') return { enroll: false, reason: `pod label ${DATAPLANE_MODE}=none` };
  if (pod.metadata?.deletionTimestamp) return { enroll: false, reason: 'pod is terminating' };
  const nsMode = ns?.metadata?.labels?.[DATAPLANE_MODE];
  if (labels[DATAPLANE_MODE] === 'ambient' || nsMode === 'ambient') return { enroll: true, reason: 'ambient' };
  return { enroll: false, reason: ns ? `namespace ${ns.metadata?.name} is not labelled ${DATAPLANE_MODE}=ambient` : 'namespace unknown' };
}

/** Per-pod capture settings from Istio's annotations. */
export function podCaptureSettings(pod: PodObj): { excludeInboundPorts: number[]; excludeOutboundPorts: number[]; excludeOutboundCidrs: string[] } {
  const ann = pod.metadata?.annotations ?? {};
  const list = (k: string): string[] => (ann[k] ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  const ports = (k: string): number[] => list(k).map(Number).filter((n) => Number.isInteger(n) && n > 0 && n < 65536);
  return {
    excludeInboundPorts: ports('traffic.sidecar.istio.io/excludeInboundPorts'),
    excludeOutboundPorts: ports('traffic.sidecar.istio.io/excludeOutboundPorts'),
    excludeOutboundCidrs: list('traffic.sidecar.istio.io/excludeOutboundIPRanges'),
  };
}
