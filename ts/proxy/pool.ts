/**
 * The HBONE connection pool (ztunnel's src/proxy/pool.rs): tunnels share HTTP/2 connections
 * keyed by (source sandbox, source pod IP, source identity, destination identity, destination
 * address), as ztunnel's WorkloadKey inside its per-pod proxies, so two pods of one service
 * account, or two sandboxes of one pod, never share one. At most 100 streams per connection;
 * concurrent openers of one key wait for one new connection instead of each dialing; a
 * connection with no stream left closes after the idle timeout; a retired sandbox's connections
 * take no new stream. The connections themselves are a byte path's: Node's tls and http2
 * (hbone/client.ts) or the addon's engine (hbone/native.ts), both behind HboneLink.
 */
import { spiffeUri } from '../identity/spiffe.js';
import { isUnprocessed, type HboneLink, type HboneRequest, type HboneSource, type HboneTunnel } from './hbone/link.js';
import type { ConnectHeaders } from './hbone/headers.js';

export type { HboneRequest, HboneSource, HboneTunnel } from './hbone/link.js';
export type { ConnectHeaders } from './hbone/headers.js';

export const MAX_STREAMS_PER_CONNECTION = 100;

interface Pooled {
  link: HboneLink;
  active: number;
  idleTimer?: NodeJS.Timeout;
}

export interface HbonePoolOptions {
  idleTimeoutMs?: number;
  /** makes a connection: the byte path's dialer (hbone/client.ts nodeDialer, hbone/native.ts; tests pass a fake) */
  dial: (src: HboneSource, req: HboneRequest) => Promise<HboneLink>;
}

export interface Tunnel {
  tunnel: HboneTunnel;
  peerIdentity: string;
}

/** The key connections are shared under (ztunnel's WorkloadKey, plus the sandbox). */
export function poolKey(src: HboneSource, req: HboneRequest): string {
  return `${src.owner}|${src.ip}|${spiffeUri(src.identity)}|${req.identities[0]}|${req.target.ip}:${req.target.port}`;
}

export class HbonePool {
  readonly #conns = new Map<string, Pooled[]>();
  readonly #pending = new Map<string, Promise<Pooled>>();
  readonly #idleTimeoutMs: number;
  readonly #dial: (src: HboneSource, req: HboneRequest) => Promise<HboneLink>;

  constructor(opts: HbonePoolOptions) {
    this.#idleTimeoutMs = opts.idleTimeoutMs ?? 30_000;
    this.#dial = opts.dial;
  }

  /** The most streams any one pooled connection carried at once. */
  maxStreamsSeen = 0;

  /** Number of live pooled connections (for tests and config_dump). */
  get size(): number {
    let n = 0;
    for (const l of this.#conns.values()) n += l.length;
    return n;
  }

  /**
   * Opens a CONNECT stream to `req.authority` through `req.target`, carrying `headers`;
   * resolves after the 200.
   * A stream the peer refused unprocessed (REFUSED_STREAM: it sent GOAWAY before it saw the
   * stream, as a proxy that drains for a rollout does) is tried once more on another
   * connection: HTTP/2 says such a stream is safe to retry (RFC 9113, 8.7), and the client's
   * connection is then carried instead of reset. Throws what the link throws
   * (MeshError INPOD_ERR_HBONE_*).
   */
  async open(src: HboneSource, req: HboneRequest, headers: ConnectHeaders): Promise<Tunnel> {
    for (let attempt = 1; ; attempt++) {
      const pc = await this.#connection(poolKey(src, req), src, req);
      clearTimeout(pc.idleTimer);
      try {
        const tunnel = await pc.link.connect(req, headers, () => this.#release(pc));
        return { tunnel, peerIdentity: pc.link.peerIdentity };
      } catch (e) {
        if (attempt >= 2 || !isUnprocessed(e)) throw e;
      }
    }
  }

  /**
   * A connection of `key` with a stream slot, the slot already taken: the check and the take
   * happen in one synchronous step, so a burst of openers waiting for one new connection cannot
   * all take it past the limit (they spill over to the next connection).
   */
  async #connection(key: string, src: HboneSource, req: HboneRequest): Promise<Pooled> {
    let live = this.#conns.get(key);
    // pruned (a new list) only when one of them has closed: not a list per tunnel
    if (live?.some((c) => c.link.closed)) {
      live = live.filter((c) => !c.link.closed);
      this.#conns.set(key, live);
    }
    const free = live?.find((c) => c.active < MAX_STREAMS_PER_CONNECTION);
    if (free) return this.#take(free);
    // concurrent openers share one new connection instead of racing to make many
    let p = this.#pending.get(key);
    if (!p) {
      p = this.#dial(src, req).then((link): Pooled => ({ link, active: 0 })).finally(() => this.#pending.delete(key));
      this.#pending.set(key, p);
      const pc = await p;
      this.#conns.get(key)?.push(pc) ?? this.#conns.set(key, [pc]);
      pc.link.onClose(() => this.#conns.set(key, (this.#conns.get(key) ?? []).filter((x) => x !== pc)));
      return this.#take(pc);
    }
    const pc = await p;
    return pc.active < MAX_STREAMS_PER_CONNECTION ? this.#take(pc) : this.#connection(key, src, req);
  }

  #take(pc: Pooled): Pooled {
    pc.active++;
    if (pc.active > this.maxStreamsSeen) this.maxStreamsSeen = pc.active;
    return pc;
  }

  #release(pc: Pooled): void {
    pc.active--;
    if (pc.active > 0) return;
    clearTimeout(pc.idleTimer);
    pc.idleTimer = setTimeout(() => {
      if (pc.active === 0) pc.link.close();
    }, this.#idleTimeoutMs);
    pc.idleTimer.unref();
  }

  /**
   * A sandbox is no longer served: its pooled connections take no new streams and close once
   * their open streams end.
   */
  retire(owner: string): void {
    for (const [key, l] of this.#conns) {
      if (!key.startsWith(`${owner}|`)) continue;
      for (const c of l) c.link.close();
      this.#conns.delete(key);
    }
  }

  /** Tears every pooled connection down at once. */
  close(): void {
    for (const l of this.#conns.values()) for (const c of l) c.link.destroy();
    this.#conns.clear();
  }
}
