/**
 * `inpod bench` as a smoke test: a reduced quick run (one repetition of one second, small
 * enrollment levels) of the capture-only rows of both families (IPv4, and the IPv6 rows of issue
 * 18 between IPv6-only pods) must produce a number for every row and remove everything it created.
 * Never asserts a timing: this machine is shared and its numbers are not for tests.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseBenchArgs, runBench, type BenchResult } from '../../ts/bench/index.js';
import { leftovers } from './leftovers.js';
import { CONFIGS as V4_CONFIGS, V6_CONFIGS, backendOf } from '../../ts/bench/env.js';
import { WORKLOADS } from '../../ts/bench/loads.js';
import { PRIMARY } from '../../ts/bench/stats.js';

const CONFIGS = [...V4_CONFIGS, ...V6_CONFIGS];

describe('inpod bench --quick (reduced)', () => {
  let out: string;
  let res: BenchResult;
  const lines: string[] = [];

  beforeAll(async () => {
    out = mkdtempSync(join(tmpdir(), 'inpod-bench-test-'));
    const o = parseBenchArgs(['--quick', '--configs', CONFIGS.join(','), '--out', out, '--reps', '1', '--seconds', '1', '--pods', '5']);
    o.traffic.warmupSeconds = 0;
    o.enroll = { levels: [2, 5], samples: 2 };
    o.progress = (l) => lines.push(l);
    res = await runBench(o);
  }, 180_000);

  afterAll(() => {
    if (out) rmSync(out, { recursive: true, force: true });
  });

  it('produces the primary figure of every workload for every configuration', () => {
    for (const w of WORKLOADS) {
      for (const c of CONFIGS) {
        const row = res.rows.find((r) => r.workload === w && r.config === c);
        expect(row, `${w}/${c}`).toBeDefined();
        const v = row!.metrics[PRIMARY[w].key]!.median;
        expect(Number.isFinite(v) && v > 0, `${w}/${c} ${PRIMARY[w].key} = ${v}`).toBe(true);
        expect(Number.isFinite(row!.costs.hostBusy.median), `${w}/${c} host CPU per unit`).toBe(true);
      }
    }
    const http = res.rows.filter((r) => r.workload === 'http' || r.workload === 'latency');
    for (const r of http) for (const p of ['p50', 'p90', 'p99']) expect(r.metrics[p]!.median, `${r.workload}/${r.config} ${p}`).toBeGreaterThan(0);
  });

  it('answers every request of the fixed-rate latency load, at its rate, in every configuration', () => {
    for (const c of CONFIGS) {
      const s = res.traffic.find((x) => x.workload === 'latency' && x.config === c && !x.warmup)!;
      // 1,000 requests/s for one second: every one sent and answered (none lost, none failed)
      expect(s.work, c).toBe(1000);
      expect(s.errors, c).toBe(0);
    }
  });

  it('measures forwarder CPU and memory only where a forwarder runs', () => {
    for (const r of res.rows) {
      if (backendOf(r.config) === null) expect(r.rssKb.max, r.config).toBe(0);
      else expect(r.rssKb.max, r.config).toBeGreaterThan(0);
      // the peak sampled during a run is at least what was left at its end
      expect(r.rssPeakKb.max, r.config).toBeGreaterThanOrEqual(r.rssKb.max);
    }
  });

  it('sends the load of every capture row, IPv4 and IPv6, through the forwarder (captured, original destination read)', () => {
    for (const c of CONFIGS.filter((x) => backendOf(x) !== null)) {
      const r = res.rows.find((x) => x.workload === 'http' && x.config === c)!;
      // the forwarders spent CPU relaying the requests: wrk's connections were captured and
      // reached nginx at the destination the forwarder read (errors would be counted otherwise)
      expect(r.costs.fwdUser.median + r.costs.fwdSys.median, c).toBeGreaterThan(0);
      expect(r.errors, c).toBe(0);
    }
  });

  it('times enroll and unenroll at every level for both backends, and counts per-pod state', () => {
    for (const b of ['iptables', 'ebpf']) {
      for (const n of [2, 5]) {
        for (const op of ['enroll', 'unenroll']) {
          const xs = res.enroll.samples.filter((s) => s.backend === b && s.n === n && s.op === op);
          expect(xs.length, `${b} N=${n} ${op}`).toBeGreaterThan(0);
          for (const s of xs) expect(s.ms).toBeGreaterThan(0);
        }
      }
    }
    const ipt = res.enroll.state.find((s) => s.backend === 'iptables')!;
    const ebpf = res.enroll.state.find((s) => s.backend === 'ebpf')!;
    expect(ipt.iptablesRules).toBeGreaterThan(0);
    expect(Object.values(ebpf.mapEntries).reduce((a, b) => a + b, 0)).toBeGreaterThan(0);
    expect(ebpf.iptablesRules).toBe(0);
  });

  it('writes the report, the samples and the chart', () => {
    const md = readFileSync(res.markdownPath, 'utf8');
    expect(md).toContain('| capture-only, eBPF |');
    expect(md).toContain('| capture-only, eBPF, IPv6 |');
    expect(md).toContain('IPv6: eBPF / iptables');
    expect(md).toContain('## Enrollment');
    const json = JSON.parse(readFileSync(res.jsonPath, 'utf8')) as { traffic: unknown[] };
    expect(json.traffic.length).toBeGreaterThanOrEqual(WORKLOADS.length * CONFIGS.length);
    expect(readFileSync(res.svgPath, 'utf8')).toMatch(/^<svg[\s\S]*<\/svg>\n$/);
    expect(lines.some((l) => l.includes('connrate'))).toBe(true);
  });

  it('removes every namespace, cgroup and pin it created', () => {
    expect(leftovers(res.prefix)).toEqual([]);
  });
});
