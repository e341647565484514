/**
 * The connections open now, per served pod, for the admin's `/config_dump` (its `workloadState`,
 * which `istioctl ztunnel-config connections` prints). A `ConnObserver` beside the telemetry:
 * a connection is in the table from its `opened` to its `closed`. In the shape of ztunnel's
 * connection manager dump (src/proxy/connection_manager.rs, `InboundConnectionDump` and
 * `OutboundConnection`, camelCase as serde writes them).
 */
import { socketAddr } from '../util/sockaddr.js';
import type { ConnContext, ConnObserver, ReportedConn } from './hooks.js';

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

/**
 * The open connections, per pod. An observer of its own (refusals and sockets are not
 * connections: it ignores them), told about each connection the proxy reports: in the table
 * from `opened` until its `closed`.
 */
export class ConnectionTable implements ConnObserver {
  /** pod uid -> the contexts of its open connections (read at dump time: fields set later show) */
  readonly #open = new Map<string, Set<ConnContext>>();

  opened(ctx: ConnContext): ReportedConn {
    const uid = ctx.pod.uid;
    let pod = this.#open.get(uid);
    if (!pod) this.#open.set(uid, (pod = new Set()));
    pod.add(ctx);
    return {
      closed: () => {
        const now = this.#open.get(uid);
        if (!now?.delete(ctx)) return;
        if (now.size === 0) this.#open.delete(uid);
      },
    };
  }

  refused(): void {}

  socketOpened(): () => void {
    return NOOP;
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
    for (const c of this.#open.get(uid) ?? []) {
      if (c.direction === 'inbound') {
        out.inbound.push({ src: socketAddr(c.src), originalDst: c.service?.hostname ?? null, actualDst: socketAddr(c.dst), protocol: c.src.identity ? 'HBONE' : 'TCP' });
      } else {
        out.outbound.push({
          src: socketAddr(c.src),
          originalDst: socketAddr(c.originalDst ?? c.dst),
          // an HBONE tunnel's TLS connection is to `via` (a peer's or waypoint's 15008)
          actualDst: socketAddr(c.via ?? c.dst),
          protocol: c.transport === 'passthrough' ? 'TCP' : 'HBONE',
        });
      }
    }
    return out;
  }
}

const NOOP = (): void => {};

/** One observer telling several, in order (the telemetry, then the table); each's report closed in the same order. */
export function observers(...all: ConnObserver[]): ConnObserver {
  return {
    opened: (ctx) => {
      const reports = all.map((o) => o.opened(ctx));
      return {
        closed: (rec) => {
          for (const r of reports) r.closed(rec);
        },
      };
    },
    refused: (r) => {
      for (const o of all) o.refused(r);
    },
    socketOpened: (reporter) => {
      const done = all.map((o) => o.socketOpened(reporter));
      return () => {
        for (const d of done) d();
      };
    },
  };
}
