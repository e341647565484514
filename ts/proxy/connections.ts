/**
 * The connections open now, per served pod, for the admin's `/config_dump` (its `workloadState`,
 * which `istioctl ztunnel-config connections` prints). A `ConnObserver` beside the telemetry:
 * a connection is in the table from its `opened` to its `closed`. In the shape of ztunnel's
 * connection manager dump (src/proxy/connection_manager.rs, `InboundConnectionDump` and
 * `OutboundConnection`, camelCase as serde writes them).
 */
import type { ConnContext, ConnObserver, ConnRecord } from './hooks.js';

/** `ip:port` as Rust's SocketAddr writes it (`[v6]:port`). */
export function socketAddr(a: { ip: string; port: number }): string {
  return a.ip.includes(':') ? `[${a.ip}]:${a.port}` : `${a.ip}:${a.port}`;
}

export interface InboundConnectionDump {
  src: string;
  /** the service the peer addressed, when known; null otherwise (as ztunnel) */
  originalDst: string | null;
  actualDst: string;
  /** HBONE when the peer was authenticated, else TCP */
  protocol: 'HBONE' | 'TCP';
}

export interface OutboundConnectionDump {
  src: string;
  /** where the app connected */
  originalDst: string;
  /** where the proxy connected (an HBONE peer's 15008, or the destination itself) */
  actualDst: string;
  protocol: 'HBONE' | 'TCP';
}

export interface PodConnections {
  inbound: InboundConnectionDump[];
  outbound: OutboundConnectionDump[];
}

const key = (c: ConnContext): string => `${c.direction} ${socketAddr(c.src)} ${socketAddr(c.dst)}`;

export class ConnectionTable implements ConnObserver {
  /** pod uid -> connection key -> the context (read at dump time: fields set later show) */
  readonly #open = new Map<string, Map<string, ConnContext>>();

  opened(ctx: ConnContext): void {
    let pod = this.#open.get(ctx.pod.uid);
    if (!pod) this.#open.set(ctx.pod.uid, (pod = new Map()));
    pod.set(key(ctx), ctx);
  }

  closed(rec: ConnRecord): void {
    const pod = this.#open.get(rec.pod.uid);
    if (!pod) return;
    pod.delete(key(rec));
    if (pod.size === 0) this.#open.delete(rec.pod.uid);
  }

  /** How many connections are open (all pods). */
  get size(): number {
    let n = 0;
    for (const pod of this.#open.values()) n += pod.size;
    return n;
  }

  /** The pod's open connections in ztunnel's dump form (empty lists when it has none). */
  dump(uid: string): PodConnections {
    const out: PodConnections = { inbound: [], outbound: [] };
    for (const c of this.#open.get(uid)?.values() ?? []) {
      if (c.direction === 'inbound') {
        out.inbound.push({ src: socketAddr(c.src), originalDst: c.service ?? null, actualDst: socketAddr(c.dst), protocol: c.src.identity ? 'HBONE' : 'TCP' });
      } else {
        out.outbound.push({
          src: socketAddr(c.src),
          originalDst: socketAddr(c.originalDst ?? c.dst),
          actualDst: socketAddr(c.upstream ?? c.dst),
          protocol: c.transport === 'passthrough' ? 'TCP' : 'HBONE',
        });
      }
    }
    return out;
  }
}

/** One observer telling several, in order (the telemetry, then the table). */
export function observers(...all: ConnObserver[]): ConnObserver {
  return {
    opened: (ctx) => {
      for (const o of all) o.opened(ctx);
    },
    closed: (rec) => {
      for (const o of all) o.closed(rec);
    },
  };
}
