/**
 * The fast path's Prometheus metrics (inpod_fastpath_*): what the proxy decided, counted here,
 * and what the kernel moved, read from the program's per-CPU counters when scraped. Without a
 * registry everything is still counted for the caller (activeConnections), nothing exported.
 */
import { Counter, Gauge, type Registry } from 'prom-client';
import type { RelayPath } from './splice.js';

/** Why a connection, or one direction of it, stayed in userspace. */
export type FallbackReason = 'unavailable' | 'not_established' | 'kernel_refused';
/** Why a promotion was put off. */
export type DeferReason = 'busy' | 'not_established';

/** Where the kernel's own counters come from (absent while the program is not loaded). */
export interface KernelCounters {
  readonly active: boolean;
  bytes(): bigint;
  drops(): bigint;
}

export class FastPathMetrics {
  /** connections with at least one direction in the kernel right now */
  active = 0;
  readonly #spliced?: Counter<'path'>;
  readonly #fallbacks?: Counter<'reason'>;
  readonly #deferred?: Counter<'reason'>;
  readonly #demoted?: Counter;

  constructor(registry: Registry | undefined, kernel: KernelCounters) {
    if (!registry) return;
    const registers = [registry];
    const self = this;
    new Gauge({ name: 'inpod_fastpath_enabled', help: '1 when spliced connections are moved by the kernel', registers, collect() { this.set(kernel.active ? 1 : 0); } });
    new Gauge({ name: 'inpod_fastpath_active_connections', help: 'Connections spliced in the kernel right now', registers, collect() { this.set(self.active); } });
    this.#spliced = new Counter({ name: 'inpod_fastpath_connections_total', help: 'Connections spliced, by how their bytes travel (kernel; mixed: one direction stayed in userspace)', labelNames: ['path'], registers });
    this.#fallbacks = new Counter({ name: 'inpod_fastpath_fallback_total', help: 'Connections the kernel would not take, relayed in userspace instead, by reason', labelNames: ['reason'], registers });
    this.#demoted = new Counter({ name: 'inpod_fastpath_demoted_total', help: 'Spliced directions handed back to userspace because the receiving side fell behind (kernel back-pressure)', registers });
    this.#deferred = new Counter({ name: 'inpod_fastpath_promotion_deferred_total', help: 'Promotions of a userspace connection to the kernel put off (retried), by reason', labelNames: ['reason'], registers });
    const fromKernel = (name: string, help: string, read: () => bigint): void => {
      let last = 0n;
      new Counter({ name, help, registers, collect() {
        const now = kernel.active ? read() : 0n;
        if (now > last) this.inc(Number(now - last));
        last = now;
      } });
    };
    fromKernel('inpod_fastpath_bytes_total', 'Bytes the kernel moved between spliced sockets (from the eBPF counters)', () => kernel.bytes());
    fromKernel('inpod_fastpath_dropped_segments_total', 'Segments the fast path program dropped (no flow or peer socket); should stay 0', () => kernel.drops());
  }

  /** A connection joined the kernel: both directions ('kernel') or one ('mixed'). */
  spliced(path: 'kernel' | 'mixed'): void {
    this.active++;
    this.#spliced?.inc({ path });
  }

  /** A spliced connection is over. */
  unspliced(): void {
    this.active--;
  }

  fallback(reason: FallbackReason): void {
    this.#fallbacks?.inc({ reason });
  }

  deferred(reason: DeferReason): void {
    this.#deferred?.inc({ reason });
  }

  demoted(): void {
    this.#demoted?.inc();
  }
}
