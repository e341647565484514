/**
 * What one HBONE peer may cost this proxy, and the HTTP/2 keepalive both ends run. Values follow
 * ztunnel where it has one (src/proxy/h2/server.rs: 200 concurrent streams, 64 KiB header list;
 * src/proxy/h2.rs do_ping_pong: a PING every 10 s, the connection dropped when one is not
 * answered in 20 s); ztunnel has no handshake or idle timer of its own (it relies on TCP
 * keepalive), so those are inpod's, chosen well above any legitimate peer's need.
 */
import type { ClientHttp2Session, ServerHttp2Session } from 'node:http2';

export interface HboneLimits {
  /** SETTINGS_MAX_CONCURRENT_STREAMS, and the most CONNECTs one connection may have in admission */
  maxConcurrentStreams: number;
  /** SETTINGS_MAX_HEADER_LIST_SIZE */
  maxHeaderListSize: number;
  /**
   * Streams a peer may reset before they were answered (the rapid-reset pattern: each costs a
   * policy check and a connection to the app): a bucket of `resetBurst`, refilled at
   * `resetPerSecond`. An empty bucket ends the connection with GOAWAY ENHANCE_YOUR_CALM.
   */
  resetBurst: number;
  resetPerSecond: number;
  /** a TLS handshake not finished in this time is abandoned */
  handshakeTimeoutMs: number;
  /** a connection with no stream open for this long is closed with GOAWAY NO_ERROR */
  idleTimeoutMs: number;
  /** first PING after this long, then this long after each answer */
  pingIntervalMs: number;
  /** a PING not answered within this ends the connection */
  pingTimeoutMs: number;
}

export const DEFAULT_HBONE_LIMITS: Readonly<HboneLimits> = Object.freeze({
  maxConcurrentStreams: 200,
  maxHeaderListSize: 64 * 1024,
  resetBurst: 100,
  resetPerSecond: 10,
  handshakeTimeoutMs: 10_000,
  // above the client pools' own idle release (inpod 30 s, ztunnel 5 min), so a pooled
  // connection is given up by its client before the server closes it
  idleTimeoutMs: 10 * 60_000,
  pingIntervalMs: 10_000,
  pingTimeoutMs: 20_000,
});

/**
 * Runs ztunnel's PING keepalive on `session` until it closes: a PING every `pingIntervalMs`; one
 * not answered within `pingTimeoutMs` destroys the session (the peer is gone or stalled), which
 * fails its streams instead of leaving them hanging.
 */
export function keepAlive(session: ClientHttp2Session | ServerHttp2Session, l: Pick<HboneLimits, 'pingIntervalMs' | 'pingTimeoutMs'>, onDead: () => void = () => {}): void {
  let timer: NodeJS.Timeout | undefined;
  const stop = (): void => clearTimeout(timer);
  const schedule = (): void => {
    timer = setTimeout(ping, l.pingIntervalMs);
    timer.unref();
  };
  const ping = (): void => {
    if (session.closed || session.destroyed) return;
    const deadline = setTimeout(() => {
      onDead();
      session.destroy();
    }, l.pingTimeoutMs);
    deadline.unref();
    timer = deadline;
    let sent = false;
    try {
      sent = session.ping((err) => {
        clearTimeout(deadline);
        if (!err) schedule();
      });
    } catch {
      /* the session ended between the check and the ping */
    }
    if (!sent) clearTimeout(deadline);
  };
  session.once('close', stop);
  schedule();
}
