/**
 * What the data path asks of the rest of the proxy, as two interfaces: an `Authorizer` decides
 * whether an inbound connection may reach the app (ts/policy/authorizer.ts), a `ConnObserver` is
 * told when a connection opens and closes (ts/telemetry/istio.ts: metrics and the access log).
 * ztunnel.ts composes the two; the listeners call them and nothing else.
 */

export interface ConnContext {
  direction: 'inbound' | 'outbound';
  /**
   * how the bytes travel: 'hbone' (mTLS), 'plaintext' (15006), 'passthrough', or 'local': both
   * pods on this node, identities known to this proxy, delivered without leaving the node
   */
  transport: 'hbone' | 'plaintext' | 'passthrough' | 'local';
  src: { ip: string; port: number; identity?: string };
  dst: { ip: string; port: number; identity?: string };
  /** the pod this proxy instance serves for the connection */
  pod: { uid: string; name: string; namespace: string };
  /** the service hostname, when the client addressed a service VIP */
  service?: string;
  /**
   * the W3C trace id (32 hex digits) the connection is logged under: outbound, a new one per
   * connection, sent in the CONNECT's traceparent; inbound HBONE, the client's (ztunnel's span id)
   */
  traceId?: string;
}

export interface Decision {
  allow: boolean;
  reason?: string;
}

export interface ConnRecord extends ConnContext {
  startedAt: number;
  durationMs: number;
  bytesSent: number; // towards the destination
  bytesReceived: number; // back from the destination
  outcome: 'ok' | 'denied' | 'error';
  /** Istio response flags: DENY, CONNECT (upstream connect failure), TLS_FAILURE */
  responseFlags?: string;
  error?: string;
  /** how the bytes travelled: spliced in the 'kernel', 'mixed' (one direction each), 'userspace' */
  path?: 'kernel' | 'mixed' | 'userspace';
  /** of bytesSent + bytesReceived, those the kernel moved (counted by the eBPF program) */
  kernelBytes?: number;
}

/** Decides inbound connections. Pure with respect to the connection: it must not throw. */
export interface Authorizer {
  /** May `ctx` (an inbound connection to the pod `ctx.pod`) reach the app? */
  authorize(ctx: ConnContext): Decision;
}

/**
 * Is told about every connection the proxy reports: `opened` once, then `closed` once with the
 * outcome (a connection refused before it is reported, such as one with no original destination,
 * is only logged). Must not throw.
 */
export interface ConnObserver {
  opened(ctx: ConnContext): void;
  closed(rec: ConnRecord): void;
}
