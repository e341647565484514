/**
 * What the data path asks of policy and telemetry. The proxy core calls these; the policy and
 * telemetry modules implement them (defaults: allow everything, log one line per connection).
 */
import type { Logger } from '../util/log.js';

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

export interface ProxyHooks {
  authorize(ctx: ConnContext): Decision;
  opened(ctx: ConnContext): void;
  closed(rec: ConnRecord): void;
}

/** Allows everything; logs one access-log line per connection at info. */
export function defaultHooks(log: Logger): ProxyHooks {
  return {
    authorize: () => ({ allow: true }),
    opened: () => {},
    closed: (r) => log.info({ access: true, ...r }, 'connection closed'),
  };
}
