/**
 * Giving memory back once a load is over (issue 19). Under load the proxy's RSS grows: V8's heap,
 * and glibc's arenas, where freed TLS, HTTP/2 and socket state stays as free chunks the kernel
 * still counts. Neither shrinks by itself when the load stops: V8 collects only when JavaScript
 * allocates, and glibc returns only the top of its main heap, above a threshold. So the proxy
 * samples itself once a second (its CPU time and glibc's free bytes; no hook on the data path)
 * and, once it has been quiet for a while after a load, runs one full garbage collection (the JS
 * wrappers of closed sockets free their native state) and then malloc_trim, which returns every
 * free page of every arena. `TrimPolicy` decides when (pure); `MemoryReturner` samples and acts; the addon only
 * makes the call.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { mallocInfo, mallocTrim as nativeTrim } from '../native/memory.js';
import type { Logger } from '../util/log.js';

export interface TrimPolicyOptions {
  /** a sample is busy at or above this share of one CPU */
  busyCpuShare: number;
  /** quiet: no busy sample for this long, ms */
  quietMs: number;
  /** at least this long between two returns, ms */
  minIntervalMs: number;
  /** free bytes in glibc's arenas worth a return without a load */
  minFreeBytes: number;
}

export const TRIM_POLICY_DEFAULTS: TrimPolicyOptions = { busyCpuShare: 0.2, quietMs: 5_000, minIntervalMs: 10_000, minFreeBytes: 8 << 20 };

export interface UsageSample {
  /** ms, monotonic */
  at: number;
  /** user + system CPU time of the process so far, ms */
  cpuMs: number;
  /** bytes free inside glibc's arenas (mallinfo2 fordblks) */
  mallocFree: number;
}

/**
 * When to give memory back: once the process has been quiet (no sample at or above
 * `busyCpuShare` of a CPU) for `quietMs`, if a load ran since the last return (a busy sample),
 * or, without one, if glibc holds `minFreeBytes` more free than the last return left (memory let
 * go later, as an idle pooled connection closing). Never twice within `minIntervalMs`. So an idle proxy is not collected
 * again and again (its HTTP/2 PINGs and metrics scrapes stay under the busy share), and a load
 * gets one return once it is over, not one during it.
 */
export class TrimPolicy {
  readonly #o: TrimPolicyOptions;
  #last: UsageSample | null = null;
  #quietSince: number | null = null;
  #loadSinceReturn = false;
  #lastReturn = -Infinity;
  #freeAfterReturn = 0;

  constructor(o: Partial<TrimPolicyOptions> = {}) {
    this.#o = { ...TRIM_POLICY_DEFAULTS, ...o };
  }

  /** Feeds one sample; true when memory should be returned now (then the return counts as done). */
  sample(s: UsageSample): boolean {
    const last = this.#last;
    this.#last = s;
    if (!last || s.at <= last.at) return false;
    if ((s.cpuMs - last.cpuMs) / (s.at - last.at) >= this.#o.busyCpuShare) {
      this.#loadSinceReturn = true;
      this.#quietSince = null;
      return false;
    }
    this.#quietSince ??= last.at;
    if (s.at - this.#quietSince < this.#o.quietMs || s.at - this.#lastReturn < this.#o.minIntervalMs) return false;
    if (!this.#loadSinceReturn && s.mallocFree - this.#freeAfterReturn < this.#o.minFreeBytes) return false;
    this.#loadSinceReturn = false;
    this.#lastReturn = s.at;
    return true;
  }

  /**
   * After a return, glibc's free bytes (trimmed pages stay on its free lists, counted as free):
   * the next return without a load needs `minFreeBytes` more than these.
   */
  returned(mallocFree: number): void {
    this.#freeAfterReturn = mallocFree;
  }
}

export interface ReturnRecord {
  /** wall-clock time of the return */
  at: string;
  rssBefore: number;
  rssAfter: number;
  ms: number;
}

export interface MemoryReturnerOptions {
  log: Logger;
  policy?: Partial<TrimPolicyOptions>;
  /** sampling period, ms */
  everyMs?: number;
  /** what a return does (tests): default a full GC, then malloc_trim */
  returnMemory?: () => void;
  /** the sample (tests): default this process's CPU time and glibc's free bytes */
  usage?: () => UsageSample;
}

/** A full collection, when V8 lets us have one (`gc` through a context made after --expose-gc). */
export function fullGc(): () => void {
  try {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    return typeof gc === 'function' ? gc : () => {};
  } catch {
    return () => {};
  }
}

function processUsage(): UsageSample {
  const c = process.cpuUsage();
  return { at: performance.now(), cpuMs: (c.user + c.system) / 1000, mallocFree: mallocInfo().fordblks };
}

/** Samples the process and returns memory when the policy says so; stop() ends it. */
export class MemoryReturner {
  readonly #policy: TrimPolicy;
  readonly #timer: NodeJS.Timeout;
  readonly #o: MemoryReturnerOptions;
  readonly #return: () => void;
  readonly #usage: () => UsageSample;
  /** the returns so far (the last one kept), for the admin's /memory */
  returns = 0;
  last: ReturnRecord | null = null;

  constructor(o: MemoryReturnerOptions) {
    this.#o = o;
    this.#policy = new TrimPolicy(o.policy);
    this.#usage = o.usage ?? processUsage;
    if (o.returnMemory) this.#return = o.returnMemory;
    else {
      const gc = fullGc();
      this.#return = () => {
        gc();
        nativeTrim(0);
      };
    }
    this.#timer = setInterval(() => this.tick(), o.everyMs ?? 1_000);
    this.#timer.unref();
  }

  /** One sample (the timer calls it; tests may too). */
  tick(): void {
    if (!this.#policy.sample(this.#usage())) return;
    const before = process.memoryUsage.rss();
    const t = performance.now();
    this.#return();
    this.#policy.returned(this.#usage().mallocFree);
    const after = process.memoryUsage.rss();
    this.returns++;
    this.last = { at: new Date().toISOString(), rssBefore: before, rssAfter: after, ms: performance.now() - t };
    this.#o.log.debug({ rssBefore: before, rssAfter: after, ms: Math.round(this.last.ms) }, 'memory returned after a load');
  }

  stop(): void {
    clearInterval(this.#timer);
  }
}
