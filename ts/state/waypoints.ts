/**
 * Waypoints from Kubernetes objects, as istiod assigns them (istio
 * pilot/pkg/serviceregistry/ambient/waypoints.go, workloads.go `computeWaypoint`, policies.go
 * `implicitWaypointPolicy`), for the standalone Kubernetes mode where no istiod sends them. Pure.
 *
 * - A waypoint is a gateway.networking.k8s.io Gateway with an address: its status addresses, a
 *   Hostname one preferred, else an IPAddress one (`getGatewayAddress`); the HBONE port is 15008.
 *   istiod ignores a Gateway without status addresses (not ready). inpod, which may run where no
 *   gateway controller writes that status, then takes the Service Istio's deployment controller
 *   makes for a waypoint (class `istio-waypoint`: named after the Gateway, or its
 *   `gateway.istio.io/name-override` annotation), when it exists, by its hostname.
 * - Its traffic type: the Gateway's `istio.io/waypoint-for` label, else its GatewayClass's, else
 *   `service`. A service gets the waypoint only for `service` or `all`, a workload only for
 *   `workload` or `all`.
 * - Which waypoint: `istio.io/use-waypoint` (with `istio.io/use-waypoint-namespace`) on the
 *   object, else on its namespace; `none` on the object opts it out. The waypoint must exist and
 *   let the object's namespace attach (its HBONE 15008 listener's allowedRoutes.namespaces:
 *   Same by default, All, or a Selector). A waypoint's own pods (label
 *   `gateway.networking.k8s.io/gateway-name`) and services (`gateway.istio.io/managed`) get none.
 * - With `autoAllowWaypointPolicy` (istiod's PILOT_AUTO_ALLOW_WAYPOINT_POLICY, off by default as
 *   there), each waypoint with pods gets an ALLOW policy for its service accounts,
 *   `istio_allow_waypoint_<ns>_<name>`, named by every workload behind it (its own waypoint, and
 *   its services' waypoints): once any ALLOW applies, traffic that went around the waypoint is
 *   denied (ztunnel's assert_rbac).
 */
import { isIP } from 'node:net';
import type { Authorization, StringMatch } from '../policy/rbac.js';
import type { GatewayAddress } from './types.js';

export const USE_WAYPOINT = 'istio.io/use-waypoint';
export const USE_WAYPOINT_NAMESPACE = 'istio.io/use-waypoint-namespace';
export const WAYPOINT_FOR = 'istio.io/waypoint-for';
export const GATEWAY_NAME = 'gateway.networking.k8s.io/gateway-name';
const GATEWAY_MANAGED = 'gateway.istio.io/managed';
const NAME_OVERRIDE = 'gateway.istio.io/name-override';
export const WAYPOINT_CLASS = 'istio-waypoint';

