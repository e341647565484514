/**
 * Waypoints on the data path, resolved as ztunnel resolves them (pure functions of a state
 * snapshot; the route is decided in route.ts, the I/O done in outbound.ts and inbound.ts):
 *
 *  - `serviceWaypoint`: a service's waypoint, a weighted one sampled first (ztunnel src/state.rs
 *    `fetch_service_waypoint`, `sample_weighted_waypoint`);
 *  - `resolveWaypoint`: where a waypoint reference leads (src/state.rs `fetch_waypoint`): a
 *    hostname names a service (balanced over its endpoints for the HBONE port) or a workload; an
 *    address is a service VIP or a workload IP. What cannot be resolved is an error, never a
 *    direct connection: ztunnel's `UnknownWaypoint` fails the connection (fail closed);
 *  - `isFromWaypoint`: the source is one of the destination workload's own waypoint instances
 *    (src/proxy.rs `check_from_waypoint`), so its traffic is not sent back to the waypoint;
 *  - `isWaypointFor`: an inbound CONNECT whose authority is not this pod is admitted when this
 *    pod is the authority target's waypoint (src/proxy/inbound.rs `validate_destination`, the
 *    "waypoint sandwich").
 */
import { isIP } from 'node:net';
import { spiffeUri } from '../identity/spiffe.js';
import type { StateSnapshot } from '../state/store.js';
import { serviceKey, type GatewayAddress, type Service, type Workload } from '../state/types.js';

export interface Addr {
  ip: string;
  port: number;
}

/** Where a waypoint reference leads: the workload chosen, the address to dial, the SANs to accept. */
export interface WaypointUpstream {
  /** the waypoint instance chosen (ztunnel's actual_destination_workload) */
  workload: Workload;
  /** its HBONE address: the chosen IP and the port the reference or its service maps to */
  target: Addr;
  /** ztunnel's `workload_and_services_san`: the waypoint service's SANs, then the instance's identity */
  identities: string[];
}

/** A workload's SPIFFE identity. */
export function identityOf(w: Pick<Workload, 'trustDomain' | 'namespace' | 'serviceAccount'>): string {
  return spiffeUri({ trustDomain: w.trustDomain, namespace: w.namespace, serviceAccount: w.serviceAccount });
}

/** A service's members with their port maps (from the workloads' `services` and the service's own `endpoints`). */
export function serviceMembers(snap: StateSnapshot, svc: Service): { workload: Workload; ports: Record<number, number>; healthy: boolean }[] {
  const key = serviceKey(svc);
  const out = (snap.endpoints.get(key) ?? []).map((w) => ({ workload: w, ports: w.services[key] ?? {}, healthy: w.healthy }));
  for (const [uid, ep] of Object.entries(svc.endpoints ?? {})) {
    const w = snap.byUid.get(uid);
    if (w && !out.some((m) => m.workload === w)) out.push({ workload: w, ports: ep.port, healthy: w.healthy && ep.status === 'Healthy' });
  }
  return out;
}

/**
 * The waypoint of a service: one of `weightedWaypoints` in proportion to its weight (`random()`
 * in [0, 1)), else `waypoint`, else none. A weighted set whose weights sum to 0 cannot be
 * sampled and falls back to `waypoint`, as ztunnel's.
 */
export function serviceWaypoint(svc: Service, random: () => number = Math.random): GatewayAddress | undefined {
  const ww = svc.weightedWaypoints ?? [];
  const total = ww.reduce((s, w) => s + w.weight, 0);
  if (total > 0) {
    let r = random() * total;
    for (const w of ww) {
      if (r < w.weight) return w.destination;
      r -= w.weight;
    }
    return ww.filter((w) => w.weight > 0).at(-1)!.destination; // r rounded onto the end
  }
  return svc.waypoint;
}

/** The address a reference names: a workload by IP first, then a service VIP (ztunnel's `find_address`). */
function findAddress(snap: StateSnapshot, ip: string): { workload: Workload } | { service: Service } | undefined {
  const w = snap.byIp.get(ip);
  if (w) return { workload: w };
  const s = snap.byVip.get(ip);
  return s ? { service: s } : undefined;
}

/** A hostname: a service first, then a workload of that hostname in that namespace (ztunnel's `find_hostname`). */
function findHostname(snap: StateSnapshot, gw: GatewayAddress): { workload: Workload } | { service: Service } | undefined {
  const h = gw.hostname!;
  const s = snap.byServiceKey.get(`${h.namespace}/${h.hostname}`);
  if (s) return { service: s };
  const w = snap.state.workloads.find((x) => x.hostname === h.hostname && x.namespace === h.namespace);
  return w ? { workload: w } : undefined;
}

/** Where a gateway reference points, as ztunnel's `find_destination` (for the checks that need no balancing). */
function findDestination(snap: StateSnapshot, gw: GatewayAddress): { workload: Workload } | { service: Service } | undefined {
  return gw.hostname ? findHostname(snap, gw) : findAddress(snap, gw.address);
}

