/**
 * WDS resources as istiod sends them (ztunnel proto/workload.proto `Address`, proto/authorization.proto
 * `Authorization`, decoded by ./proto.ts) into the proxy's state types (ts/state/types.ts), as
 * ztunnel converts them: src/state/workload.rs `TryFrom<XdsWorkload>`, `GatewayAddress`,
 * `byte_to_ip`; src/state/service.rs `TryFrom<&XdsService>`; src/rbac.rs `TryFrom<XdsRbac>`.
 * Defaults are ztunnel's (trust domain cluster.local, service account default, cluster
 * Kubernetes, capacity 1). Pure: no I/O, no state.
 *
 * Every refusal throws MeshError INPOD_ERR_XDS_RESOURCE naming the field ("workload.addresses[1]:
 * ..."), and the caller NACKs the response. Stricter than ztunnel where ztunnel would fail open
 * or mangle a value, so nothing unknown or malformed is ever enforced as something else:
 *   - an enum value this schema does not know is refused everywhere (ztunnel reads an unknown
 *     Service.visibility as PUBLIC and an unknown workload_type as DEPLOYMENT);
 *   - in a policy, a StringMatch with no match_type and an address that is not an address or
 *     range are refused (ztunnel drops them from the list, which can widen an ALLOW or empty a
 *     DENY);
 *   - a port above 65535 is refused (ztunnel truncates it to 16 bits).
 * Policies are then read by the same code as ztunnel's local config (ts/policy/ztunnel.ts
 * `localAuthorization`), into the same form, enforced by the same evaluator.
 */
import { MeshError } from '../util/errors.js';
import { Tagged } from '../util/fields.js';
import { formatIpv6 } from '../util/sockaddr.js';
import { localAuthorization } from '../policy/ztunnel.js';
import type { Authorization } from '../policy/rbac.js';
import type { GatewayAddress, NetworkAddress, Service, Workload } from '../state/types.js';
import { DEFAULT_TRUST_DOMAIN } from '../state/localconfig.js';
import { DEFAULT_CLUSTER_ID } from '../state/workloadmeta.js';

/** A refused resource field: the message names the path and what was wrong. */
export function resourceError(path: string, why: string): MeshError {
  return new MeshError('INPOD_ERR_XDS_RESOURCE', `${path}: ${why}`);
}

// The decoded messages (./proto.ts decodePlain: every scalar present, absent messages null).
type Bytes = Uint8Array;
interface XNetworkAddress { network: string; address: Bytes; length?: number }
interface XNamespacedHostname { namespace: string; hostname: string }
interface XGatewayAddress { hostname?: XNamespacedHostname | null; address?: XNetworkAddress | null; destination?: string; hbone_mtls_port: number }
interface XPort { service_port: number; target_port: number }
export interface XWorkload {
  uid: string; name: string; namespace: string; addresses: Bytes[]; hostname: string; network: string;
  tunnel_protocol: number; trust_domain: string; service_account: string; waypoint: XGatewayAddress | null;
  network_gateway: XGatewayAddress | null; node: string; canonical_name: string; canonical_revision: string;
  workload_type: number; workload_name: string; native_tunnel: boolean;
  application_tunnel: { protocol: number; port: number } | null; services: Record<string, { ports: XPort[] }>;
  authorization_policies: string[]; status: number; cluster_id: string;
  locality: { region: string; zone: string; subzone: string } | null; network_mode: number; capacity: { value: number } | null;
}
export interface XService {
  name: string; namespace: string; hostname: string; addresses: XNetworkAddress[]; ports: XPort[];
  subject_alt_names: string[]; waypoint: XGatewayAddress | null;
  load_balancing: { routing_preference: number[]; mode: number; health_policy: number } | null;
  ip_families: number; canonical: boolean; weighted_waypoints: { destination: XGatewayAddress | null; weight: number }[]; visibility: number;
}
export interface XAddress { workload?: XWorkload | null; service?: XService | null; type?: string }
interface XStringMatch { exact?: string; prefix?: string; suffix?: string; presence?: object; match_type?: string }
interface XAddr { address: Bytes; length: number }
interface XMatch {
  namespaces: XStringMatch[]; not_namespaces: XStringMatch[]; service_accounts: { namespace: string; serviceAccount: string }[];
  not_service_accounts: { namespace: string; serviceAccount: string }[]; principals: XStringMatch[]; not_principals: XStringMatch[];
  source_ips: XAddr[]; not_source_ips: XAddr[]; destination_ips: XAddr[]; not_destination_ips: XAddr[];
  destination_ports: number[]; not_destination_ports: number[];
}
export interface XAuthorization { name: string; namespace: string; scope: number; action: number; rules: { clauses: { matches: XMatch[] }[] }[]; dry_run: boolean }

