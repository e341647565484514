/**
 * Where an outbound connection goes: a pure decision from the state, the source and the original
 * destination, in the order of ztunnel's `build_request` (src/proxy/outbound.rs):
 *
 *  1. service-addressed (the destination is a service VIP, not a workload IP) and the service has
 *     a waypoint: HBONE to the waypoint, `:authority` the VIP:port the client asked for;
 *  2. the upstream: a service VIP balanced over its healthy endpoints (the port mapped), or the
 *     workload at that IP; anything else is passthrough;
 *  3. workload-addressed, the upstream workload has a waypoint and the source is not one of that
 *     waypoint's instances: HBONE to the waypoint, `:authority` the workload ip:port;
 *  4. a workload speaking HBONE: HBONE to <ip>:15008, `:authority` <ip>:<port>, its identity
 *     (and the service's SANs) verified; a plain TCP workload: passthrough.
 *
 * A waypoint that cannot be resolved rejects the connection (ztunnel's UnknownWaypoint): traffic
 * meant for a waypoint never goes around it. Which services and workloads have a waypoint is the
 * state's (istiod's WDS, or ts/state/waypoints.ts from `istio.io/use-waypoint` labels): a service
 * carries one only when its waypoint is for service traffic, a workload only when it is for
 * workload traffic. Waypoint resolution is waypoint.ts.
 */
import { PORTS, PROXY_PORTS } from '../istio.js';
import type { StateSnapshot } from '../state/store.js';
import type { Service, Workload } from '../state/types.js';
import { canonicalIp } from '../util/sockaddr.js';
import { identityOf, isFromWaypoint, pickWorkloadIp, resolveWaypoint, serviceMembers, serviceWaypoint, type Addr } from './waypoint.js';

export type { Addr };

/** Addresses that are the proxy's own from where it would connect. */
export interface OwnAddresses {
  /** the pod's IPs (the proxy listens on them inside the pod's netns) */
  podIps: readonly string[];
  /** the node's addresses (where the node-level ports listen) */
  nodeIps: ReadonlySet<string>;
}

/**
 * Is `dst` the proxy itself: one of its ports (PROXY_PORTS, ts/istio.ts: the in-pod listeners,
 * DNS, the node-level admin, metrics and readiness), where a connection would loop back into the
 * proxy or reach its control surfaces from a pod? Outbound (as ztunnel's outbound.rs, widened to
 * the pod's and the node's addresses): one of those ports on loopback, the pod's IPs or the
 * node's. Inbound (as ztunnel's inbound.rs and inbound_passthrough.rs): the target is always
 * this pod, so the port alone decides.
 */
export function isSelfCall(direction: 'inbound' | 'outbound', dst: Addr, own: OwnAddresses): boolean {
  if (!PROXY_PORTS.has(dst.port)) return false;
  if (direction === 'inbound') return true;
  // compared canonical: ::ffff:127.0.0.1 is loopback, an IPv6 address in any spelling is itself
  const ip = canonicalIp(dst.ip);
  return ip.startsWith('127.') || ip === '::1' || own.podIps.some((p) => canonicalIp(p) === ip) || own.nodeIps.has(ip);
}

export type Route =
  | {
      kind: 'hbone';
      /** where the TLS connection goes (the destination pod's or waypoint's 15008) */
      target: Addr;
      /** `:authority` of the CONNECT: the destination the client asked for (through a waypoint) or the chosen endpoint */
      authority: Addr;
      /** the SPIFFE identities the peer may present */
      identities: string[];
      /** the workload the tunnel ends at: the destination, or the waypoint instance (ztunnel's actual_destination_workload) */
      workload?: Workload;
      /** the service the client addressed (ztunnel's intended_destination_service) */
      service?: Service;
      viaWaypoint: boolean;
    }
  | { kind: 'passthrough'; target: Addr; workload?: Workload; service?: Service }
  | { kind: 'reject'; reason: string };

/** Who is connecting: the served pod's identity and the address its connection came from. */
export interface RouteSource {
  identity: string;
  ip: string;
}

export interface RouteOptions {
  /** the source, for ztunnel's check that traffic from a waypoint is not sent back to it */
  source?: RouteSource;
  /** chooses an endpoint index in [0, n) (random by default; tests pass a fixed one) */
  pick?: (n: number) => number;
  /** a number in [0, 1) for sampling weighted waypoints (Math.random by default) */
  random?: () => number;
}

export function workloadIdentity(w: Pick<Workload, 'trustDomain' | 'namespace' | 'serviceAccount'>): string {
  return identityOf(w);
}

const randomPick = (n: number): number => Math.floor(Math.random() * n);

function viaWaypoint(snap: StateSnapshot, wp: NonNullable<Workload['waypoint']>, original: Addr, pick: (n: number) => number, service?: Service): Route {
  const up = resolveWaypoint(snap, wp, original, pick);
  if (typeof up === 'string') return { kind: 'reject', reason: up };
  return { kind: 'hbone', target: up.target, authority: original, identities: up.identities, workload: up.workload, service, viaWaypoint: true };
}

/** Decides the route (pure). */
export function buildRoute(snap: StateSnapshot, dst: Addr, opts: RouteOptions = {}): Route {
  const pick = opts.pick ?? randomPick;
  // service-addressed: the address is not a workload's but a service's VIP (ztunnel's find_address)
  const svc = snap.byIp.has(dst.ip) ? undefined : snap.byVip.get(dst.ip);
  if (svc) {
    const wp = serviceWaypoint(svc, opts.random);
    if (wp) return viaWaypoint(snap, wp, dst, pick, svc);
  }
  let upstream: Workload;
  let target: Addr;
  if (svc) {
    if (svc.loadBalancer?.mode === 'Passthrough') return { kind: 'passthrough', target: dst, service: svc };
    const mapped = svc.ports[dst.port];
    if (mapped === undefined) return { kind: 'reject', reason: `service ${svc.namespace}/${svc.name} has no port ${dst.port}` };
    const eps = serviceMembers(snap, svc).filter((m) => m.healthy && m.workload.workloadIps.length > 0);
    if (eps.length === 0) return { kind: 'reject', reason: `service ${svc.namespace}/${svc.name} has no healthy endpoints` };
    const ep = eps[pick(eps.length)]!;
    upstream = ep.workload;
    // the endpoint's IP of the service's families, the client's family preferred (dual-stack)
    const ip = pickWorkloadIp(upstream, dst.ip, svc.ipFamilies);
    if (ip === undefined) {
      return { kind: 'reject', reason: `endpoint ${upstream.namespace}/${upstream.name} of service ${svc.namespace}/${svc.name} has no address of the service's IP families (${svc.ipFamilies})` };
    }
    target = { ip, port: ep.ports[dst.port] || mapped || dst.port };
  } else {
    const w = snap.byIp.get(dst.ip);
    if (!w) return { kind: 'passthrough', target: dst };
    upstream = w;
    target = dst;
  }
  // workload-addressed only (a service without a waypoint does not use its endpoints' waypoints),
  // and never back to the waypoint the traffic comes from
  if (!svc && upstream.waypoint && !(opts.source && isFromWaypoint(snap, upstream, opts.source))) {
    return viaWaypoint(snap, upstream.waypoint, dst, pick);
  }
  if (upstream.protocol === 'HBONE') {
    const identities = [identityOf(upstream), ...(svc?.subjectAltNames ?? [])];
    return { kind: 'hbone', target: { ip: target.ip, port: PORTS.hbone }, authority: target, identities, workload: upstream, service: svc, viaWaypoint: false };
  }
  return { kind: 'passthrough', target, workload: upstream, service: svc };
}
