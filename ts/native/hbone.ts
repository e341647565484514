/**
 * The native HBONE engine (addon/src/hbone_*.cc): one thread that owns TLS 1.3 connections
 * (OpenSSL), their HTTP/2 sessions (nghttp2) and the plain TCP sockets each CONNECT stream is
 * relayed to, so a relayed byte never crosses into JavaScript. It decides nothing: every peer
 * identity, policy, route, metric and log stays in TypeScript, which drives it with the methods
 * below and hears back through `onEvent`, called once per event, in the engine's order (the
 * addon delivers events in batches; this wrapper unrolls them).
 *
 * Ids: connections JS dials and tunnels JS opens carry ids JS chose (integers below 2^40);
 * connections accepted by a listener get engine ids from 2^40 up, tunnels of inbound requests
 * from 2^41 up. Every fd handed over is the engine's from then on (closed by it exactly once,
 * also when the call is ignored).
 *
 * Event order guarantees: per connection, 'handshake' (then the engine waits for verdict()),
 * 'ready' (client: once the peer's SETTINGS arrived), requests/responses, and exactly one
 * 'connClosed', always last: every one of its tunnels has had its one 'closed' before it.
 * 'closed' errors: '' (clean), 'reset' (the peer reset the stream, or the app's socket was
 * reset), 'refused' (the peer did not process it, or the connection was gone before it was
 * sent: open it on another connection), 'reset by proxy' (reset()), 'connection closed' (the
 * connection went first), else a short message.
 * A client tunnel answered with a status other than 200 gets 'response' then 'closed' ('').
 */
import { SyscallError, check } from '../util/errors.js';
import { addon, type HboneEngineHandle, type HboneEvent, type HboneSettings, type HboneTlsContextHandle } from './addon.js';

export type { HboneEvent, HboneSettings, HboneTlsContextHandle } from './addon.js';

/**
 * An SSL_CTX for the engine: TLS 1.3 only, ALPN h2, the peer's certificate required and verified
 * against `rootPem` (no SAN or hostname check: the 'handshake' event gives the URIs to TS).
 * `certPem` is the chain sent (leaf first). A server context with neither `certPem` nor `keyPem`
 * has no certificate: every handshake fails until its listener is given another context (a pod
 * with no certificate yet, or none valid now). Throws an Error naming what OpenSSL refused.
 */
export function hboneTlsContext(o: { certPem: string; keyPem: string; rootPem: string; server: boolean }): HboneTlsContextHandle {
  return addon().hboneTlsContext(o);
}

export class HboneEngine {
  #h: HboneEngineHandle | null;
  constructor(onEvent: (ev: HboneEvent) => void) {
    this.#h = check('hbone engine', addon().hboneEngineNew((events) => {
      for (const ev of events) onEvent(ev);
    }));
  }
  /**
   * The engine's handle, closed or not: a command after close() is ignored by the addon and the
   * fd it carries closed (a connection's last callbacks may still answer after the proxy closed).
   */
  get #handle(): HboneEngineHandle {
    const h = this.#h ?? this.#closed;
    if (!h) throw new SyscallError('use', 9 /* EBADF */, 'hbone engine closed');
    return h;
  }
  /** Whether the engine keeps the process alive (it does not, unless asked). */
  keepAlive(on: boolean): void {
    if (this.#h) addon().hboneEngineRef(this.#h, on);
  }
  /**
   * Stops the thread: every connection closed ('connClosed' 'engine closed'), every owned fd
   * closed. With `wait`, returns once the thread has exited (the shutdown's events are then not
   * delivered): what a process about to exit must do. Idempotent.
   */
  close(o: { wait?: boolean } = {}): void {
    if (this.#joined) return;
    if (this.#closed === null) this.#closed = this.#h;
    this.#h = null;
    if (this.#closed) addon().hboneEngineClose(this.#closed, o.wait ?? false);
    if (o.wait) this.#joined = true;
  }
  /** the handle once closed (a later close may still wait for the thread) */
  #closed: HboneEngineHandle | null = null;
  #joined = false;
  /** TLS as a client over `fd` (a connected or connecting TCP socket, owned from now on). */
  client(connId: number, fd: number, ctx: HboneTlsContextHandle, s: HboneSettings): void {
    addon().hboneClient(this.#handle, connId, fd, ctx, s);
  }
  /** Accepts on `fd` (a listening socket, owned from now on); each connection: 'handshake' with `listener`. */
  listen(listenerId: number, fd: number, ctx: HboneTlsContextHandle, s: HboneSettings): void {
    addon().hboneListen(this.#handle, listenerId, fd, ctx, s);
  }
  /** New connections of the listener use `ctx` from now on (existing ones keep theirs). */
  listenerContext(listenerId: number, ctx: HboneTlsContextHandle): void {
    addon().hboneListenerContext(this.#handle, listenerId, ctx);
  }
  /**
   * Stops accepting and closes the listening fd; its connections go on (those still in their
   * handshake too). 'listenerClosed' once the last of them has closed.
   */
  unlisten(listenerId: number): void {
    addon().hboneUnlisten(this.#handle, listenerId);
  }
  /** After 'handshake': ok starts HTTP/2 (client: 'ready' follows), not ok closes ('connClosed' 'rejected'). */
  verdict(connId: number, ok: boolean): void {
    addon().hboneVerdict(this.#handle, connId, ok);
  }
  /** Sends a CONNECT (flat [name, value, ...] with the pseudo-headers first); 'response' or 'closed' follows. */
  open(connId: number, tunnelId: number, headers: string[]): void {
    addon().hboneOpen(this.#handle, connId, tunnelId, headers);
  }
  /**
   * Answers a 'request': 200 with `fd` relays the stream to it; another status ends the stream (fd
   * -1). `connecting`: `fd`'s connect() is under way: the 200 goes once it has connected, else 503
   * and 'closed' with error 'connect: <reason>' (10 s at most).
   */
  respond(tunnelId: number, status: number, headers: string[], fd: number, connecting = false): void {
    addon().hboneRespond(this.#handle, tunnelId, status, headers, fd, connecting);
  }
  /** After a 200 'response': relays the stream to `fd` (owned from now on). */
  relay(tunnelId: number, fd: number): void {
    addon().hboneRelay(this.#handle, tunnelId, fd);
  }
  /** RST_STREAM(CANCEL) to the peer and an RST to the fd; 'closed' 'reset by proxy' follows. */
  reset(tunnelId: number): void {
    addon().hboneReset(this.#handle, tunnelId);
  }
  /** graceful: GOAWAY, open streams finish, then close; else now. 'connClosed' follows. */
  connClose(connId: number, graceful: boolean): void {
    addon().hboneConnClose(this.#handle, connId, graceful);
  }
  /** Live connections and streams, and DATA received but not yet written to its fd. */
  stats(): { conns: number; streams: number; bufferedBytes: number } {
    return addon().hboneStats(this.#handle);
  }
}