/** What one Address resource is. */
export type AddressValue = { kind: 'workload'; workload: Workload } | { kind: 'service'; service: Service };

/** workload.proto's enums by number, as ztunnel's types name them; absent numbers are refused. */
const TUNNEL: Record<number, Workload['protocol']> = { 0: 'TCP', 1: 'HBONE' };
const NETWORK_MODE: Record<number, NonNullable<Workload['networkMode']>> = { 0: 'Standard', 1: 'HostNetwork' };
const STATUS: Record<number, boolean> = { 0: true, 1: false };
const WORKLOAD_TYPE: Record<number, string> = { 0: 'deployment', 1: 'cronjob', 2: 'pod', 3: 'job' };
const APP_TUNNEL: Record<number, 'NONE' | 'PROXY'> = { 0: 'NONE', 1: 'PROXY' };
type LoadBalancer = NonNullable<Service['loadBalancer']>;
const LB_SCOPE: Record<number, LoadBalancer['routingPreferences'][number]> = { 1: 'Region', 2: 'Zone', 3: 'Subzone', 4: 'Node', 5: 'Cluster', 6: 'Network' };
const LB_MODE: Record<number, LoadBalancer['mode']> = { 0: 'Standard', 1: 'Strict', 2: 'Failover', 3: 'Passthrough' };
const LB_HEALTH: Record<number, LoadBalancer['healthPolicy']> = { 0: 'OnlyHealthy', 1: 'AllowAll' };
const IP_FAMILIES: Record<number, Service['ipFamilies']> = { 0: undefined, 1: 'IPv4', 2: 'IPv6', 3: 'Dual' };
const VISIBILITY: Record<number, NonNullable<Service['visibility']>> = { 0: 'Public', 1: 'Namespace' };
const SCOPE: Record<number, Authorization['scope']> = { 0: 'Global', 1: 'Namespace', 2: 'WorkloadSelector' };
const ACTION: Record<number, Authorization['action']> = { 0: 'Allow', 1: 'Deny' };

function enumValue<V>(path: string, table: Record<number, V>, n: number, what: string): V {
  if (!Object.prototype.hasOwnProperty.call(table, n)) {
    throw resourceError(path, `${n} is not a value of ${what} this proxy knows (${Object.keys(table).join(', ')}): a newer istiod? refused rather than guessed`);
  }
  return table[n]!;
}

/** ztunnel's byte_to_ip: 4 bytes IPv4, 16 bytes IPv6 (written as Rust writes it: util/sockaddr.ts formatIpv6), else refused. */
export function bytesToIp(path: string, b: Bytes): string {
  if (b.length === 4) return b.join('.');
  if (b.length !== 16) throw resourceError(path, `an IP address is 4 or 16 bytes, got ${b.length}`);
  return formatIpv6(b);
}

function port(path: string, n: number): number {
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw resourceError(path, `a port is 0 to 65535, got ${n}`);
  return n;
}

function portList(path: string, ports: XPort[]): Record<number, number> {
  const out: Record<number, number> = {};
  ports.forEach((p, i) => (out[port(`${path}[${i}].service_port`, p.service_port)] = port(`${path}[${i}].target_port`, p.target_port)));
  return out;
}

function namespacedHostname(path: string, s: string): { namespace: string; hostname: string } {
  const slash = s.indexOf('/');
  if (slash < 0) throw resourceError(path, `expected "namespace/hostname", got ${JSON.stringify(s)}`);
  return { namespace: s.slice(0, slash), hostname: s.slice(slash + 1) };
}

/** GatewayAddress (workload.rs TryFrom<&XdsGatewayAddress>): one of hostname or address is required. */
function gateway(path: string, g: XGatewayAddress): GatewayAddress {
  const hboneMtlsPort = port(`${path}.hbone_mtls_port`, g.hbone_mtls_port);
  if (g.address) return { network: g.address.network, address: bytesToIp(`${path}.address.address`, g.address.address), hboneMtlsPort };
  if (g.hostname) return { address: '', network: '', hostname: { namespace: g.hostname.namespace, hostname: g.hostname.hostname }, hboneMtlsPort };
  throw resourceError(path, 'a gateway address needs a hostname or an address (ztunnel: MissingGatewayAddress)');
}

