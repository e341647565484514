/**
 * The HBONE server's connection layer (15008): mutual TLS 1.3 with ALPN h2 and a client
 * certificate of this trust domain, then HTTP/2 with ztunnel's settings and connection window
 * and the limits of limits.ts. It owns everything about a peer's connection (handshake timeout,
 * trust domain, stream budget, reset budget, idle timer, PING keepalive) and hands each
 * admitted stream to `onStream`; what a CONNECT means is
 * decided there (inbound.ts). A misbehaving peer ends its own connection, never the process.
 */
import http2, { type Http2SecureServer, type IncomingHttpHeaders, type ServerHttp2Session, type ServerHttp2Stream } from 'node:http2';
import type net from 'node:net';
import type { TLSSocket } from 'node:tls';
import { parseSpiffe, uriSans, type Identity } from '../../identity/spiffe.js';
import type { Logger } from '../../util/log.js';
import { localOf, peerOf, socketAddr } from '../../util/sockaddr.js';
import { DEFAULT_HBONE_LIMITS, keepAlive, openConnectionWindow, serverSettings, type HboneLimits } from './limits.js';

const { NGHTTP2_ENHANCE_YOUR_CALM, NGHTTP2_REFUSED_STREAM } = http2.constants;

/** A stream handed to `onStream`, with the peer as the TLS handshake proved it. */
export interface HboneStreamContext {
  stream: ServerHttp2Stream;
  headers: IncomingHttpHeaders;
  /** the client's verified identity (always of this server's trust domain) */
  peer: Identity;
  /** the TCP connection's addresses */
  remote: { ip: string; port: number };
  localIp: string;
}

export interface HboneServerOptions {
  cert: string;
  key: string;
  ca: string;
  trustDomain: string;
  limits?: Partial<HboneLimits>;
  log: Logger;
  /**
   * Handles one stream. The returned promise settles when the stream's admission is over (the
   * tunnel is relaying or the stream was answered); until then the stream counts against the
   * connection's admission budget. It must not throw; a rejection is logged and the stream reset.
   */
  onStream: (s: HboneStreamContext) => Promise<void>;
}

/** The trust-domain member among a certificate's URI SANs, or null. */
export function peerIdentity(subjectaltname: string | undefined, trustDomain: string): Identity | null {
  return peerOfUris(uriSans(subjectaltname), trustDomain);
}

/**
 * The trust-domain member among the URI SANs `uris` of the peer at `remote`, or null (the peer is
 * refused: logged with what it presented). The CA may sign several trust domains; both byte
 * paths refuse a peer of another one before HTTP/2 starts, as ztunnel's certificate verifier
 * refuses it in the handshake.
 */
export function admittedPeer(uris: string[], remote: { ip: string; port: number }, trustDomain: string, log: Logger): Identity | null {
  const peer = peerOfUris(uris, trustDomain);
  if (!peer) log.info({ peer: socketAddr(remote), sans: uris }, `hbone: peer refused: no identity in trust domain ${trustDomain}`);
  return peer;
}

/** The trust-domain member among URI SANs `uris`, or null. Pure. */
export function peerOfUris(uris: string[], trustDomain: string): Identity | null {
  for (const uri of uris) {
    const id = parseSpiffe(uri);
    if (id && id.trustDomain === trustDomain) return id;
  }
  return null;
}

export function createHboneServer(o: HboneServerOptions): Http2SecureServer {
  const l: HboneLimits = { ...DEFAULT_HBONE_LIMITS, ...o.limits };
  const log = o.log;
  const server = http2.createSecureServer({
    cert: o.cert,
    key: o.key,
    ca: o.ca,
    requestCert: true,
    rejectUnauthorized: true,
    minVersion: 'TLSv1.3',
    maxVersion: 'TLSv1.3',
    ALPNProtocols: ['h2'],
    allowHTTP1: false,
    handshakeTimeout: l.handshakeTimeoutMs,
    unknownProtocolTimeout: l.handshakeTimeoutMs,
    settings: serverSettings(l),
  });
  server.on('connection', (sock: net.Socket) => sock.setNoDelay(true));
  // a peer of another trust domain is refused before HTTP/2 starts (admittedPeer)
  server.prependListener('secureConnection', (sock: TLSSocket) => {
    if (!admittedPeer(uriSans(sock.getPeerCertificate()?.subjectaltname), peerOf(sock), o.trustDomain, log)) sock.destroy();
  });
  server.on('tlsClientError', (e, sock) => log.debug({ err: e.message, peer: socketAddr(peerOf(sock as net.Socket)) }, 'hbone: TLS handshake failed'));
  server.on('sessionError', (e) => log.debug({ err: e.message }, 'hbone: session error'));
  server.on('session', (session) => guard(session, l, o, log));
  return server;
}

/** Per-connection defences and stream admission. */
function guard(session: ServerHttp2Session, l: HboneLimits, o: HboneServerOptions, log: Logger): void {
  const sock = session.socket as TLSSocket;
  if (sock.destroyed) return void session.destroy();
  const peer = peerIdentity(sock.getPeerCertificate()?.subjectaltname, o.trustDomain);
  const remote = peerOf(sock);
  const localIp = localOf(sock).ip;
  let open = 0; // streams not yet closed
  let admitting = 0; // streams whose admission (policy, connect to the app) is not over
  let tokens = l.resetBurst;
  let refilled = Date.now();
  let idle: NodeJS.Timeout | undefined;

  const armIdle = (): void => {
    clearTimeout(idle);
    idle = setTimeout(() => {
      log.debug({ peer: remote }, 'hbone: idle connection closed');
      session.close();
    }, l.idleTimeoutMs);
    idle.unref();
  };
  let ended = false;
  const abuse = (why: string): void => {
    if (ended || session.destroyed) return;
    ended = true;
    log.warn({ peer: remote, identity: peer, why }, 'hbone: connection ended for abuse (GOAWAY ENHANCE_YOUR_CALM)');
    session.goaway(NGHTTP2_ENHANCE_YOUR_CALM);
    // let the GOAWAY reach the wire, then drop whatever the peer still has open
    setImmediate(() => session.destroy());
  };
  const earlyReset = (): void => {
    const now = Date.now();
    tokens = Math.min(l.resetBurst, tokens + ((now - refilled) / 1000) * l.resetPerSecond);
    refilled = now;
    if (--tokens < 0) abuse(`more than ${l.resetBurst} streams reset before they were answered`);
  };

  session.on('error', (e) => log.debug({ err: e.message, peer: remote }, 'hbone: connection error'));
  session.once('close', () => clearTimeout(idle));
  keepAlive(session, l, () => log.debug({ peer: remote }, 'hbone: PING not answered; connection dropped'));
  openConnectionWindow(session, l.connectionWindowSize);
  armIdle();
  if (!peer) return void session.destroy(); // refused at secureConnection already

  session.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => {
    stream.on('error', () => {});
    open++;
    clearTimeout(idle);
    stream.once('close', () => {
      if (--open === 0 && !session.closed) armIdle();
      // the peer reset a stream it asked for before it was answered
      if (!stream.headersSent && stream.rstCode !== NGHTTP2_REFUSED_STREAM) earlyReset();
    });
    if (admitting >= l.maxConcurrentStreams) {
      stream.close(NGHTTP2_REFUSED_STREAM);
      return;
    }
    admitting++;
    o.onStream({ stream, headers, peer, remote, localIp })
      .catch((e: Error) => {
        log.warn({ err: e.message, peer: remote }, 'hbone: stream handler failed');
        if (!stream.destroyed) stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
      })
      .finally(() => admitting--);
  });
}
