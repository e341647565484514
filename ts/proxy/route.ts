/**
 * Where an outbound connection goes: a pure decision from the state, the source workload and the
 * original destination (ztunnel's build_request). The I/O happens in outbound.ts.
 *
 *  - a service VIP: pick a healthy endpoint (load balanced), map the port, then as a workload;
 *  - a workload (or endpoint) with a waypoint: HBONE to the waypoint, authority the final target;
 *  - a workload speaking HBONE: HBONE to <ip>:15008, authority <ip>:<port>, its identity verified;
 *  - anything else (plain TCP workloads, addresses outside the mesh): passthrough.
 */
import { spiffeUri } from '../identity/spiffe.js';
import { PORTS, PROXY_PORTS } from '../istio.js';
import type { StateSnapshot } from '../state/store.js';
import { serviceKey, type Service, type Waypoint, type Workload } from '../state/types.js';

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
  return isLoopback(dst.ip) || own.podIps.includes(dst.ip) || own.nodeIps.has(dst.ip);
}

function isLoopback(ip: string): boolean {
  return ip.startsWith('127.') || ip === '::1' || ip.startsWith('::ffff:127.');
}

export interface Addr {
  ip: string;
  port: number;
}

export type Route =
  | {
      kind: 'hbone';
      /** where the TLS connection goes (the destination pod's or waypoint's 15008) */
      target: Addr;
      /** `:authority` of the CONNECT: always the final destination ip:port */
      authority: Addr;
      /** the SPIFFE identities the peer may present */
      identities: string[];
      workload?: Workload;
      service?: Service;
      viaWaypoint: boolean;
    }
  | { kind: 'passthrough'; target: Addr; workload?: Workload; service?: Service }
  | { kind: 'reject'; reason: string };

export function workloadIdentity(w: Pick<Workload, 'trustDomain' | 'namespace' | 'serviceAccount'>): string {
  return spiffeUri({ trustDomain: w.trustDomain, namespace: w.namespace, serviceAccount: w.serviceAccount });
}

function viaWaypoint(snap: StateSnapshot, wp: Waypoint, final: Addr, workload?: Workload, service?: Service): Route {
  const gw = snap.byIp.get(wp.address);
  if (!gw) return { kind: 'reject', reason: `waypoint ${wp.address} is not a known workload` };
  return {
    kind: 'hbone',
    target: { ip: wp.address, port: wp.hboneMtlsPort },
    authority: final,
    identities: [workloadIdentity(gw)],
    workload,
    service,
    viaWaypoint: true,
  };
}

function toWorkload(snap: StateSnapshot, w: Workload, dst: Addr, service?: Service): Route {
  if (w.waypoint) return viaWaypoint(snap, w.waypoint, dst, w, service);
  if (w.protocol === 'HBONE') {
    const identities = [workloadIdentity(w), ...(service?.subjectAltNames ?? [])];
    return { kind: 'hbone', target: { ip: dst.ip, port: PORTS.hbone }, authority: dst, identities, workload: w, service, viaWaypoint: false };
  }
  return { kind: 'passthrough', target: dst, workload: w, service };
}

/**
 * Decides the route. `pick(n)` chooses an endpoint index in [0, n) (random by default; tests
 * pass a fixed one).
 */
export function buildRoute(snap: StateSnapshot, dst: Addr, pick: (n: number) => number = (n) => Math.floor(Math.random() * n)): Route {
  const svc = snap.byVip.get(dst.ip);
  if (svc) {
    const mapped = svc.ports[dst.port];
    if (mapped === undefined) return { kind: 'reject', reason: `service ${svc.namespace}/${svc.name} has no port ${dst.port}` };
    if (svc.waypoint) return viaWaypoint(snap, svc.waypoint, dst, undefined, svc);
    const key = serviceKey(svc);
    const eps = (snap.endpoints.get(key) ?? []).filter((w) => w.healthy);
    if (eps.length === 0) return { kind: 'reject', reason: `service ${svc.namespace}/${svc.name} has no healthy endpoints` };
    const ep = eps[pick(eps.length)]!;
    const port = ep.services[key]?.[dst.port] || mapped || dst.port;
    return toWorkload(snap, ep, { ip: ep.workloadIps[0]!, port }, svc);
  }
  const w = snap.byIp.get(dst.ip);
  if (w) return toWorkload(snap, w, dst);
  return { kind: 'passthrough', target: dst };
}
