/**
 * One reported connection, from the moment the proxy knows what it is (reported opened) to its
 * end (reported closed, exactly once), as ztunnel's ConnectionResult (src/proxy/metrics.rs). A
 * failure is reported from the error's code, never its message: `responseFlags` says which
 * codes are a DENY, a TLS failure or a connect failure.
 */
import { MeshError } from '../util/errors.js';
import type { ConnContext, ConnObserver, ConnRecord, ReportedConn } from './hooks.js';
import type { RelayCounts } from './relay.js';

/** What a relay reports when both directions are over (the fast path, fastpath/, and the userspace relay, relay.ts). */
export interface Relayed {
  aToB: number;
  bToA: number;
  error?: Error;
  path: NonNullable<ConnRecord['path']>;
  kernelBytes: number;
}

/**
 * Istio's response flag and the outcome for a connection that failed with `e`: a policy's DENY
 * (this pod's, or the peer's 401) is `DENY`, a failed TLS handshake or a peer with the wrong
 * identity `TLS_FAILURE`, anything else `CONNECT` (as ztunnel's extract_failure_reason).
 */
export function responseFlags(e: unknown): { outcome: 'denied' | 'error'; flags: 'DENY' | 'TLS_FAILURE' | 'CONNECT' } {
  switch (e instanceof MeshError ? e.code : undefined) {
    case 'INPOD_ERR_POLICY_DENIED':
    case 'INPOD_ERR_HBONE_DENIED':
      return { outcome: 'denied', flags: 'DENY' };
    case 'INPOD_ERR_HBONE_TLS':
    case 'INPOD_ERR_HBONE_IDENTITY':
      return { outcome: 'error', flags: 'TLS_FAILURE' };
    default:
      return { outcome: 'error', flags: 'CONNECT' };
  }
}

/** What ztunnel's copy (src/copy.rs ignore_io_errors) takes for a hang-up: NotConnected, UnexpectedEof, ConnectionReset, BrokenPipe. */
const HANG_UPS = new Set(['ENOTCONN', 'ERR_STREAM_PREMATURE_CLOSE', 'ECONNRESET', 'EPIPE']);

/**
 * Did the relay fail, or did one side just hang up? A reset, a broken pipe, an HTTP/2 stream the
 * peer reset, a side closed early or gone before the relay started (relay.ts: those errors have
 * no code) ends the connection as completed, as ztunnel's copy does; an error with any other
 * code (a timeout, an unreachable host, an HTTP/2 stream error) is a failure, reported CONNECT.
 */
export function relayFailed(e: Error | undefined): boolean {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  return code !== undefined && !HANG_UPS.has(code);
}

export class ConnectionResult {
  #recorded = false;
  readonly #report: ReportedConn;

  /**
   * Reports `ctx` opened. `ctx` is read again at the close: fields set meanwhile reach the
   * access-log line (not the metric labels, fixed now). `started`: when the connection was
   * accepted (its duration counts from there).
   */
  constructor(observer: ConnObserver, readonly ctx: ConnContext, readonly started = Date.now()) {
    this.#report = observer.opened(ctx);
  }

  /** The relay is over: bytes both ways, an error if one ended it. */
  relayed(r: Relayed): void {
    const failed = relayFailed(r.error);
    this.#record(r.aToB, r.bToA, failed ? 'error' : 'ok', failed ? 'CONNECT' : undefined, failed ? r.error!.message : undefined, { path: r.path, kernelBytes: r.kernelBytes });
  }

  /** A relay in userspace is over (no byte went through the kernel fast path). */
  relayedInUserspace(r: RelayCounts): void {
    this.relayed({ aToB: r.aToB, bToA: r.bToA, error: r.error, kernelBytes: 0, path: 'userspace' });
  }

  /** The connection failed before a relay started. */
  failed(e: Error): void {
    const f = responseFlags(e);
    this.#record(0, 0, f.outcome, f.flags, e.message);
  }

  #record(sent: number, received: number, outcome: ConnRecord['outcome'], flags: string | undefined, error: string | undefined,
    how?: Pick<ConnRecord, 'path' | 'kernelBytes'>): void {
    if (this.#recorded) return;
    this.#recorded = true;
    const c = this.ctx;
    // every field written out: V8 makes `{ ...ctx, more }` tens of microseconds per connection,
    // and the mapped type makes a field added to ConnRecord (or ConnContext) a compile error here
    const rec: { [K in keyof Required<ConnRecord>]: ConnRecord[K] } = {
      direction: c.direction, transport: c.transport, src: c.src, dst: c.dst, via: c.via, pod: c.pod, service: c.service,
      originalDst: c.originalDst, traceId: c.traceId,
      startedAt: this.started, durationMs: Date.now() - this.started, bytesSent: sent, bytesReceived: received,
      outcome, responseFlags: flags, error, path: how?.path, kernelBytes: how?.kernelBytes,
    };
    this.#report.closed(rec);
  }
}
