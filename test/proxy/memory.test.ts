/**
 * Giving memory back after a load (ts/proxy/memory.ts, issue 19): when the policy decides a
 * return (after a load, once quiet; memory freed later; never during a load, never twice in a
 * row for nothing), and that a return really frees: the garbage of a load is collected and
 * glibc's free pages go back to the kernel (the addon's malloc_trim). No RSS figure is asserted:
 * those are the bench's (`inpod bench --memory`).
 */
import { describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { MemoryReturner, TrimPolicy, fullGc, type UsageSample } from '../../ts/proxy/memory.js';
import { mallocInfo, mallocTrim } from '../../ts/native/memory.js';

/** Feeds a policy one sample a second: `busy` seconds at 100% of a CPU, then idle, with `free` bytes free in glibc. */
function run(p: TrimPolicy, plan: { seconds: number; busy?: (s: number) => boolean; free?: (s: number) => number }): number[] {
  const fired: number[] = [];
  let cpu = 0;
  for (let s = 0; s <= plan.seconds; s++) {
    if (plan.busy?.(s)) cpu += 1000;
    else cpu += 10; // an idle proxy's PINGs and timers: 1% of a CPU
    const sample: UsageSample = { at: s * 1000, cpuMs: cpu, mallocFree: plan.free?.(s) ?? 0 };
    if (p.sample(sample)) {
      fired.push(s);
      p.returned(sample.mallocFree);
    }
  }
  return fired;
}

describe('TrimPolicy', () => {
  it('returns memory once after a load, when the proxy has been quiet for 5 s', () => {
    // busy through the sample at 12 s (the load ends there): quiet from 12, returned at 17
    expect(run(new TrimPolicy(), { seconds: 60, busy: (s) => s >= 3 && s < 13 })).toEqual([17]);
  });

  it('never returns during a load, however long', () => {
    expect(run(new TrimPolicy(), { seconds: 120, busy: (s) => s >= 1 })).toEqual([]);
  });

  it('leaves an idle proxy alone: PINGs and timers below the busy share are not a load', () => {
    expect(run(new TrimPolicy(), { seconds: 600, free: () => 4 << 20 })).toEqual([]);
  });

  it('returns memory freed without a load (an idle pooled connection closing) once, not again for the same free bytes', () => {
    // 20 MB more free from second 30 on (the pool let its connections go)
    expect(run(new TrimPolicy(), { seconds: 120, free: (s) => (s >= 30 ? 20 << 20 : 1 << 20) })).toEqual([30]);
  });

  it('never returns twice within 10 s: a short load right after a return gets its own return 10 s after the first', () => {
    // load 1 ends at 2 -> returned at 7; load 2 (at 8) is quiet again from 8, but waits until 17
    expect(run(new TrimPolicy(), { seconds: 60, busy: (s) => (s >= 1 && s < 3) || s === 8 })).toEqual([7, 17]);
  });

  it('a load that keeps coming back before 5 s of quiet is one load: one return after its end', () => {
    const busy = (s: number): boolean => s % 4 === 1 && s < 40;
    // busy at 1, 5, ..., 37: never 5 s quiet before 37; returned at 42
    expect(run(new TrimPolicy(), { seconds: 80, busy })).toEqual([42]);
  });
});

describe('MemoryReturner', () => {
  it('collects a load\'s garbage and trims glibc when the policy fires (real GC, real malloc_trim)', async () => {
    let now = 0;
    let cpu = 0;
    let returned = 0;
    const r = new MemoryReturner({
      log: pino({ level: 'silent' }),
      everyMs: 3_600_000,
      usage: () => ({ at: now, cpuMs: cpu, mallocFree: 0 }),
    });
    try {
      // garbage the load left: objects only a collection frees, held weakly to see it go
      let garbage: object | null = { payload: new Array(100_000).fill(1) };
      const ref = new WeakRef(garbage);
      garbage = null;
      expect(ref.deref()).toBeDefined();
      // a WeakRef holds its target until the current job ends
      await new Promise((resolve) => setImmediate(resolve));
      const tick = (busy: boolean): void => {
        now += 1000;
        cpu += busy ? 1000 : 0;
        const before = r.returns;
        r.tick();
        returned += r.returns - before;
      };
      tick(true);
      tick(true);
      for (let i = 0; i < 4; i++) tick(false);
      expect(returned).toBe(0);
      for (let i = 0; i < 3; i++) tick(false);
      expect(returned).toBe(1);
      expect(ref.deref()).toBeUndefined();
      expect(r.last?.rssAfter).toBeGreaterThan(0);
    } finally {
      r.stop();
    }
  });
});

describe('malloc_trim (addon)', () => {
  it('gives back the pages of native buffers freed by a collection (glibc says it released memory)', () => {
    mallocTrim(0);
    // 32 KiB each: under glibc's mmap threshold, so they live in its arenas
    let bufs: Buffer[] | null = Array.from({ length: 1000 }, () => Buffer.alloc(32 * 1024, 1));
    const inUse = mallocInfo().uordblks;
    expect(inUse).toBeGreaterThan(30 << 20);
    bufs = null;
    fullGc()();
    const info = mallocInfo();
    expect(info.uordblks).toBeLessThan(inUse - (16 << 20));
    expect(bufs).toBeNull();
    expect(mallocTrim(0)).toBe(true);
  });
});
