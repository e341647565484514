/**
 * The HBONE listener (15008, ztunnel's src/proxy/inbound.rs): what a CONNECT means. The
 * connection layer (mTLS, the peer's trust domain, HTTP/2 limits) is hbone/server.ts's; this
 * takes each admitted stream: only CONNECT, only to this connection's own destination (or, when
 * this pod is a waypoint, to an address it is the waypoint of) and never to the proxy's own
 * ports, then `admit` (this pod's policy with the peer's verified identity,
 * the app reached from the client's IP) and a relay. A refusal is an HTTP status: 400 malformed,
 * 401 denied by policy, 503 self call or app unreachable. As ztunnel's inbound.rs: the
 * connection is logged under the client's trace id (extract_traceparent), the service the client
 * addressed is read from `forwarded` (parse_forwarded_host), and the 200 carries this workload's
 * `baggage` (build_response).
 */
import type { Http2SecureServer, ServerHttp2Stream } from 'node:http2';
import type net from 'node:net';
import { spiffeUri } from '../identity/spiffe.js';
import type { IssuedCert } from '../identity/ca.js';
import { PORTS } from '../istio.js';
import { MeshError } from '../util/errors.js';
import { parseSocketAddr, socketAddr } from '../util/sockaddr.js';
import { baggageOf, forwardedHost, newTraceParent, parseTraceParent } from './hbone/headers.js';
import { createHboneServer, type HboneStreamContext } from './hbone/server.js';
import type { ConnContext } from './hooks.js';
import { admit } from './inbound-plaintext.js';
import { ownAddresses, ownWorkload, podRef, type PodInputs } from './inputs.js';
import { relay } from './relay.js';
import { ConnectionResult } from './result.js';
import { isSelfCall, type Addr } from './route.js';
import { isWaypointFor } from './waypoint.js';
import { podListenerFd } from './sockets.js';

/**
 * Listens on 15008 inside the pod's netns with `cert` (the pod's own identity). The caller owns
 * the server: it rotates the certificate (setSecureContext) and closes it.
 */
export async function startInbound(pi: PodInputs, cert: Pick<IssuedCert, 'chainPem' | 'keyPem'>): Promise<Http2SecureServer> {
  const server = createHboneServer({
    cert: cert.chainPem,
    key: cert.keyPem,
    ca: pi.certs.rootPem,
    trustDomain: pi.trustDomain,
    limits: pi.hboneLimits,
    log: pi.log,
    onStream: (s) => serveStream(pi, s),
  });
  const fd = podListenerFd(pi.netns.fd, PORTS.hbone);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ fd }, () => resolve());
  });
  return server;
}

/**
 * One CONNECT on 15008. The stream may be reset by the peer at any await: every step after one
 * re-checks it, and an upstream connection made for a stream that is gone is closed at once.
 */
async function serveStream(pi: PodInputs, { stream, headers, peer, remote, localIp }: HboneStreamContext): Promise<void> {
  const started = Date.now();
  const traceId = (parseTraceParent(headers.traceparent) ?? newTraceParent()).traceId;
  const refuse = (status: number, why: string): void => {
    pi.log.debug({ inbound: { id: traceId, peer: socketAddr(remote) }, status, why, authority: headers[':authority'] }, 'hbone: request rejected');
    respond(stream, status, true);
  };
  // refused before it is reported (ztunnel's build_inbound_request failing): the access log's "connection failed"
  const early = (status: number, why: string): void => {
    pi.observer.refused({ direction: 'inbound', src: remote, dst: { ip: localIp, port: PORTS.hbone }, error: new Error(`${status}: ${why}`), traceId });
    refuse(status, why);
  };
  if (headers[':method'] !== 'CONNECT') return early(400, `method ${String(headers[':method'])} is not CONNECT`);
  const authority = parseAuthority(String(headers[':authority'] ?? ''));
  if (!authority) return early(400, `authority "${String(headers[':authority'])}" is not ip:port`);
  // another address only when this pod is that address's waypoint (inbound.rs validate_destination)
  const snap = pi.state.snapshot;
  const self = ownWorkload(pi, localIp);
  if (authority.ip !== localIp && !isWaypointFor(snap, authority.ip, self, localIp)) {
    return early(400, `authority ${authority.ip} is not this connection's destination ${localIp}, and this pod is not its waypoint`);
  }
  // the app is always this pod's, at the authority's port (inbound.rs find_inbound_upstream)
  const app = { ip: localIp, port: authority.port };
  // as ztunnel (inbound.rs find_inbound_upstream): a CONNECT to one of the proxy's own ports is a self call, 503
  if (isSelfCall('inbound', app, ownAddresses(pi))) return early(503, `${socketAddr(app)} is one of the proxy's own ports (self call)`);
  const conn = new ConnectionResult(pi.observer, {
    direction: 'inbound', transport: 'hbone', src: { ip: remote.ip, port: remote.port, identity: spiffeUri(peer) },
    dst: { ip: app.ip, port: app.port, identity: pi.uri }, via: { ip: localIp, port: PORTS.hbone }, pod: podRef(pi),
    service: addressedService(pi, self?.services, headers.forwarded), traceId,
  }, started);
  let up: net.Socket;
  try {
    up = await admit(pi, conn.ctx, app);
  } catch (e) {
    const err = e as MeshError;
    conn.failed(err);
    return refuse(err.code === 'INPOD_ERR_POLICY_DENIED' ? 401 : 503, err.message);
  }
  if (stream.destroyed || stream.closed) {
    up.destroy();
    conn.failed(new MeshError('INPOD_ERR_CLIENT_GONE', 'the peer reset the stream before it was answered'));
    return;
  }
  respond(stream, 200, false, baggageOf(self ?? pi.info));
  relay(stream, up, (r) => conn.relayed({ aToB: r.aToB, bToA: r.bToA, error: r.error, kernelBytes: 0, path: 'userspace' }));
}

/**
 * The service the client says it addressed (`forwarded: ...;host=`), when this workload is one of
 * its endpoints: the claim only picks among the workload's own services (ztunnel's
 * guess_inbound_service), so a peer cannot name any other.
 */
function addressedService(pi: PodInputs, services: Record<string, unknown> | undefined, forwarded: string | string[] | undefined): ConnContext['service'] {
  const host = forwardedHost(forwarded);
  if (!host || !services) return undefined;
  for (const key of Object.keys(services)) {
    const svc = pi.state.snapshot.byServiceKey.get(key);
    if (svc?.hostname === host) return { hostname: svc.hostname, name: svc.name, namespace: svc.namespace };
  }
  return undefined;
}

/** Answers a stream unless the peer already reset it; a 200 carries this workload's `baggage`. */
function respond(stream: ServerHttp2Stream, status: number, endStream: boolean, baggage?: string): void {
  if (stream.destroyed || stream.closed || stream.headersSent) return;
  try {
    stream.respond(baggage === undefined ? { ':status': status } : { ':status': status, baggage }, { endStream });
  } catch {
    /* reset between the check and the call: nothing to answer */
  }
}

/**
 * A CONNECT's :authority as ztunnel parses it (a SocketAddr: `ip:port`, `[ipv6]:port`), or null.
 * An IPv4-mapped authority is the IPv4 address it stands for, as ztunnel's to_canonical makes it.
 */
function parseAuthority(a: string): Addr | null {
  return parseSocketAddr(a);
}
