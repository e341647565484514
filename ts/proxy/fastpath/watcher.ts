/**
 * What the fast path hears from the kernel about spliced sockets, which Node does not read: a
 * peer's FIN or reset (the addon's epoll thread, EPOLLRDHUP one-shot), and flows the program
 * stopped redirecting (its ring buffer of socket cookies). Handlers run on the JS thread; a
 * handler that throws is logged, never let out.
 */
import { HupWatcher } from '../../native/index.js';
import type { Logger } from '../../util/log.js';
import { FP_STAT, type Ends, type FastPathMaps } from './maps.js';

/** The hang-up watcher's token for the program's ring buffer of throttled flows. */
const THROTTLE_TOKEN = 0;

export class FastPathWatcher {
  readonly #hup: HupWatcher;
  readonly #handlers = new Map<number, (revents: number) => void>();
  /** socket cookie (as a number) of a kernel direction -> what to do when the program stops it */
  readonly #throttled = new Map<number, () => void>();
  readonly #sweep: NodeJS.Timeout;
  #next = THROTTLE_TOKEN + 1;

  /**
   * `onLost` runs when the program could not report a throttled flow (its ring buffer was full):
   * only then are the open connections' flows looked at (not every connection's, every second).
   */
  constructor(maps: FastPathMaps, log: Logger, onLost: () => void) {
    this.#hup = new HupWatcher((token, revents, cookie) => {
      try {
        if (token === THROTTLE_TOKEN) this.#throttled.get(cookie!)?.();
        else this.#handlers.get(token)?.(revents);
      } catch (e) {
        log.warn({ err: (e as Error).message }, 'fast path: hang-up handler failed');
      }
    });
    try {
      this.#hup.ringbuf(maps.events.fd, THROTTLE_TOKEN);
    } catch (e) {
      this.#hup.close();
      throw e;
    }
    let lost = 0n;
    this.#sweep = setInterval(() => {
      const now = maps.counter(FP_STAT.lost);
      if (now === lost) return;
      lost = now;
      onLost();
    }, 1000);
    this.#sweep.unref();
  }

  /** Reports X's FIN or reset once, to `onHup(revents)`; returns the watch's token. */
  watch(e: Ends, onHup: (revents: number) => void): number {
    const token = this.#next++;
    this.#handlers.set(token, onHup);
    this.#hup.watch(e.fromFd, token);
    return token;
  }

  /** After the FIN: report X once more, only on error or full hang-up. */
  rearm(e: Ends, token: number): void {
    this.#hup.rearmErrors(e.fromFd, token);
  }

  /** Stops watching X (before it is closed). */
  unwatch(e: Ends, token: number): void {
    this.#hup.unwatch(e.fromFd);
    this.#handlers.delete(token);
  }

  /** Runs `fn` when the program stops redirecting X. */
  onThrottle(e: Ends, fn: () => void): void {
    this.#throttled.set(Number(e.cookie), fn);
  }

  /** Forgets X's throttle handler. */
  forget(e: Ends): void {
    this.#throttled.delete(Number(e.cookie));
  }

  close(): void {
    clearInterval(this.#sweep);
    this.#hup.close();
  }
}
