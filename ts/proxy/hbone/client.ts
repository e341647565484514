/**
 * The HBONE client's connection layer (ztunnel's src/proxy/h2/client.rs): one HTTP/2 connection
 * over mutual TLS 1.3 (ALPN h2) to a peer's 15008, and the CONNECT of one tunnel over it. The TCP
 * connection is made inside the source pod's netns with the proxy's mark, so it leaves with the
 * pod's own address. The peer must present one of the expected SPIFFE identities; a mismatch
 * names both. Every connection runs ztunnel's PING keepalive and announces ztunnel's HTTP/2
 * settings and connection window (limits.ts); the CONNECT carries ztunnel's headers
 * (headers.ts). Which connection a tunnel takes is the pool's business (../pool.ts); `nodeDialer`
 * gives it these connections as HboneLinks (link.ts).
 */
import http2, { type ClientHttp2Session, type ClientHttp2Stream } from 'node:http2';
import type net from 'node:net';
import tls from 'node:tls';
import { MARKS, PORTS } from '../../istio.js';
import { MeshError } from '../../util/errors.js';
import type { CertManager } from '../../identity/manager.js';
import type { IssuedCert } from '../../identity/ca.js';
import { uriSans } from '../../identity/spiffe.js';
import { relay } from '../relay.js';
import { connectIn } from '../sockets.js';
import { socketAddr } from '../../util/sockaddr.js';
import { connectRequestHeaders, type ConnectHeaders } from './headers.js';
import { clientSettings, keepAlive, openConnectionWindow, type HboneLimits } from './limits.js';
import { markUnprocessed, type HboneLink, type HboneRequest, type HboneSource, type HboneTunnel } from './link.js';

export type { HboneRequest, HboneSource } from './link.js';
const { NGHTTP2_REFUSED_STREAM } = http2.constants;

/** A connection to a peer, its identity verified. */
export interface HboneConnection {
  session: ClientHttp2Session;
  /** the expected identity the peer presented */
  peerIdentity: string;
}

export interface DialOptions {
  certs: CertManager;
  connectTimeoutMs: number;
  /** PING keepalive, flow-control windows and frame size */
  h2: Pick<HboneLimits, 'pingIntervalMs' | 'pingTimeoutMs' | 'streamWindowSize' | 'connectionWindowSize' | 'maxFrameSize'>;
}

/**
 * One client TLS context per issued certificate, shared by every connection dialed with it (a
 * context costs about 34 KB of OpenSSL state, measured, and parsing the key, chain and root on
 * every dial). It goes with the certificate object once the manager has rotated that (the root
 * is the manager's, the same for the certificate's life).
 */
const clientContexts = new WeakMap<IssuedCert, tls.SecureContext>();

