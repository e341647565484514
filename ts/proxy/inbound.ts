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
import type { ServerHttp2Session, ServerHttp2Stream } from 'node:http2';
import type net from 'node:net';
import type { SecureContextOptions } from 'node:tls';
import { spiffeUri } from '../identity/spiffe.js';
import type { IssuedCert } from '../identity/ca.js';
import { PORTS } from '../istio.js';
import { MeshError } from '../util/errors.js';
import { parseSocketAddr, socketAddr } from '../util/sockaddr.js';
import { baggageOf, forwardedHost, newTraceParent, parseTraceParent } from './hbone/headers.js';
import type { NativeInboundStream, NativeListener } from './hbone/native.js';
import { admittedPeer, createHboneServer, type HboneStreamContext } from './hbone/server.js';
import type { ConnContext } from './hooks.js';
import { admit, admitFd, unreachable } from './inbound-plaintext.js';
import { ownAddresses, ownWorkload, podRef, type PodInputs } from './inputs.js';
import { relay, type RelayCounts } from './relay.js';
import { ConnectionResult } from './result.js';
import { isSelfCall, type Addr } from './route.js';
import { isWaypointFor } from './waypoint.js';
import { holdUpstream, podListenerFd } from './sockets.js';

/** One CONNECT as Node's byte path hands it over (hbone/server.ts): answered 200 with the app's socket in Node. */
interface NodeInboundStream extends Omit<NativeInboundStream, 'headers' | 'connectAndAccept' | 'reset'> {
  headers: Record<string, string | string[] | undefined>;
  /** answers 200 (with this workload's `baggage`) and relays the stream to `up`; `done` once at the end (aToB: stream to up) */
  accept(baggage: string, up: net.Socket, done: (r: RelayCounts) => void): void;
}

/** One CONNECT as either byte path hands it over (the engine's: hbone/native.ts). */
type InboundStream = NodeInboundStream | NativeInboundStream;

/**
 * Listens on 15008 inside the pod's netns with `cert` (the pod's own identity; null: none, every
 * handshake fails), on the proxy's byte path: Node's (hbone/server.ts) or the native engine's
 * when the proxy has one. The caller owns the listener: it rotates the certificate, drains and
 * closes it. Each connection a peer opens counts as an open socket (istio_tcp_sockets_open).
 */
export async function startInbound(pi: PodInputs, cert: Pick<IssuedCert, 'chainPem' | 'keyPem'> | null): Promise<NativeListener> {
  const fd = podListenerFd(pi.netns.fd, PORTS.hbone);
  if (pi.native) {
    return pi.native.listen(fd, cert, {
      verify: (uris, remote) => admittedPeer(uris, remote, pi.trustDomain, pi.log),
      request: (s) => void serveStream(pi, s).catch((e: Error) => {
        pi.log.warn({ err: e.message, peer: s.remote }, 'hbone: stream handler failed');
        s.refuse(503);
      }),
      opened: () => pi.observer.socketOpened('destination'),
    });
  }
  const server = createHboneServer({
    cert: cert?.chainPem ?? '',
    key: cert?.keyPem ?? '',
    ca: pi.certs.rootPem,
    trustDomain: pi.trustDomain,
    limits: pi.hboneLimits,
    log: pi.log,
    onStream: (s) => serveStream(pi, nodeStream(s)),
  });
  const sessions = new Set<ServerHttp2Session>();
  let draining = false;
  server.on('connection', (s: net.Socket) => void s.once('close', pi.observer.socketOpened('destination')));
  server.on('session', (session: ServerHttp2Session) => {
    // a handshake that was under way when the pod stopped: told GOAWAY at once
    if (draining) return void session.close();
    sessions.add(session);
    session.once('close', () => sessions.delete(session));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ fd }, () => resolve());
  });
  return {
    rotate: (c) => server.setSecureContext(hboneContext(pi.certs.rootPem, c)),
    drain: () => {
      draining = true;
      for (const session of sessions) if (!session.closed && !session.destroyed) session.close();
    },
    close: (cb) => void server.close(() => cb()),
  };
}

/**
 * The listener's secure context for `cert` (null: none, every handshake fails). setSecureContext
 * resets every TLS option it is not given (the minimum version included, which would let TLS 1.2
 * in after a rotation): the versions of hbone/server.ts are given again.
 */
function hboneContext(rootPem: string, cert: Pick<IssuedCert, 'chainPem' | 'keyPem'> | null): SecureContextOptions {
  return { ...(cert ? { cert: cert.chainPem, key: cert.keyPem } : {}), ca: rootPem, minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3' };
}

/** A stream of Node's byte path as inbound.ts serves it. */
function nodeStream({ stream, headers, peer, remote, localIp }: HboneStreamContext): NodeInboundStream {
  return {
    headers, peer, remote, localIp,
    gone: () => stream.destroyed || stream.closed,
    refuse: (status) => respond(stream, status, true),
    accept: (baggage, up, done) => {
      respond(stream, 200, false, baggage);
      relay(stream, up, done);
    },
  };
}

/**
 * One CONNECT on 15008. The stream may be reset by the peer at any await: every step after one
 * re-checks it, and an upstream connection made for a stream that is gone is closed at once.
 */
async function serveStream(pi: PodInputs, stream: InboundStream): Promise<void> {
  const { headers, peer, remote, localIp } = stream;
  const started = Date.now();
  const traceId = (parseTraceParent(headers.traceparent) ?? newTraceParent()).traceId;
  const refuse = (status: number, why: string): void => {
    pi.log.debug({ inbound: { id: traceId, peer: socketAddr(remote) }, status, why, authority: headers[':authority'] }, 'hbone: request rejected');
    stream.refuse(status);
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
  // a refusal of the admission (this pod's policy, or an app that cannot be reached) is the stream's answer
  const notAdmitted = (e: unknown): void => {
    const err = e as MeshError;
    conn.failed(err);
    refuse(err.code === 'INPOD_ERR_POLICY_DENIED' ? 401 : 503, err.message);
  };
  const baggage = baggageOf(self ?? pi.info);
  if ('connectAndAccept' in stream) {
    let fd: number;
    try {
      fd = admitFd(pi, conn.ctx, app);
    } catch (e) {
      return notAdmitted(e);
    }
    return connectAndAccept(pi, stream, conn, app, fd, baggage);
  }
  let up: net.Socket;
  try {
    up = await admit(pi, conn.ctx, app);
  } catch (e) {
    return notAdmitted(e);
  }
  if (stream.gone()) {
    up.destroy();
    conn.failed(new MeshError('INPOD_ERR_CLIENT_GONE', 'the peer reset the stream before it was answered'));
    return;
  }
  stream.accept(baggage, up, (r) => conn.relayedInUserspace(r));
}

/**
 * The native path's relay: the app's socket `fd` (admitFd: made in the pod, its connect() under
 * way) handed to the engine, which answers 200 once the app has accepted, or 503. Held by the
 * policy watcher until it ends (a revocation resets the stream), and counted as the proxy's own
 * upstream.
 */
function connectAndAccept(pi: PodInputs, stream: NativeInboundStream, conn: ConnectionResult, app: Addr, fd: number, baggage: string): void {
  const released = holdUpstream(fd);
  const unhold = pi.policyWatch?.admitted({ ctx: conn.ctx, log: pi.log, close: () => stream.reset() });
  stream.connectAndAccept(baggage, fd, (r) => {
    released();
    unhold?.();
    if (r.connected === false) return conn.failed(unreachable(app, r.error ?? new Error('connect failed')));
    conn.relayedInUserspace(r);
  });
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
