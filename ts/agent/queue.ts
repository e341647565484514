/**
 * Work serialized per key (a pod), with retries. A job starts only once the key's previous job has
 * settled, and reads the cache when it runs, so a burst of events for one pod runs one at a time
 * and converges on the last state.
 *
 * `ensure` is for work that must eventually happen (a pod event): a failure whose error is marked
 * retryable (MeshError.retryable: the proxy did not acknowledge, a transient kernel error) runs the
 * job again after a backoff that doubles from `minMs` up to `maxMs`, for as long as it keeps
 * failing that way; any other failure is final (the pod's next event tries again). A newer
 * `ensure` for the key replaces a pending retry and starts over from `minMs`, since the newer job
 * reads the newer state. As istio-cni's informer queue (cni/pkg/nodeagent/informers.go:
 * exponential 5 ms to 5 s, unlimited attempts, non-retryable adds not retried).
 */
import { MeshError } from '../util/errors.js';

/** Calls `fn` after `ms`; returns a function that cancels it. */
export type Timer = (fn: () => void, ms: number) => () => void;

const realTimer: Timer = (fn, ms) => {
  const t = setTimeout(fn, ms);
  t.unref();
  return () => clearTimeout(t);
};

export interface QueueOptions {
  /** first retry delay (default 100 ms) */
  minMs?: number;
  /** longest retry delay (default 5 s) */
  maxMs?: number;
  timer?: Timer;
  /** told of every failed `ensure` job: `retryInMs` is null when it is not retried */
  onFailure?: (key: string, err: Error, retryInMs: number | null, attempt: number) => void;
}

/** Is `e` worth trying again unchanged? Only errors that say so. */
export function isRetryable(e: unknown): boolean {
  return e instanceof MeshError && e.retryable;
}

export class KeyedQueue {
  readonly #o: Required<Omit<QueueOptions, 'onFailure'>> & Pick<QueueOptions, 'onFailure'>;
  readonly #tails = new Map<string, Promise<unknown>>();
  /** per key: generation of the latest `ensure`, and the pending retry's cancel */
  readonly #ensured = new Map<string, { gen: number; cancel?: () => void }>();
  #stopped = false;

  constructor(o: QueueOptions = {}) {
    this.#o = { minMs: o.minMs ?? 100, maxMs: o.maxMs ?? 5000, timer: o.timer ?? realTimer, onFailure: o.onFailure };
  }

  /** Runs `fn` once the key's previous job has settled; settles as `fn` does. */
  run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.#tails.get(key) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const tail = next.catch(() => {});
    this.#tails.set(key, tail);
    void tail.then(() => {
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    });
    return next;
  }

  /** Runs `fn` like `run`, and again with backoff while it fails retryably (see the file comment). */
  ensure(key: string, fn: () => Promise<unknown>): void {
    if (this.#stopped) return;
    const e = this.#ensured.get(key);
    e?.cancel?.();
    const gen = (e?.gen ?? 0) + 1;
    this.#ensured.set(key, { gen });
    this.#attempt(key, fn, gen, 0);
  }

  /** Is a retry of `key` pending? */
  retrying(key: string): boolean {
    return !!this.#ensured.get(key)?.cancel;
  }

  /** Resolves once no job of any key is running or queued (pending retries are not waited for). */
  async idle(): Promise<void> {
    while (this.#tails.size > 0) await Promise.all([...this.#tails.values()]);
  }

  /** Cancels every pending retry; later `ensure` calls do nothing. */
  stop(): void {
    this.#stopped = true;
    for (const e of this.#ensured.values()) e.cancel?.();
    this.#ensured.clear();
  }

  #attempt(key: string, fn: () => Promise<unknown>, gen: number, attempt: number): void {
    this.run(key, fn).then(
      () => {
        if (this.#ensured.get(key)?.gen === gen) this.#ensured.delete(key);
      },
      (err: Error) => {
        const current = this.#ensured.get(key)?.gen === gen;
        // a newer ensure() is queued behind this job and reads newer state: it replaces any retry
        const retry = current && !this.#stopped && isRetryable(err);
        const delay = Math.min(this.#o.maxMs, this.#o.minMs * 2 ** attempt);
        this.#o.onFailure?.(key, err, retry ? delay : null, attempt);
        if (!retry) {
          if (current) this.#ensured.delete(key);
          return;
        }
        const cancel = this.#o.timer(() => {
          const e = this.#ensured.get(key);
          if (e?.gen !== gen) return;
          e.cancel = undefined;
          this.#attempt(key, fn, gen, attempt + 1);
        }, delay);
        this.#ensured.set(key, { gen, cancel });
      },
    );
  }
}