function clientContext(cert: IssuedCert, rootPem: string): tls.SecureContext {
  let ctx = clientContexts.get(cert);
  if (!ctx) {
    ctx = tls.createSecureContext({ cert: cert.chainPem, key: cert.keyPem, ca: rootPem, minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3' });
    clientContexts.set(cert, ctx);
  }
  return ctx;
}

/**
 * Connects to `req.target`: TCP from inside the source netns, mTLS with the source identity's
 * certificate, HTTP/2. Throws MeshError INPOD_ERR_HBONE_CONNECT (retryable; the message says
 * what to check), INPOD_ERR_HBONE_TLS, INPOD_ERR_HBONE_IDENTITY, or INPOD_ERR_CA (no valid
 * certificate of the source identity now: nothing was connected).
 */
export async function dialHbone(o: DialOptions, src: HboneSource, req: HboneRequest): Promise<HboneConnection> {
  const t = socketAddr(req.target);
  // the source's own certificate first, as ztunnel's pool does (src/proxy/pool.rs): without one
  // (MeshError INPOD_ERR_CA) no connection is opened
  const cert = await o.certs.get(src.identity);
  const sock = await connectHbonePeer(src, req, o.connectTimeoutMs);
  let peerIdentity = '';
  const tlsSock = tls.connect({
    socket: sock,
    secureContext: clientContext(cert, o.certs.rootPem),
    ALPNProtocols: ['h2'],
    checkServerIdentity: (_host, peer) => {
      const v = expectedPeer(uriSans(peer.subjectaltname), req);
      if (v instanceof MeshError) return v;
      peerIdentity = v;
      return undefined;
    },
  });
  await new Promise<void>((resolve, reject) => {
    tlsSock.once('secureConnect', () => resolve());
    tlsSock.once('error', (e) => reject(e instanceof MeshError ? e : new MeshError('INPOD_ERR_HBONE_TLS', `TLS to ${t} failed: ${e.message}`, { cause: e })));
  });
  if (tlsSock.alpnProtocol !== 'h2') {
    tlsSock.destroy();
    throw new MeshError('INPOD_ERR_HBONE_TLS', `peer ${t} did not negotiate h2 (got ${String(tlsSock.alpnProtocol)})`);
  }
  const session = http2.connect(`https://${t}`, { createConnection: () => tlsSock, settings: clientSettings(o.h2) });
  session.on('error', () => session.destroy());
  openConnectionWindow(session, o.h2.connectionWindowSize);
  await new Promise<void>((resolve, reject) => {
    session.once('connect', () => resolve());
    session.once('error', reject);
  });
  keepAlive(session, o.h2);
  return { session, peerIdentity };
}

/**
 * The TCP connection to `req.target`'s 15008, made inside the source pod's netns with the proxy's
 * mark (`paused`: Node does not read it). Throws MeshError INPOD_ERR_HBONE_CONNECT (retryable;
 * the message says what to check).
 */
export async function connectHbonePeer(src: HboneSource, req: HboneRequest, timeoutMs: number, paused = false): Promise<net.Socket> {
  try {
    return await connectIn(src.nsFd, req.target, { mark: MARKS.proxy, timeoutMs, paused });
  } catch (e) {
    const code = (e as { code?: string }).code;
    const hint = code === 'ETIMEDOUT' ? `timed out; is a NetworkPolicy blocking HBONE (port ${PORTS.hbone})?` : code === 'ECONNREFUSED' ? 'was refused; is the destination proxy running and the pod enrolled?' : `failed (${code ?? (e as Error).message})`;
    throw new MeshError('INPOD_ERR_HBONE_CONNECT', `connection to ${socketAddr(req.target)} ${hint}`, { retryable: true, cause: e });
  }
}

/**
 * The one of `req.identities` among the peer certificate's URI SANs `uris`, or MeshError
 * INPOD_ERR_HBONE_IDENTITY naming both. Pure.
 */
export function expectedPeer(uris: string[], req: HboneRequest): string | MeshError {
  const match = uris.find((u) => req.identities.includes(u));
  return match ?? new MeshError('INPOD_ERR_HBONE_IDENTITY', `peer ${socketAddr(req.target)} presented ${uris.join(', ') || 'no SPIFFE identity'}, expected ${req.identities.join(' or ')}`);
}

/**
 * Sends the CONNECT for `req` on `session` with `headers` (headers.ts connectRequestHeaders); the
 * stream is not answered yet (see `answered`).
 */
export function sendConnect(session: ClientHttp2Session, req: HboneRequest, headers: ConnectHeaders): ClientHttp2Stream {
  return session.request(connectRequestHeaders(req.authority, headers), { endStream: false });
}

/**
 * Resolves once the peer answered the CONNECT with 200. Otherwise closes the stream and throws
 * MeshError INPOD_ERR_HBONE_DENIED (401: the destination's policy refused it) or INPOD_ERR_HBONE
 * (another status, or the stream ended first).
 */
export async function answered(stream: ClientHttp2Stream, req: HboneRequest): Promise<void> {
  const status = await new Promise<number>((resolve, reject) => {
    // the close after the answer is the relay's: no error object (its stack captured) is made
    // for it, which on every tunnel cost ~2% of the proxy's CPU. The error listener stays, as
    // before: an error emitted before the relay has its own listeners is not an uncaught one.
    let settled = false;
    stream.once('response', (h) => {
      settled = true;
      resolve(Number(h[':status']));
    });
    stream.once('error', (e) => {
      settled = true;
      reject(e);
    });
    stream.once('close', () => {
      if (!settled) reject(new MeshError('INPOD_ERR_HBONE', `HBONE stream to ${socketAddr(req.authority)} closed before a response (rst code ${stream.rstCode})`));
    });
  });
  if (status === 200) return;
  stream.close();
  throw statusError(status, req);
}

/** The error of a CONNECT answered `status` (not 200). Pure. */
export function statusError(status: number, req: HboneRequest): MeshError {
  const why = status === 401 ? 'denied by authorization policy at the destination' : status === 400 ? 'rejected as malformed' : 'refused';
  return new MeshError(status === 401 ? 'INPOD_ERR_HBONE_DENIED' : 'INPOD_ERR_HBONE', `HBONE CONNECT to ${socketAddr(req.authority)} via ${socketAddr(req.target)} answered ${status}: ${why}`);
}

/** A tunnel of Node's byte path: the stream, relayed by relay.ts. */
export interface NodeTunnel extends HboneTunnel {
  stream: ClientHttp2Stream;
}

/** `c` as the pool's link (link.ts). */
export function nodeLink(c: HboneConnection): HboneLink {
  const { session } = c;
  return {
    peerIdentity: c.peerIdentity,
    get closed() {
      return session.closed || session.destroyed;
    },
    close: () => session.close(),
    destroy: () => session.destroy(),
    onClose: (cb) => void session.once('close', cb),
    async connect(req, headers, done): Promise<NodeTunnel> {
      let stream: ClientHttp2Stream;
      try {
        stream = sendConnect(session, req, headers);
      } catch (e) {
        done(); // the session was closing: no stream was made
        throw markUnprocessed(e, (e as { code?: string }).code === 'ERR_HTTP2_GOAWAY_SESSION');
      }
      stream.once('close', done);
      try {
        await answered(stream, req);
      } catch (e) {
        throw markUnprocessed(e, stream.rstCode === NGHTTP2_REFUSED_STREAM);
      }
      return { stream, relay: (down, cb) => relay(down, stream, cb) };
    },
  };
}

/** The pool's dialer for Node's byte path. */
export function nodeDialer(o: DialOptions): (src: HboneSource, req: HboneRequest) => Promise<HboneLink> {
  return async (src, req) => nodeLink(await dialHbone(o, src, req));
}