/**
 * The IP to dial on `w` for a connection to `wanted` (ztunnel's
 * pick_workload_destination_or_resolve, src/state.rs): the one asked for if it is the workload's;
 * else, among the workload's IPs the service's `families` accept (all when unset or Dual), one of
 * `wanted`'s family, else the first of them; undefined when none is accepted (ztunnel's
 * NoValidDestination: the connection fails). Pure.
 */
export function pickWorkloadIp(w: Pick<Workload, 'workloadIps'>, wanted: string, families?: Service['ipFamilies']): string | undefined {
  if (w.workloadIps.includes(wanted)) return wanted;
  const v6 = isIP(wanted) === 6;
  const accepted = w.workloadIps.filter((ip) => !families || families === 'Dual' || (isIP(ip) === 6) === (families === 'IPv6'));
  return accepted.find((ip) => (isIP(ip) === 6) === v6) ?? accepted[0];
}

/**
 * A waypoint service balanced for its HBONE port (ztunnel's `load_balance` and
 * `find_upstream_from_service` in ServiceResolutionMode::Waypoint): an endpoint qualifies when
 * the service has the port (or the endpoint is reached through an application tunnel); its port
 * is the endpoint's mapping, else the service's target port, else the HBONE port itself.
 */
function balanceWaypointService(snap: StateSnapshot, svc: Service, hbonePort: number, pick: (n: number) => number): { workload: Workload; port: number } | undefined {
  const svcTarget = svc.ports[hbonePort];
  const eps = serviceMembers(snap, svc).filter((m) => m.healthy && (svcTarget !== undefined || m.workload.applicationTunnel !== undefined));
  if (eps.length === 0) return undefined;
  const m = eps[pick(eps.length)]!;
  return { workload: m.workload, port: m.ports[hbonePort] || svcTarget || hbonePort };
}

/**
 * Resolves `gw` for a connection to `original` (the destination the client asked for, whose IP
 * family a hostname reference follows). Returns the upstream, or the reason it cannot be had
 * (the connection then fails: ztunnel's `UnknownWaypoint`).
 */
export function resolveWaypoint(snap: StateSnapshot, gw: GatewayAddress, original: Addr, pick: (n: number) => number): WaypointUpstream | string {
  const name = gw.hostname ? `${gw.hostname.namespace}/${gw.hostname.hostname}` : gw.address;
  // a hostname adapts to the caller's IP family; an address is dialled as written
  const wanted = gw.hostname ? original.ip : gw.address;
  // by address, a service VIP first, then a workload IP (ztunnel's `find_upstream`)
  const vip = gw.hostname ? undefined : snap.byVip.get(gw.address);
  const found = vip ? { service: vip } : findDestination(snap, gw);
  if (!found) return `unknown waypoint: ${name} is neither a service nor a workload in the state; is the waypoint deployed, and known to the control plane?`;
  let workload: Workload;
  let port: number;
  let sans: string[] = [];
  if ('service' in found) {
    const chosen = balanceWaypointService(snap, found.service, gw.hboneMtlsPort, pick);
    if (!chosen) return `unknown waypoint: service ${name} has no healthy endpoint for port ${gw.hboneMtlsPort}; are the waypoint's pods running, and does its Service have that port?`;
    ({ workload, port } = chosen);
    sans = found.service.subjectAltNames;
  } else {
    workload = found.workload;
    port = gw.hboneMtlsPort;
  }
  const families = 'service' in found ? found.service.ipFamilies : undefined;
  const ip = pickWorkloadIp(workload, wanted, families);
  if (!ip) return `unknown waypoint: ${name} (workload ${workload.namespace}/${workload.name}) has no address${families ? ` of the service's IP families (${families})` : ''}`;
  return { workload, target: { ip, port }, identities: [...sans, identityOf(workload)] };
}

/**
 * Is the source (its verified identity and the address it connects from) one of `upstream`'s
 * waypoint instances? Then ztunnel does not send its traffic to that waypoint again.
 */
export function isFromWaypoint(snap: StateSnapshot, upstream: Workload, src: { identity: string; ip: string }): boolean {
  if (!upstream.waypoint) return false;
  const is = (w: Workload): boolean => identityOf(w) === src.identity && w.workloadIps.includes(src.ip);
  const found = findDestination(snap, upstream.waypoint);
  if (!found) return false;
  if ('workload' in found) return is(found.workload);
  return serviceMembers(snap, found.service).some((m) => is(m.workload));
}

/**
 * May a CONNECT reaching this pod (`local`, connected at `localIp`) carry an authority of another
 * address (`authorityIp`)? Only when the authority's target (a workload, or a service VIP) has a
 * waypoint and that waypoint is this pod: a service waypoint whose endpoints include it, or a
 * workload waypoint at `localIp`.
 */
export function isWaypointFor(snap: StateSnapshot, authorityIp: string, local: Workload | undefined, localIp: string): boolean {
  const target = findAddress(snap, authorityIp);
  if (!target || !local) return false;
  const wp = 'workload' in target ? target.workload.waypoint : target.service.waypoint;
  if (!wp) return false;
  const found = findDestination(snap, wp);
  if (!found) return false;
  if ('workload' in found) return found.workload.workloadIps.includes(localIp);
  return serviceMembers(snap, found.service).some((m) => m.workload.uid === local.uid);
}