function tunnelProtocol(path: string, n: number): Workload['protocol'] {
  if (n === 2) throw resourceError(path, 'unsupported tunnel protocol: legacy istio mtls (ztunnel refuses it too)');
  return enumValue(path, TUNNEL, n, 'TunnelProtocol');
}

export function workloadFromXds(w: XWorkload, path = 'workload'): Workload {
  const at = (f: string): string => `${path}.${f}`;
  const services: Record<string, Record<number, number>> = {};
  for (const [key, list] of Object.entries(w.services)) {
    namespacedHostname(at(`services["${key}"]`), key);
    services[key] = portList(at(`services["${key}"].ports`), list.ports);
  }
  const out: Workload = {
    uid: w.uid,
    name: w.name,
    namespace: w.namespace,
    serviceAccount: w.service_account || 'default',
    trustDomain: w.trust_domain || DEFAULT_TRUST_DOMAIN,
    workloadIps: w.addresses.map((a, i) => bytesToIp(at(`addresses[${i}]`), a)),
    protocol: tunnelProtocol(at('tunnel_protocol'), w.tunnel_protocol),
    node: w.node,
    network: w.network,
    services,
    labels: {},
    healthy: enumValue(at('status'), STATUS, w.status, 'WorkloadStatus'),
    networkMode: enumValue(at('network_mode'), NETWORK_MODE, w.network_mode, 'NetworkMode'),
    workloadName: w.workload_name,
    workloadType: enumValue(at('workload_type'), WORKLOAD_TYPE, w.workload_type, 'WorkloadType'),
    canonicalName: w.canonical_name,
    canonicalRevision: w.canonical_revision,
    hostname: w.hostname,
    nativeTunnel: w.native_tunnel,
    authorizationPolicies: [...w.authorization_policies],
    clusterId: w.cluster_id || DEFAULT_CLUSTER_ID,
    locality: w.locality ? { region: w.locality.region, zone: w.locality.zone, subzone: w.locality.subzone } : { region: '', zone: '', subzone: '' },
    capacity: w.capacity ? w.capacity.value : 1,
  };
  if (w.waypoint) out.waypoint = gateway(at('waypoint'), w.waypoint);
  if (w.network_gateway) out.networkGateway = gateway(at('network_gateway'), w.network_gateway);
  if (w.application_tunnel) {
    const t = w.application_tunnel;
    out.applicationTunnel = { protocol: enumValue(at('application_tunnel.protocol'), APP_TUNNEL, t.protocol, 'ApplicationTunnel.Protocol') };
    if (t.port !== 0) out.applicationTunnel.port = port(at('application_tunnel.port'), t.port);
  }
  return out;
}

export function serviceFromXds(s: XService, path = 'service'): Service {
  const at = (f: string): string => `${path}.${f}`;
  const vips: NetworkAddress[] = [];
  const cidrVips: { network: string; cidr: string }[] = [];
  s.addresses.forEach((a, i) => {
    const ip = bytesToIp(at(`addresses[${i}].address`), a.address);
    const max = a.address.length === 4 ? 32 : 128;
    if (a.length === undefined || a.length === max) vips.push({ network: a.network, address: ip });
    else if (a.length > max) throw resourceError(at(`addresses[${i}].length`), `a prefix of ${ip} is 0 to ${max}, got ${a.length}`);
    else cidrVips.push({ network: a.network, cidr: `${ip}/${a.length}` });
  });
  const out: Service = {
    name: s.name,
    namespace: s.namespace,
    hostname: s.hostname,
    vips,
    ports: portList(at('ports'), s.ports),
    subjectAltNames: [...s.subject_alt_names],
    cidrVips,
    weightedWaypoints: s.weighted_waypoints.map((ww, i) => {
      if (!ww.destination) throw resourceError(at(`weighted_waypoints[${i}].destination`), 'missing (ztunnel: MissingGatewayAddress)');
      return { destination: gateway(at(`weighted_waypoints[${i}].destination`), ww.destination), weight: ww.weight };
    }),
    canonical: s.canonical,
    visibility: enumValue(at('visibility'), VISIBILITY, s.visibility, 'Service.Visibility'),
  };
  if (s.waypoint) out.waypoint = gateway(at('waypoint'), s.waypoint);
  if (s.load_balancing) {
    const lb = s.load_balancing;
    out.loadBalancer = {
      // UNSPECIFIED_SCOPE is refused as ztunnel refuses it ("invalid target")
      routingPreferences: lb.routing_preference.map((r, i) => enumValue(at(`load_balancing.routing_preference[${i}]`), LB_SCOPE, r, 'LoadBalancing.Scope')),
      mode: enumValue(at('load_balancing.mode'), LB_MODE, lb.mode, 'LoadBalancing.Mode'),
      healthPolicy: enumValue(at('load_balancing.health_policy'), LB_HEALTH, lb.health_policy, 'LoadBalancing.HealthPolicy'),
    };
  }
  const families = enumValue(at('ip_families'), IP_FAMILIES, s.ip_families, 'IPFamilies');
  if (families) out.ipFamilies = families;
  return out;
}

