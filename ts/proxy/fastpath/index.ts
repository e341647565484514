/**
 * The kernel fast path (bpf/fastpath.bpf.c), what the proxy's listeners call: once the proxy has
 * decided a connection and it needs no more work in userspace (plain TCP passthrough, inbound
 * plaintext after the policy check, same-node delivery), its two sockets are spliced and no byte
 * of the connection crosses into Node. Off, or when the kernel cannot have it, every connection
 * takes the shared userspace relay.
 *
 *   maps.ts       the eBPF object, its setting and its maps (loaded and owned by this process)
 *   watcher.ts    the kernel's reports: a spliced socket's FIN or reset, a flow handed back
 *   direction.ts  one direction's states and the transitions allowed between them
 *   splice.ts     one connection, from the splice (at once or by promotion) to its end
 *   metrics.ts    inpod_fastpath_* for Prometheus
 */
import type net from 'node:net';
import type { Registry } from 'prom-client';
import type { Logger } from '../../util/log.js';
import { relay as userspaceRelay, relayGone } from '../relay.js';
import { FastPathMaps, FP_MAX_INFLIGHT, FP_STAT } from './maps.js';
import { FastPathMetrics } from './metrics.js';
import { Splice, type RelayResult } from './splice.js';
import { FastPathWatcher } from './watcher.js';

export type { RelayPath, RelayResult } from './splice.js';

export interface FastPathOptions {
  /** false: every connection takes the userspace path (the operator's off switch) */
  enabled: boolean;
  /**
   * When to splice. null (default): at once, when the proxy hands the connection over. Else a
   * connection starts in userspace and is spliced once it has carried `bytes` or lasted `ms`
   * (PROMOTE_DEFAULT is the proxy's "promote" mode).
   */
  promoteAfter?: { bytes: number; ms: number } | null;
  log: Logger;
  /** where the inpod_fastpath_* metrics go */
  registry?: Registry;
  /** how long a FIN may wait for redirected bytes to drain before the connection is reset */
  drainTimeoutMs?: number;
  /** the kernel's in-flight bound per direction (FP_MAX_INFLIGHT), written into the program at load */
  maxInflight?: number;
}

/**
 * Splicing costs a connection about 30 system calls and a kernel psock set up and torn down: for
 * a connection that carries one small exchange and closes, that is more than relaying it
 * (measured: ~0.7x the connection rate of the userspace path), while long-lived request/response
 * connections gain. A connection is known to be one or the other only once it has run a while:
 * in "promote" mode it starts in userspace and is spliced when it passes either mark. Promotion
 * has to stop reading, copy what is queued and wait for the copies to reach the kernel; under
 * load that is put off (counted) and after PROMOTE_RETRIES tries given up.
 */
export const PROMOTE_DEFAULT = { bytes: 64 * 1024, ms: 50 };

export class FastPath {
  readonly enabled: boolean;
  /** why the kernel path is off although enabled (the program or maps could not load) */
  readonly unavailable?: string;
  readonly drainTimeoutMs: number;
  readonly promoteAfter: { bytes: number; ms: number } | null;
  readonly #log: Logger;
  readonly #metrics: FastPathMetrics;
  #maps?: FastPathMaps;
  #watcher?: FastPathWatcher;
  readonly #splices = new Set<Splice>();

  constructor(o: FastPathOptions) {
    this.#log = o.log.child({ component: 'fastpath' });
    this.drainTimeoutMs = o.drainTimeoutMs ?? 30_000;
    this.promoteAfter = o.promoteAfter ?? null;
    this.enabled = o.enabled;
    if (o.enabled) {
      try {
        this.#maps = FastPathMaps.load(o.maxInflight ?? FP_MAX_INFLIGHT);
        this.#watcher = new FastPathWatcher(this.#maps, this.#log, () => {
          for (const s of this.#splices) s.checkThrottled();
        });
      } catch (e) {
        this.unavailable = (e as Error).message;
        this.#unload();
        this.#log.warn({ err: this.unavailable }, 'kernel fast path unavailable; connections take the userspace path');
      }
    }
    const self = this;
    this.#metrics = new FastPathMetrics(o.registry, {
      get active() {
        return self.active;
      },
      bytes: () => this.#counter(FP_STAT.bytes),
      drops: () => this.#counter(FP_STAT.drop),
    });
  }

  /** The kernel path is loaded and switched on. */
  get active(): boolean {
    return !!this.#watcher;
  }

  /**
   * Relays `a` <-> `b` (`a` the side that opened the connection): spliced in the kernel where it
   * can be (at once, or once the connection proves long-lived or bulky: `promoteAfter`), else in
   * userspace. Both sockets must be connected and never read yet (splice.ts has the contract).
   * `done` runs once, when both directions are over or either side failed.
   */
  relay(a: net.Socket, b: net.Socket, done: (r: RelayResult) => void): void {
    const gone = relayGone(a, b);
    if (gone) return done({ aToB: 0, bToA: 0, error: gone, kernelBytes: 0, path: 'userspace' });
    if (!this.#maps || !this.#watcher) {
      if (this.enabled) this.#metrics.fallback('unavailable');
      userspaceRelay(a, b, (r) => done({ ...r, kernelBytes: 0, path: 'userspace' }));
      return;
    }
    const env = { maps: this.#maps, watcher: this.#watcher, metrics: this.#metrics, log: this.#log, drainTimeoutMs: this.drainTimeoutMs };
    const s: Splice = new Splice(env, a, b, (r) => {
      this.#splices.delete(s);
      done(r);
    }, this.promoteAfter);
    this.#splices.add(s);
    if (this.promoteAfter) s.startUser(this.promoteAfter.ms);
    else s.spliceNow();
  }

  /** Entries in the fast path's maps (what a leak test counts). */
  mapEntries(): { srcs: number; dsts: number; flows: number } {
    return this.#maps?.entries() ?? { srcs: 0, dsts: 0, flows: 0 };
  }

  /** Kernel-wide counters: bytes and skbs redirected, skbs dropped, flows throttled. */
  counters(): { bytes: number; segs: number; drops: number; throttles: number } {
    const c = (i: number): number => Number(this.#counter(i));
    return { bytes: c(FP_STAT.bytes), segs: c(FP_STAT.segs), drops: c(FP_STAT.drop), throttles: c(FP_STAT.throttle) };
  }

  /** Connections with a direction in the kernel right now. */
  get activeConnections(): number {
    return this.#metrics.active;
  }

  /** Unloads the program; spliced sockets still open fall out of the maps with them. */
  close(): void {
    this.#unload();
  }

  #counter(idx: number): bigint {
    return this.#maps?.counter(idx) ?? 0n;
  }

  #unload(): void {
    this.#watcher?.close();
    this.#maps?.close();
    this.#watcher = this.#maps = undefined;
  }
}
