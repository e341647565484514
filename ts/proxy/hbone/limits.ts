/**
 * What one HBONE peer may cost this proxy, and the HTTP/2 keepalive both ends run. Values follow
 * ztunnel where it has one (src/proxy/h2/server.rs: 200 concurrent streams, 64 KiB header list;
 * src/proxy/h2.rs do_ping_pong: a PING every 10 s, the connection dropped when one is not
 * answered in 20 s); ztunnel has no handshake or idle timer of its own (it relies on TCP
 * keepalive), so those are inpod's, chosen well above any legitimate peer's need.
 *
 * Flow control and frame size are ztunnel's too (src/config.rs window_size,
 * connection_window_size, frame_size; applied in src/proxy/h2/client.rs spawn_connection and
 * server.rs serve_connection), on both ends: SETTINGS_INITIAL_WINDOW_SIZE 4 MiB,
 * SETTINGS_MAX_FRAME_SIZE 1 MiB, and a WINDOW_UPDATE raising the connection window to 16 MiB.
 * What a peer can make one connection hold unread is bounded by the stream windows: Node returns
 * connection-level credit as soon as the bytes arrive (only the stream's credit waits for the
 * reader), so the bound is streams x 4 MiB where ztunnel's h2 holds it to 16 MiB.
 */
import type { ClientHttp2Session, ServerHttp2Session, Settings } from 'node:http2';
import { MeshError } from '../../util/errors.js';

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
  /** SETTINGS_INITIAL_WINDOW_SIZE: what a peer may send on one stream before we read it */
  streamWindowSize: number;
  /** the connection's receive window, announced with a WINDOW_UPDATE on stream 0 after SETTINGS */
  connectionWindowSize: number;
  /** SETTINGS_MAX_FRAME_SIZE: the largest frame payload a peer may send */
  maxFrameSize: number;
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
  streamWindowSize: 4 * 1024 * 1024,
  connectionWindowSize: 16 * 1024 * 1024,
  maxFrameSize: 1024 * 1024,
});

/**
 * ztunnel's environment variables for HTTP/2 flow control and frame size (src/config.rs
 * HTTP2_STREAM_WINDOW_SIZE, HTTP2_CONNECTION_WINDOW_SIZE, HTTP2_FRAME_SIZE; unset: the defaults
 * above), read the same way by `inpod ztunnel`. Pure. A value that is not an integer in the range
 * HTTP/2 allows (windows up to 2^31-1, the connection window not below the protocol's initial
 * 65,535, frames 16,384 to 16,777,215: RFC 9113 6.5.2, 6.9.1) refuses to start, as ztunnel's
 * parse_default does, with INPOD_ERR_CONFIG naming the variable.
 */
export function http2LimitsFromEnv(env: Record<string, string | undefined>): Partial<HboneLimits> {
  const out: Partial<HboneLimits> = {};
  const read = (name: string, key: 'streamWindowSize' | 'connectionWindowSize' | 'maxFrameSize', min: number, max: number): void => {
    const raw = env[name];
    if (raw === undefined) return;
    const n = /^\d+$/.test(raw.trim()) ? Number(raw.trim()) : NaN;
    if (!Number.isSafeInteger(n) || n < min || n > max) {
      throw new MeshError('INPOD_ERR_CONFIG', `${name}=${JSON.stringify(raw)}: want an integer from ${min} to ${max} (bytes); unset it for ztunnel's default ${DEFAULT_HBONE_LIMITS[key]}`);
    }
    out[key] = n;
  };
  read('HTTP2_STREAM_WINDOW_SIZE', 'streamWindowSize', 1, 2 ** 31 - 1);
  read('HTTP2_CONNECTION_WINDOW_SIZE', 'connectionWindowSize', 65_535, 2 ** 31 - 1);
  read('HTTP2_FRAME_SIZE', 'maxFrameSize', 16_384, 16_777_215);
  return out;
}

/** The client's SETTINGS_MAX_HEADER_LIST_SIZE (ztunnel's client: 16 KiB; its server takes 64 KiB). */
export const CLIENT_MAX_HEADER_LIST_SIZE = 16 * 1024;

/** The settings ztunnel's HTTP/2 client sends (src/proxy/h2/client.rs spawn_connection), from `l`. */
export function clientSettings(l: Pick<HboneLimits, 'streamWindowSize' | 'maxFrameSize'>): Settings {
  return { enablePush: false, initialWindowSize: l.streamWindowSize, maxFrameSize: l.maxFrameSize, maxHeaderListSize: CLIENT_MAX_HEADER_LIST_SIZE };
}

/**
 * The settings ztunnel's HTTP/2 server sends (src/proxy/h2/server.rs serve_connection), from `l`.
 * No SETTINGS_ENABLE_PUSH: a server has nothing to say with it (RFC 9113 6.5.2), and h2 sends none.
 */
export function serverSettings(l: Pick<HboneLimits, 'streamWindowSize' | 'maxFrameSize' | 'maxConcurrentStreams' | 'maxHeaderListSize'>): Settings {
  return { maxConcurrentStreams: l.maxConcurrentStreams, initialWindowSize: l.streamWindowSize, maxFrameSize: l.maxFrameSize, maxHeaderListSize: l.maxHeaderListSize };
}

/**
 * Raises `session`'s connection window to `size` (a WINDOW_UPDATE on stream 0). Node applies it
 * once the session is connected; before that the call is queued for then.
 */
export function openConnectionWindow(session: ClientHttp2Session | ServerHttp2Session, size: number): void {
  const apply = (): void => {
    if (!session.destroyed) session.setLocalWindowSize(size);
  };
  if (session.connecting) session.once('connect', apply);
  else apply();
}

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
