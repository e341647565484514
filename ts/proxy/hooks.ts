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
  /** where the bytes are for: the app's address (for HBONE, the CONNECT's authority) */
  dst: { ip: string; port: number; identity?: string };
  /**
   * HBONE only: the address the tunnel's TLS connection is to, when that is not `dst` (the
   * destination's or its waypoint's 15008). As ztunnel's access log: `dst.addr` is this and
   * `dst.hbone_addr` is `dst`.
   */
  via?: { ip: string; port: number };
  /** the pod this proxy instance serves for the connection */
  pod: { uid: string; name: string; namespace: string };
  /** the service the client addressed (its VIP), as ztunnel's ServiceDescription */
  service?: { hostname: string; name: string; namespace: string };
  /** outbound: the address the app connected to (a service VIP before its endpoint was picked) */
  originalDst?: { ip: string; port: number };
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

/** One reported connection, as the observer took it at `opened`. */
export interface ReportedConn {
  /** The connection is over (called once): its bytes, outcome and response flag. */
  closed(rec: ConnRecord): void;
}

/** A connection refused before it could be reported (no original destination, a self call, a malformed CONNECT). */
export interface EarlyRefusal {
  direction: 'inbound' | 'outbound';
  src: { ip: string; port: number };
  dst: { ip: string; port: number };
  /** why, for the log line; `code` is kept with it when it is a MeshError */
  error: Error;
  /** the trace id the refusal is logged under (outbound: the connection's; inbound HBONE: the client's traceparent), ztunnel's span */
  traceId?: string;
}

/**
 * Is told about every connection the proxy reports: `opened` once, then `closed` once on what it
 * returned, with the outcome. What describes the connection (its workloads, identities, service)
 * is taken at `opened`, as ztunnel's ConnectionResultBuilder::build fixes its labels; fields of
 * the context set later are only seen by the log line at the close. A connection refused before
 * it is reported goes to `refused` (ztunnel's log_early_deny); each socket a listener accepts to
 * `socketOpened`, whose result is called when it closes. Must not throw.
 */
export interface ConnObserver {
  opened(ctx: ConnContext): ReportedConn;
  refused(r: EarlyRefusal): void;
  socketOpened(reporter: 'source' | 'destination'): () => void;
}
