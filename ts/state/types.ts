/** The proxy's view of the mesh: workloads, services and policies, indexed for the data path. */
import type { Authorization } from '../policy/rbac.js';

export type Protocol = 'HBONE' | 'TCP';

/** An address on a network: ztunnel's NetworkAddress, written "network/ip" ("/ip" on the default network). */
export interface NetworkAddress {
  network: string;
  address: string;
}

/** "namespace/hostname" split (ztunnel's NamespacedHostname). */
export interface NamespacedHostname {
  namespace: string;
  hostname: string;
}

/**
 * Where a waypoint or network gateway is (ztunnel's GatewayAddress): an address, or a hostname
 * resolved through the services. For a hostname, `address` and `network` are ''.
 */
export interface GatewayAddress {
  address: string;
  network: string;
  hostname?: NamespacedHostname;
  hboneMtlsPort: number;
}
export type Waypoint = GatewayAddress;

/**
 * A workload: ztunnel's `Workload` (src/state/workload.rs), its fields under their own names
 * (camelCase, as its local config and config dump write them), plus inpod's `services` map and
 * `labels`. Fields marked "(ztunnel)" are kept for whoever needs them (telemetry, config dump)
 * and absent when the source has nothing for them: absent means ztunnel's default ('', false,
 * Standard, capacity 1).
 */
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
  /** "namespace/hostname" -> {service port -> target port} (local config's LocalWorkload.services) */
  services: Record<string, Record<number, number>>;
  waypoint?: Waypoint;
  /**
   * The pod's labels (Kubernetes sources only; ztunnel's Workload has none): Istio
   * AuthorizationPolicy selectors match them.
   */
  labels: Record<string, string>;
  /** ztunnel's `status`: Healthy. Unhealthy endpoints are not picked. */
  healthy: boolean;
  /** (ztunnel) */
  networkGateway?: GatewayAddress;
  /** (ztunnel) */
  networkMode?: 'Standard' | 'HostNetwork';
  /** (ztunnel) the controller's name (a Deployment's), for telemetry */
  workloadName?: string;
  /** (ztunnel) the controller's kind, lowercase ("deployment", "pod") */
  workloadType?: string;
  /** (ztunnel) canonical service: telemetry's app / canonical_service */
  canonicalName?: string;
  /** (ztunnel) canonical revision: telemetry's version / canonical_revision */
  canonicalRevision?: string;
  /** (ztunnel) */
  hostname?: string;
  /** (ztunnel) */
  nativeTunnel?: boolean;
  /** (ztunnel) */
  applicationTunnel?: { protocol: 'NONE' | 'PROXY'; port?: number };
  /** (ztunnel) policies attached to this workload by name ("namespace/name"): WorkloadSelector scope */
  authorizationPolicies?: string[];
  /** (ztunnel) */
  clusterId?: string;
  /** (ztunnel) */
  locality?: Locality;
  /** (ztunnel) */
  capacity?: number;
}

/** Where a workload runs, as the topology labels of its node say (ztunnel's Locality). */
export interface Locality {
  region: string;
  zone: string;
  subzone: string;
}

/** ztunnel's Endpoint of a service, named by workload uid. */
export interface ServiceEndpoint {
  workloadUid: string;
  port: Record<number, number>;
  status: 'Healthy' | 'Unhealthy';
}

/**
 * A service: ztunnel's `Service` (src/state/service.rs) under its field names. Fields marked
 * "(ztunnel)" are kept, not yet used by routing; absent means ztunnel's default.
 */
export interface Service {
  name: string;
  namespace: string;
  hostname: string;
  /** VIPs with their network ("network/ip" in the config) */
  vips: NetworkAddress[];
  /** service port -> target port (0: same as the service port) */
  ports: Record<number, number>;
  subjectAltNames: string[];
  waypoint?: Waypoint;
  /** (ztunnel) */
  cidrVips?: { network: string; cidr: string }[];
  /** (ztunnel) endpoints declared by uid */
  endpoints?: Record<string, ServiceEndpoint>;
  /** (ztunnel) */
  weightedWaypoints?: { destination: GatewayAddress; weight: number }[];
  /** (ztunnel) */
  loadBalancer?: {
    routingPreferences: ('Region' | 'Zone' | 'Subzone' | 'Node' | 'Cluster' | 'Network')[];
    mode: 'Standard' | 'Strict' | 'Failover' | 'Passthrough';
    healthPolicy: 'OnlyHealthy' | 'AllowAll';
  };
  /** (ztunnel) */
  ipFamilies?: 'Dual' | 'IPv4' | 'IPv6';
  /** (ztunnel) */
  canonical?: boolean;
  /** (ztunnel) */
  visibility?: 'Public' | 'Namespace';
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
  /** Istio AuthorizationPolicy objects (the Kubernetes API, manifests), translated by ts/policy/istio.ts */
  policies: Policy[];
  /**
   * Policies already in ztunnel's form (ztunnel's local config; xDS later), enforced as they
   * are. Absent: none. Kept apart from `policies` so that no object from another source can
   * pass for one.
   */
  authorizations?: Authorization[];
}

export function serviceKey(s: Pick<Service, 'namespace' | 'hostname'>): string {
  return `${s.namespace}/${s.hostname}`;
}
