/**
 * Who a Kubernetes pod is, as istiod tells ztunnel (pure): the owning workload's name, Istio's
 * canonical service and revision, and the cluster. istiod fills ztunnel's Workload with these
 * (pilot/pkg/serviceregistry/ambient/workloads.go: WorkloadName from GetWorkloadMetaFromPod,
 * WorkloadType POD, CanonicalName/Revision from kubelabels.CanonicalService, ClusterId); the
 * proxy sends them in the HBONE baggage and Istio's metrics carry them.
 */

/** istiod's cluster ID when none is configured (pkg/cluster: "Kubernetes"). */
export const DEFAULT_CLUSTER_ID = 'Kubernetes';

// istio pkg/kube/labels/labels.go: the labels looked at, in this order
const NAME_LABELS = ['service.istio.io/canonical-name', 'app.kubernetes.io/name', 'app'];
const REVISION_LABELS = ['service.istio.io/canonical-revision', 'app.kubernetes.io/version', 'version'];
// istio pkg/kube/util.go: a Job named <cronjob>-<8 to 10 digits> belongs to that CronJob
const CRONJOB_JOB = /^(.+)-\d{8,10}$/;

function lookup(labels: Record<string, string>, keys: string[]): string | undefined {
  for (const k of keys) if (Object.hasOwn(labels, k)) return labels[k];
  return undefined;
}

/**
 * Istio's canonical service of a workload (pkg/kube/labels CanonicalService): the name from
 * `service.istio.io/canonical-name`, `app.kubernetes.io/name` or `app`, else the workload's
 * name; the revision from `service.istio.io/canonical-revision`, `app.kubernetes.io/version` or
 * `version`, else "latest". A label present with an empty value counts, as in istio.
 */
export function canonicalService(labels: Record<string, string>, workloadName: string): { name: string; revision: string } {
  return { name: lookup(labels, NAME_LABELS) ?? workloadName, revision: lookup(labels, REVISION_LABELS) ?? 'latest' };
}

export interface PodMeta {
  name?: string;
  generateName?: string;
  labels?: Record<string, string>;
  ownerReferences?: { kind?: string; name?: string; controller?: boolean }[];
}

/**
 * The name of the workload a pod belongs to (istio pkg/kube/util.go GetWorkloadMetaFromPod): the
 * `service.istio.io/workload-name` label; else, for a pod with a generated name, its controller,
 * with a ReplicaSet traced to its Deployment (or Argo Rollout) through the pod-template-hash
 * suffix, a ReplicationController to its DeploymentConfig and a Job to its CronJob; else the pod's
 * own name.
 */
export function podWorkloadName(pod: PodMeta): string {
  const labels = pod.labels ?? {};
  const override = labels['service.istio.io/workload-name'];
  if (override !== undefined) return override;
  let name = pod.name ?? '';
  const ref = pod.generateName ? pod.ownerReferences?.find((r) => r.controller === true) : undefined;
  if (ref) {
    name = ref.name ?? '';
    const hash = labels['pod-template-hash'];
    const rolloutHash = labels['rollouts-pod-template-hash'];
    if (ref.kind === 'ReplicaSet' && hash && name.endsWith(hash)) name = trimSuffix(name, `-${hash}`);
    else if (ref.kind === 'ReplicaSet' && rolloutHash && name.endsWith(rolloutHash)) name = trimSuffix(name, `-${rolloutHash}`);
    else if (ref.kind === 'ReplicationController' && labels.deploymentconfig) name = labels.deploymentconfig;
    else if (ref.kind === 'Job') name = CRONJOB_JOB.exec(name)?.[1] ?? name;
  }
  return name || (pod.name ?? '');
}

function trimSuffix(s: string, suffix: string): string {
  return s.endsWith(suffix) ? s.slice(0, -suffix.length) : s;
}
