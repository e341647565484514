/**
 * The one poller: `inpod demo`, the bench's set-up and every test wait for a condition with a
 * deadline this way, never with a fixed sleep.
 */
/** How often until() looks again, unless told otherwise. */
const POLL_MS = 25;

export interface UntilOptions {
  /** give up after this long (default 10 s) */
  timeoutMs?: number;
  /** what to show beside the timeout, e.g. the logs of the processes involved (its last 4000 characters) */
  context?: () => string;
  /** how often to look (default 25 ms): longer where each look costs the system under test */
  intervalMs?: number;
}

/**
 * Polls `cond` until it holds: a wait with a deadline, never a fixed sleep. Throws
 * "timed out after N ms waiting for <what>" (and the context's tail) when the deadline passes;
 * a throwing `cond` throws at once.
 */
export async function until(what: string, cond: () => boolean | Promise<boolean>, o: UntilOptions = {}): Promise<void> {
  const ms = o.timeoutMs ?? 10_000;
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) {
      const context = o.context?.().slice(-4000);
      throw new Error(`timed out after ${ms} ms waiting for ${what}${context ? `\n${context}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, o.intervalMs ?? POLL_MS));
  }
}
