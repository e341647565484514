/**
 * `inpod bench --memory` as a smoke test (issue 19), reduced to 3 pods and 6 connections: every
 * connection reaches the next pod's app through the real proxy (HBONE, eBPF capture), the proxy's
 * memory is read at each phase (RSS from /proc, heap and glibc from its admin /memory), and
 * everything the run created is removed. Never asserts a memory figure: those are the bench's.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseBenchArgs, runBench, type BenchResult } from '../../ts/bench/index.js';
import { leftovers } from './leftovers.js';

describe('inpod bench --memory (reduced)', () => {
  let out: string;
  let res: BenchResult;

  beforeAll(async () => {
    out = mkdtempSync(join(tmpdir(), 'inpod-bench-mem-'));
    const o = parseBenchArgs(['--memory', '--out', out]);
    o.memory = { pods: 3, conns: 6, settleSeconds: 0, afterSeconds: [1], bytePath: 'native' };
    o.progress = () => {};
    res = await runBench(o);
  }, 120_000);

  afterAll(() => {
    if (out) rmSync(out, { recursive: true, force: true });
  });

  it('opens every connection through the proxy to the next pod\'s app (one byte echoed each)', () => {
    expect(res.memory).not.toBeNull();
    expect(res.memory!.failed).toBe(0);
    expect(res.memory!.opened).toBe(6);
  });

  it('reads the proxy\'s memory at every phase, its heap and glibc arenas from the admin /memory', () => {
    const phases = res.memory!.points.map((p) => p.phase);
    expect(phases).toEqual(['proxy started, no pods', '3 pods served', '3 pods, 6 idle connections', 'connections closed', '1 s after they closed']);
    for (const p of res.memory!.points) {
      expect(p.rssKb, p.phase).toBeGreaterThan(0);
      expect(p.anonKb + p.fileKb, p.phase).toBeGreaterThan(0);
      expect(p.heap?.heapUsed, p.phase).toBeGreaterThan(0);
      expect(p.heap?.mallocUsed, p.phase).toBeGreaterThan(0);
    }
    expect(res.traffic).toEqual([]);
    expect(readFileSync(res.markdownPath, 'utf8')).toContain('## Memory');
  });

  it('removes every namespace, cgroup and pin it created', () => {
    expect(leftovers(res.prefix)).toEqual([]);
  });
});
