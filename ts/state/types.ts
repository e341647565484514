/** The proxy's view of the mesh: workloads, services and policies, indexed for the data path. */

export type Protocol = 'HBONE' | 'TCP';

export interface Waypoint {
  /** Waypoint address ("network/ip" in the config; the IP here). */
  address: string;
  hboneMtlsPort: number;
}

export interface Workload {
  uid: string;
  name: string;
  namespace: string;
  serviceAccount: string;
  trustDomain: string;
  workloadIps: string[];
  protocol: Protocol;
  node: string;
  network: string;
  /** "namespace/hostname" -> {service port -> target port} */
  services: Record<string, Record<number, number>>;
  waypoint?: Waypoint;
  labels: Record<string, string>;
  /** Health as Kubernetes reports it; unhealthy endpoints are not picked. */
  healthy: boolean;
  /*
   * What ztunnel's Workload carries about who the workload is (src/state/workload.rs), in its
   * names; they travel in the HBONE `baggage` header (src/baggage.rs). Empty or absent: not sent.
   */
  /** the owning workload (a Deployment's name for its pods), istio's GetWorkloadMetaFromPod */
  workloadName?: string;
  /** lowercased WorkloadType: "pod" for Kubernetes pods (istiod sends POD), "deployment", "job", "cronjob" */
  workloadType?: string;
  /** istio's canonical service and revision (pkg/kube/labels CanonicalService) */
  canonicalName?: string;
  canonicalRevision?: string;
  clusterId?: string;
  locality?: { region?: string; zone?: string; subzone?: string };
}

export interface Service {
  name: string;
  namespace: string;
  hostname: string;
  /** VIP addresses (the IP part of "network/ip"). */
  vips: string[];
  /** service port -> target port (0: same as the service port) */
  ports: Record<number, number>;
  subjectAltNames: string[];
  waypoint?: Waypoint;
}

/**
 * An Istio AuthorizationPolicy as its source gave it: the Kubernetes object (metadata/spec) from
 * the API or a manifest, or local config's flat form (name/namespace/spec). Untrusted input: only
 * ts/policy reads inside it, translating and checking every field (ts/policy/istio.ts).
 */
export type Policy = Record<string, unknown>;

export interface MeshState {
  workloads: Workload[];
  services: Service[];
  policies: Policy[];
}

export function serviceKey(s: Pick<Service, 'namespace' | 'hostname'>): string {
  return `${s.namespace}/${s.hostname}`;
}