export interface Meta {
  name?: string;
  namespace?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

interface LabelSelector {
  matchLabels?: Record<string, string>;
  matchExpressions?: { key?: string; operator?: string; values?: string[] }[];
}

export interface GatewayObject {
  metadata?: Meta;
  spec?: {
    gatewayClassName?: string;
    listeners?: { name?: string; port?: number; protocol?: string; allowedRoutes?: { namespaces?: { from?: string; selector?: LabelSelector } } }[];
  };
  status?: { addresses?: { type?: string; value?: string }[] };
}

export interface GatewayClassObject {
  metadata?: Meta;
}

export interface Waypoint {
  name: string;
  namespace: string;
  address: GatewayAddress;
  /** service | workload | all | none (anything else attaches nothing) */
  trafficType: string;
  /** the service accounts of its pods, sorted */
  serviceAccounts: string[];
  /** which namespaces may attach: the HBONE listener's allowedRoutes */
  from: 'All' | 'Same' | 'Selector';
  selector?: LabelSelector;
}

export interface WaypointInputs {
  gateways: GatewayObject[];
  gatewayClasses: GatewayClassObject[];
  /** pods (for the waypoints' service accounts) */
  pods: { metadata?: Meta; spec?: { serviceAccountName?: string } }[];
  /** services (for the inpod fallback address), as "namespace/name" */
  serviceNames: ReadonlySet<string>;
  clusterDomain: string;
}

const HBONE_PORT = 15008;

/** A list field of an object read from a manifest or the API: anything but an array is none. */
function list<T>(x: T[] | undefined): T[] {
  return Array.isArray(x) ? x : [];
}

/** The address of a Gateway, or undefined when it has none yet (not a waypoint in use). */
function gatewayAddress(gw: GatewayObject, ns: string, name: string, i: WaypointInputs): GatewayAddress | undefined {
  const addrs = list(gw.status?.addresses);
  const host = addrs.find((a) => a.type === 'Hostname' && a.value);
  if (host) return { address: '', network: '', hostname: { namespace: ns, hostname: host.value! }, hboneMtlsPort: HBONE_PORT };
  const ip = addrs.find((a) => a.type === 'IPAddress' && a.value && isIP(a.value) !== 0);
  if (ip) return { address: ip.value!, network: '', hboneMtlsPort: HBONE_PORT };
  if (addrs.length > 0 || gw.spec?.gatewayClassName !== WAYPOINT_CLASS) return undefined;
  const svc = gw.metadata?.annotations?.[NAME_OVERRIDE] || name;
  if (!i.serviceNames.has(`${ns}/${svc}`)) return undefined;
  return { address: '', network: '', hostname: { namespace: ns, hostname: `${svc}.${ns}.svc.${i.clusterDomain}` }, hboneMtlsPort: HBONE_PORT };
}

/** Every Gateway that is a waypoint in use, by "namespace/name". */
export function buildWaypoints(i: WaypointInputs): Map<string, Waypoint> {
  const classes = new Map(i.gatewayClasses.map((c) => [c.metadata?.name ?? '', c]));
  const out = new Map<string, Waypoint>();
  for (const gw of i.gateways) {
    const name = gw.metadata?.name ?? '';
    const ns = gw.metadata?.namespace ?? 'default';
    const address = gatewayAddress(gw, ns, name, i);
    if (!name || !address) continue;
    const trafficType = gw.metadata?.labels?.[WAYPOINT_FOR] ?? classes.get(gw.spec?.gatewayClassName ?? '')?.metadata?.labels?.[WAYPOINT_FOR] ?? 'service';
    const serviceAccounts = [...new Set(i.pods
      .filter((p) => p.metadata?.namespace === ns && p.metadata?.labels?.[GATEWAY_NAME] === name)
      .map((p) => p.spec?.serviceAccountName ?? 'default'))].sort();
    const hbone = list(gw.spec?.listeners).find((l) => l.protocol === 'HBONE' && l.port === HBONE_PORT);
    const nsSel = hbone?.allowedRoutes?.namespaces;
    const from = nsSel?.from === 'All' || nsSel?.from === 'Selector' ? nsSel.from : 'Same';
    out.set(`${ns}/${name}`, { name, namespace: ns, address, trafficType, serviceAccounts, from, ...(from === 'Selector' ? { selector: nsSel?.selector ?? {} } : {}) });
  }
  return out;
}

function selects(sel: LabelSelector, labels: Record<string, string>): boolean {
  for (const [k, v] of Object.entries(sel.matchLabels ?? {})) if (labels[k] !== v) return false;
  for (const e of list(sel.matchExpressions)) {
    const has = e.key !== undefined && e.key in labels;
    const v = e.key === undefined ? undefined : labels[e.key];
    const ok = e.operator === 'In' ? has && list(e.values).includes(v!)
      : e.operator === 'NotIn' ? !has || !list(e.values).includes(v!)
        : e.operator === 'Exists' ? has
          : e.operator === 'DoesNotExist' ? !has
            : false; // an operator istiod's parser refuses matches nothing
    if (!ok) return false;
  }
  return true;
}

function allowsFrom(w: Waypoint, ns: string, nsLabels: Record<string, string> | undefined): boolean {
  if (w.from === 'All') return true;
  if (w.from === 'Selector') return selects(w.selector ?? {}, nsLabels ?? {});
  return w.namespace === ns;
}

/** The object's own `use-waypoint` reference: a name, `none` (opted out), or nothing. */
function useWaypoint(labels: Record<string, string> | undefined, fallbackNs: string): { ref?: string; none: boolean } {
  const v = labels?.[USE_WAYPOINT];
  if (v === undefined) return { none: false };
  if (v === 'none') return { none: true };
  return { ref: `${labels?.[USE_WAYPOINT_NAMESPACE] ?? fallbackNs}/${v}`, none: false };
}

/** Namespaces by name: their labels. */
export type NamespaceLabels = ReadonlyMap<string, Record<string, string>>;

/** The waypoint an object (service or pod) names, or its namespace does (istiod's fetchWaypointForTarget). */
function waypointForTarget(meta: Meta, namespaces: NamespaceLabels, waypoints: ReadonlyMap<string, Waypoint>): Waypoint | undefined {
  const ns = meta.namespace ?? 'default';
  const own = useWaypoint(meta.labels, ns);
  if (own.none) return undefined;
  const nsLabels = namespaces.get(ns);
  const ref = own.ref ?? useWaypoint(nsLabels, ns).ref;
  const w = ref ? waypoints.get(ref) : undefined;
  return w && allowsFrom(w, ns, nsLabels) ? w : undefined;
}

/** A Service's waypoint: for service traffic only; none for a waypoint's or east-west gateway's own service. */
export function waypointForService(meta: Meta, namespaces: NamespaceLabels, waypoints: ReadonlyMap<string, Waypoint>): Waypoint | undefined {
  const managed = meta.labels?.[GATEWAY_MANAGED];
  if (managed === 'istio.io-mesh-controller' || managed === 'istio.io-eastwest-controller') return undefined;
  const w = waypointForTarget(meta, namespaces, waypoints);
  return w && (w.trafficType === 'service' || w.trafficType === 'all') ? w : undefined;
}

/** A pod's waypoint: for workload traffic only; none for a waypoint's own pods (istiod's computeWaypoint). */
export function waypointForWorkload(meta: Meta, namespaces: NamespaceLabels, waypoints: ReadonlyMap<string, Waypoint>): Waypoint | undefined {
  const instanceOf = meta.labels?.[GATEWAY_NAME];
  if (instanceOf && waypoints.has(`${meta.namespace ?? 'default'}/${instanceOf}`)) return undefined;
  const w = waypointForTarget(meta, namespaces, waypoints);
  return w && (w.trafficType === 'workload' || w.trafficType === 'all') ? w : undefined;
}

/** `istio_allow_waypoint_<ns>_<name>` (istiod's implicitWaypointPolicyName): '_' cannot be in a Kubernetes name. */
export function implicitPolicyName(w: Pick<Waypoint, 'namespace' | 'name'>): string {
  return `istio_allow_waypoint_${w.namespace}_${w.name}`;
}

/** istiod's implicit ALLOW for a waypoint's service accounts, or undefined when it has no pods. */
export function implicitWaypointPolicy(w: Waypoint, trustDomain: string): Authorization | undefined {
  if (w.serviceAccounts.length === 0) return undefined;
  const principals: StringMatch[] = w.serviceAccounts.map((sa) => ({ Exact: `${trustDomain}/ns/${w.namespace}/sa/${sa}` }));
  return { name: implicitPolicyName(w), namespace: w.namespace, scope: 'WorkloadSelector', action: 'Allow', rules: [[[{ principals }]]], dryRun: false };
}

/**
 * The implicit policies a workload names (istiod's implicitWaypointPolicies): its own waypoint's
 * and those of its services' waypoints, for waypoints that have one.
 */
export function implicitPolicyKeys(own: Waypoint | undefined, serviceWaypoints: (Waypoint | undefined)[]): string[] {
  const keys = new Set<string>();
  for (const w of [...serviceWaypoints, own]) if (w && w.serviceAccounts.length > 0) keys.add(`${w.namespace}/${implicitPolicyName(w)}`);
  return [...keys];
}