/** An Address resource: a workload or a service (xds.rs PreparedUpdate::try_from_address). */
export function addressFromXds(a: XAddress): AddressValue {
  if (a.workload) return { kind: 'workload', workload: workloadFromXds(a.workload) };
  if (a.service) return { kind: 'service', service: serviceFromXds(a.service) };
  throw resourceError('address', 'neither a workload nor a service (ztunnel: unknown address type)');
}

function stringMatch(path: string, m: XStringMatch): Tagged {
  switch (m.match_type) {
    case 'exact': return new Tagged('Exact', m.exact);
    case 'prefix': return new Tagged('Prefix', m.prefix);
    case 'suffix': return new Tagged('Suffix', m.suffix);
    case 'presence': return new Tagged('Presence', []);
    default: throw resourceError(path, 'a string match with no exact, prefix, suffix or presence: refused (ztunnel drops it, which can widen an ALLOW or empty a DENY)');
  }
}

/** An address range of a match: "ip/length", checked by the local-config reader (ipNet). */
function addr(path: string, a: XAddr): string {
  return `${bytesToIp(`${path}.address`, a.address)}/${a.length}`;
}

const STRING_FIELDS = [['namespaces', 'namespaces'], ['not_namespaces', 'notNamespaces'], ['principals', 'principals'], ['not_principals', 'notPrincipals']] as const;
const ADDR_FIELDS = [['source_ips', 'sourceIps'], ['not_source_ips', 'notSourceIps'], ['destination_ips', 'destinationIps'], ['not_destination_ips', 'notDestinationIps']] as const;
const SA_FIELDS = [['service_accounts', 'serviceAccounts'], ['not_service_accounts', 'notServiceAccounts']] as const;
const PORT_FIELDS = [['destination_ports', 'destinationPorts'], ['not_destination_ports', 'notDestinationPorts']] as const;

/** One Match in local config's shape (only the fields it sets), for localAuthorization to read. */
function matchShape(path: string, m: XMatch): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [x, k] of STRING_FIELDS) if (m[x].length) out[k] = m[x].map((s, i) => stringMatch(`${path}.${x}[${i}]`, s));
  for (const [x, k] of ADDR_FIELDS) if (m[x].length) out[k] = m[x].map((a, i) => addr(`${path}.${x}[${i}]`, a));
  for (const [x, k] of SA_FIELDS) if (m[x].length) out[k] = m[x].map((s) => ({ namespace: s.namespace, serviceAccount: s.serviceAccount }));
  for (const [x, k] of PORT_FIELDS) if (m[x].length) out[k] = [...m[x]];
  return out;
}

/**
 * An Authorization resource in ztunnel's form (rbac.rs TryFrom<XdsRbac>), read by the local
 * config's reader: the result is what the same policy written in ztunnel's local config gives.
 */
export function authorizationFromXds(a: XAuthorization, path = 'authorization'): Authorization {
  const shape = {
    name: a.name,
    namespace: a.namespace,
    scope: enumValue(`${path}.scope`, SCOPE, a.scope, 'Scope'),
    action: enumValue(`${path}.action`, ACTION, a.action, 'Action'),
    rules: a.rules.map((r, i) => r.clauses.map((c, j) => c.matches.map((m, k) => matchShape(`${path}.rules[${i}].clauses[${j}].matches[${k}]`, m)))),
    dryRun: a.dry_run,
  };
  try {
    return localAuthorization(path, shape);
  } catch (e) {
    // the reader names local config's paths (rules[0][0][0].sourceIps[1]); the cause is the same
    throw new MeshError('INPOD_ERR_XDS_RESOURCE', (e as Error).message, { cause: e });
  }
}
