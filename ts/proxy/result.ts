/**
 * One reported connection, from the moment the proxy knows what it is (reported opened) to its
 * end (reported closed, exactly once), as ztunnel's ConnectionResult (src/proxy/metrics.rs). A
 * failure is reported from the error's code, never its message: `responseFlags` says which
 * codes are a DENY, a TLS failure or a connect failure.
 */
import { MeshError } from '../util/errors.js';
import type { ConnContext, ConnObserver, ConnRecord } from './hooks.js';

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

export class ConnectionResult {
  #recorded = false;

  /**
   * Reports `ctx` opened. `ctx` is read again at the close: fields set meanwhile are reported.
   * `started`: when the connection was accepted (its duration counts from there).
   */
  constructor(private readonly observer: ConnObserver, readonly ctx: ConnContext, readonly started = Date.now()) {
    observer.opened(ctx);
  }

  /** The relay is over: bytes both ways, an error if one ended it. */
  relayed(r: Relayed): void {
    this.#record(r.aToB, r.bToA, r.error ? 'error' : 'ok', undefined, r.error?.message, { path: r.path, kernelBytes: r.kernelBytes });
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
    this.observer.closed({
      ...this.ctx, startedAt: this.started, durationMs: Date.now() - this.started, bytesSent: sent, bytesReceived: received,
      outcome, responseFlags: flags, error, ...how,
    });
  }
}
