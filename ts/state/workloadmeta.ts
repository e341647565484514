/**
 * What istiod derives from a Pod for ztunnel's Workload and telemetry, derived the same way here
 * for the Kubernetes state sources (kube.ts): the workload name and type, the canonical service
 * and revision, and the node's locality. Pure.
 *
 * Followed (istio/istio at main): pilot/pkg/serviceregistry/ambient/workloads.go
 * podWorkloadBuilder and workloadName; pkg/kube/util.go GetWorkloadMetaFromPod and
 * GetDeployMetaFromPod; pkg/kube/labels/labels.go CanonicalService; ambient/nodes.go
 * nodeLocality.
 */
import type { Locality } from './types.js';

/** istio's DefaultClusterName (pkg/config/constants), ztunnel's DEFAULT_CLUSTER_ID (src/config.rs) */
export const DEFAULT_CLUSTER_ID = 'Kubernetes';

/** The parts of a Pod the derivation reads. */
export interface PodMeta {
  name?: string;
  generateName?: string;
  labels?: Record<string, string>;
  ownerReferences?: { apiVersion?: string; kind?: string; name?: string; controller?: boolean }[];
}

export interface WorkloadMeta {
  workloadName: string;
  workloadType: string;
  canonicalName: string;
  canonicalRevision: string;
}

// the order is istio's: the first label present wins
const NAME_LABELS = ['service.istio.io/canonical-name', 'app.kubernetes.io/name', 'app'];
const REVISION_LABELS = ['service.istio.io/canonical-revision', 'app.kubernetes.io/version', 'version'];
const WORKLOAD_NAME_LABEL = 'service.istio.io/workload-name';
const CRONJOB_NAME = /^(.+)-\d{8,10}$/;

function first(labels: Record<string, string>, keys: string[]): string | undefined {
  for (const k of keys) if (Object.hasOwn(labels, k)) return labels[k];
  return undefined;
}

/**
 * The canonical service of a workload: its name from the first of service.istio.io/canonical-name,
 * app.kubernetes.io/name, app (else `workloadName`), its revision from the first of
 * service.istio.io/canonical-revision, app.kubernetes.io/version, version (else "latest").
 */
export function canonicalService(labels: Record<string, string>, workloadName: string): { name: string; revision: string } {
  return { name: first(labels, NAME_LABELS) ?? workloadName, revision: first(labels, REVISION_LABELS) ?? 'latest' };
}

/**
 * The name of the workload a pod belongs to, from its controlling owner when the pod's name was
 * generated: a ReplicaSet named after the pod-template-hash is its Deployment, a Job named with a
 * timestamp suffix its CronJob, a ReplicationController of an OpenShift DeploymentConfig that
 * config; otherwise the owner's name, or the pod's own. The label service.istio.io/workload-name
 * overrides all of it.
 */
export function podWorkloadName(pod: PodMeta): string {
  const labels = pod.labels ?? {};
  let name = pod.name ?? '';
  const owner = pod.generateName ? pod.ownerReferences?.find((r) => r.controller === true) : undefined;
  if (owner) {
    name = owner.name ?? '';
    const hash = labels['pod-template-hash'];
    const rollout = labels['rollouts-pod-template-hash'];
    if (owner.kind === 'ReplicaSet' && hash && name.endsWith(hash)) name = trimSuffix(name, `-${hash}`);
    else if (owner.kind === 'ReplicaSet' && rollout && name.endsWith(rollout)) name = trimSuffix(name, `-${rollout}`);
    else if (owner.kind === 'ReplicationController' && labels.deploymentconfig) name = labels.deploymentconfig;
    else if (owner.kind === 'Job') name = CRONJOB_NAME.exec(name)?.[1] ?? name;
  }
  if (!name) name = pod.name ?? '';
  return Object.hasOwn(labels, WORKLOAD_NAME_LABEL) ? labels[WORKLOAD_NAME_LABEL]! : name;
}

function trimSuffix(s: string, suffix: string): string {
  return s.endsWith(suffix) ? s.slice(0, -suffix.length) : s;
}

/** Everything istiod puts in a pod's Workload for telemetry (workloadType is always "pod", as istiod sends it). */
export function podWorkloadMeta(pod: PodMeta): WorkloadMeta {
  const workloadName = podWorkloadName(pod);
  const cs = canonicalService(pod.labels ?? {}, workloadName);
  return { workloadName, workloadType: 'pod', canonicalName: cs.name, canonicalRevision: cs.revision };
}

/** A node's locality from its topology labels, or undefined when it carries none. */
export function nodeLocality(labels: Record<string, string> | undefined): Locality | undefined {
  const l = labels ?? {};
  const region = l['topology.kubernetes.io/region'] ?? '';
  const zone = l['topology.kubernetes.io/zone'] ?? '';
  const subzone = l['topology.istio.io/subzone'] ?? '';
  return region || zone || subzone ? { region, zone, subzone } : undefined;
}
