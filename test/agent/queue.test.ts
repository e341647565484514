/** queue.ts: one job at a time per pod, and retries with backoff for retryable failures only. */
import { describe, expect, it } from 'vitest';
import { KeyedQueue } from '../../ts/agent/queue.js';
import { MeshError } from '../../ts/util/errors.js';
import { ManualTimer } from './fakes.js';

const retryable = (): MeshError => new MeshError('INPOD_ERR_ZDS', 'the proxy did not acknowledge', { retryable: true });
const final = (): MeshError => new MeshError('INPOD_ERR_NETNS', 'not a network namespace');
const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('KeyedQueue', () => {
  it('runs the jobs of one key one at a time, in order; other keys do not wait', async () => {
    const q = new KeyedQueue();
    const seen: string[] = [];
    let release!: () => void;
    const slow = q.run('a', () => new Promise<void>((r) => (release = r)).then(() => void seen.push('a1')));
    const next = q.run('a', async () => void seen.push('a2'));
    await q.run('b', async () => void seen.push('b1'));
    expect(seen).toEqual(['b1']);
    release();
    await Promise.all([slow, next]);
    expect(seen).toEqual(['b1', 'a1', 'a2']);
    // a failed job does not stop the next one
    await expect(q.run('a', async () => Promise.reject(final()))).rejects.toThrow(/not a network namespace/);
    await expect(q.run('a', async () => 'ok')).resolves.toBe('ok');
  });

  it('retries a retryable failure with a delay that doubles up to the cap, until the job succeeds', async () => {
    const timer = new ManualTimer();
    const delays: (number | null)[] = [];
    const q = new KeyedQueue({ minMs: 100, maxMs: 300, timer: timer.timer, onFailure: (_k, _e, ms) => delays.push(ms) });
    let runs = 0;
    q.ensure('a', async () => {
      if (++runs < 5) throw retryable();
    });
    for (let i = 1; i < 5; i++) {
      while (timer.delays().length === 0) await tick();
      expect(q.retrying('a')).toBe(true);
      timer.fire();
    }
    while (runs < 5) await tick();
    await tick();
    expect(delays).toEqual([100, 200, 300, 300]);
    expect(q.retrying('a')).toBe(false);
    expect(timer.delays()).toEqual([]);
  });

  it('does not retry a failure that is not marked retryable, nor a plain Error', async () => {
    const timer = new ManualTimer();
    const told: (number | null)[] = [];
    const q = new KeyedQueue({ timer: timer.timer, onFailure: (_k, _e, ms) => told.push(ms) });
    q.ensure('a', async () => Promise.reject(final()));
    q.ensure('b', async () => Promise.reject(new Error('EPERM')));
    while (told.length < 2) await tick();
    expect(told).toEqual([null, null]);
    expect(timer.delays()).toEqual([]);
  });

  it('a newer ensure for the key replaces the pending retry and starts again from the shortest delay', async () => {
    const timer = new ManualTimer();
    const delays: number[] = [];
    const q = new KeyedQueue({ minMs: 100, timer: timer.timer, onFailure: (_k, _e, ms) => ms !== null && delays.push(ms) });
    q.ensure('a', async () => Promise.reject(retryable()));
    while (timer.delays().length === 0) await tick();
    timer.fire();
    while (delays.length < 2) await tick();
    expect(delays).toEqual([100, 200]);
    let newer = 0;
    q.ensure('a', async () => {
      if (++newer === 1) throw retryable();
    });
    while (delays.length < 3) await tick();
    expect(delays[2]).toBe(100);
    expect(timer.delays()).toEqual([100]); // the older job's retry was cancelled
    timer.fire();
    while (newer < 2) await tick();
  });

  it('a job failing while a newer one for its key is queued is not retried: the newer one reads newer state', async () => {
    const timer = new ManualTimer();
    const told: (number | null)[] = [];
    const q = new KeyedQueue({ timer: timer.timer, onFailure: (_k, _e, ms) => told.push(ms) });
    let release: (() => void) | undefined;
    q.ensure('a', () => new Promise<void>((_r, reject) => (release = () => reject(retryable()))));
    let ran = false;
    q.ensure('a', async () => void (ran = true));
    while (!release) await tick();
    release();
    while (!ran) await tick();
    expect(told).toEqual([null]);
    expect(timer.delays()).toEqual([]);
  });

  it('stop cancels pending retries and takes no more work', async () => {
    const timer = new ManualTimer();
    const q = new KeyedQueue({ timer: timer.timer });
    let runs = 0;
    q.ensure('a', async () => {
      runs++;
      throw retryable();
    });
    while (timer.delays().length === 0) await tick();
    q.stop();
    expect(timer.delays()).toEqual([]);
    q.ensure('a', async () => void runs++);
    await tick();
    expect(runs).toBe(1);
  });
});
