/**
 * The outbound listener (15001, ztunnel's src/proxy/outbound.rs): a connection the pod's app made,
 * captured. Its original destination decides the route (route.ts, pure); this does the I/O: a
 * tunnel over HBONE from the pool, a pod of this node delivered directly (same-node.ts), or
 * plain TCP passthrough (spliced by the fast path when it is on). A failure resets the client and
 * is reported with the response flag its error code maps to (result.ts). Each connection gets a
 * trace id, as ztunnel's OutboundConnection does; an HBONE tunnel carries it, the source workload
 * and the client's address in ztunnel's CONNECT headers (hbone/headers.ts).
 */
import type net from 'node:net';
import { isIP } from 'node:net';
import { MARKS } from '../istio.js';
import { MeshError } from '../util/errors.js';
import { baggageOf, forwardedFor, formatTraceParent, newTraceParent, type TraceParent } from './hbone/headers.js';
import type { ConnContext } from './hooks.js';
import { capturedDestination, ownAddresses, ownWorkload, podRef, type PodInputs } from './inputs.js';
import { ConnectionResult } from './result.js';
import { buildRoute, isSelfCall, type Route } from './route.js';
import { sameNode } from './same-node.js';
import { connectIn } from './sockets.js';
import { socketAddr } from '../util/sockaddr.js';

/** Serves one connection accepted on 15001 (paused: the fast path may take it unread). */
export async function outbound(pi: PodInputs, down: net.Socket): Promise<void> {
  const started = Date.now();
  down.on('error', () => {});
  const captured = capturedDestination(pi, down, 'outbound');
  if (!captured) return;
  const { dst } = captured;
  const src = { ip: captured.src.ip, port: captured.src.port, identity: pi.uri };
  const route = buildRoute(pi.state.snapshot, dst, { source: { identity: pi.uri, ip: src.ip } });
  const trace = newTraceParent();
  if (route.kind === 'reject') {
    // as ztunnel's build_request failing: logged (in the connection's span), never reported as a connection
    pi.observer.refused({ direction: 'outbound', src, dst, error: new MeshError('INPOD_ERR_NO_ROUTE', route.reason), traceId: trace.traceId });
    down.resetAndDestroy();
    return;
  }
  const svc = route.service;
  const ctx: ConnContext = {
    direction: 'outbound',
    transport: route.kind === 'hbone' ? 'hbone' : 'passthrough',
    src,
    dst: route.kind === 'hbone' ? { ...route.authority } : { ...route.target },
    via: route.kind === 'hbone' ? { ...route.target } : undefined,
    pod: podRef(pi),
    service: svc && { hostname: svc.hostname, name: svc.name, namespace: svc.namespace },
    originalDst: { ...dst },
    traceId: trace.traceId,
  };
  const conn = new ConnectionResult(pi.observer, ctx, started);
  if (route.kind === 'hbone' && !route.viaWaypoint) {
    const local = pi.localPod?.(route.authority.ip);
    // only a pod with the identity the state expects there; anything else takes HBONE and fails its
    // identity check. Only when the client and the app are of one IP family: the app is reached
    // transparently from the client's address, which cannot be of the other family (HBONE then
    // carries it, from the client pod's address of the app's family).
    if (local && route.identities.includes(local.uri) && isIP(src.ip) === isIP(route.authority.ip)) return sameNode(pi, down, conn, route.authority, local);
  }
  try {
    await proxyTo(pi, down, conn, route, trace);
  } catch (e) {
    const err = e as Error;
    conn.failed(err);
    pi.log.warn({ outbound: { id: trace.traceId }, dst, err: err.message, code: (err as MeshError).code }, 'outbound connection failed');
    down.resetAndDestroy();
  }
}

/** Connects the route's upstream and relays `down` to it. Throws when the upstream cannot be had. */
async function proxyTo(pi: PodInputs, down: net.Socket, conn: ConnectionResult, route: Exclude<Route, { kind: 'reject' }>, trace: TraceParent): Promise<void> {
  if (route.kind === 'passthrough') {
    if (isSelfCall('outbound', route.target, ownAddresses(pi, conn.ctx.src.ip))) {
      throw new MeshError('INPOD_ERR_SELF_CALL', `${socketAddr(route.target)} is one of the proxy's own ports`);
    }
    let up: net.Socket;
    try {
      up = await connectIn(pi.netns.fd, route.target, { mark: MARKS.proxy, paused: true });
    } catch (e) {
      throw new MeshError('INPOD_ERR_UPSTREAM_CONNECT', (e as Error).message, { cause: e });
    }
    pi.fastPath.relay(down, up, (r) => conn.relayed(r));
    return;
  }
  const { tunnel, peerIdentity } = await pi.pool.open({ owner: pi.poolOwner, nsFd: pi.netns.fd, identity: pi.identity, ip: conn.ctx.src.ip }, route, {
    baggage: sourceBaggage(pi, conn.ctx.src.ip),
    forwarded: forwardedFor(conn.ctx.src, route.service?.hostname),
    traceparent: formatTraceParent(trace),
  });
  conn.ctx.dst.identity = peerIdentity;
  tunnel.relay(down, (r) => conn.relayedInUserspace(r));
}

/**
 * The source workload's baggage: the pod as the state describes it (ztunnel reads its source
 * workload there too); a pod the state does not know yet is named as ZDS gave it.
 */
function sourceBaggage(pi: PodInputs, srcIp: string): string {
  const w = ownWorkload(pi, srcIp);
  return baggageOf(w ?? pi.info);
}
