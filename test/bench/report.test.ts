/**
 * The report's IPv6 capture-only rows (issue 18): present beside their IPv4 twins, with their own
 * ratio columns and headline, and absent from an IPv4-only report; the memory scenario's section
 * (issue 19). Pure: synthetic rows.
 */
import { describe, expect, it } from 'vitest';
import { CONFIGS, V6_CONFIGS, familyOf, type ConfigName } from '../../ts/bench/env.js';
import { WORKLOADS, loadArgv, type WorkloadName } from '../../ts/bench/loads.js';
import { addedLatency, headlineRatios, markdown, memorySection, type RunInfo } from '../../ts/bench/report.js';
import type { MemoryResult } from '../../ts/bench/memory.js';
import { chartSvg } from '../../ts/bench/chart.js';
import { parseBenchArgs } from '../../ts/bench/index.js';
import { stat, type Row, type Stat } from '../../ts/bench/stats.js';

/** requests/s per configuration (the other figures scale with it) */
const RPS: Partial<Record<ConfigName, number>> = { nomesh: 100_000, iptables: 40_000, ebpf: 60_000, nomesh6: 90_000, iptables6: 30_000, ebpf6: 45_000, 'proxy-ebpf': 15_000 };

function row(w: WorkloadName, c: ConfigName): Row {
  const v = RPS[c]!;
  const s = (x: number) => stat([x * 0.95, x, x * 1.05]);
  // at a fixed rate the p50 is the path's own time: 0.1 ms without a mesh, + 0.01 ms per 10,000 requests/s fewer
  const fixed = 0.1 + (100_000 - v) / 1e6;
  const metrics: Record<string, Stat> = w === 'http' ? { rps: s(v), p50: s(1e5 / v), p90: s(2e5 / v), p99: s(5e5 / v) }
    : w === 'latency' ? { rps: s(1000), p50: s(fixed), p90: s(fixed * 2), p99: s(fixed * 5) } : w === 'connrate' ? { cps: s(v / 10) } : { gbps: s(v / 5000) };
  const c0 = s(0.1);
  return { workload: w, config: c, metrics, costs: { fwdUser: c0, fwdSys: c0, softirq: c0, ksoftirqd: c0, hostBusy: c0 }, rssKb: stat([c.startsWith('nomesh') ? 0 : 3000]), rssPeakKb: stat([c.startsWith('nomesh') ? 0 : 3000]), conntrack: stat([0]), outside: stat([0.1]), errors: 0, disturbed: 0 };
}

const INFO: RunInfo = {
  argv: ['--configs', [...CONFIGS, ...V6_CONFIGS].join(',')], quick: false, startedAt: '2026-12-01T19:00:00.000Z', durationS: 600, reps: 2, seconds: 8,
  warmupSeconds: 3, httpConns: 16, connThreads: 8, pinned: true, enrollLevels: [], enrollSamples: 0, host: { kernel: 'Linux' }, daemonCommands: [],
};

describe('bench report, IPv6 capture-only rows', () => {
  const all = WORKLOADS.flatMap((w) => [...CONFIGS, ...V6_CONFIGS].map((c) => row(w, c)));

  it('lists the IPv6 rows beside their IPv4 twins, with IPv6 ratio columns and headline', () => {
    const md = markdown(INFO, all, [], [], []);
    for (const label of ['| no mesh |', '| capture-only, eBPF |', '| no mesh, IPv6 |', '| capture-only, iptables, IPv6 |', '| capture-only, eBPF, IPv6 |']) expect(md).toContain(label);
    expect(md).toContain('| IPv6: iptables / no mesh | IPv6: eBPF / no mesh | IPv6: eBPF / iptables |');
    // requests/s: IPv4 eBPF/iptables 1.50, IPv6 1.50; against no mesh 0.40/0.60 and 0.33/0.50
    expect(md).toMatch(/\| requests\/s \| \*\*0\.40\*\* \([^)]*\) \| \*\*0\.60\*\* \([^)]*\) \| \*\*1\.50\*\* \([^)]*\) \| \*\*0\.33\*\* \([^)]*\) \| \*\*0\.50\*\* \([^)]*\) \| \*\*1\.50\*\* /);
    expect(md).toMatch(/^IPv6 \(IPv6-only pods\), eBPF \/ iptables: requests\/s \*\*1\.50\*\*/m);
    // the IPv6 rows' forwarder memory is shown (at the end of a run, its peak, after the load), the IPv6 baseline has none
    expect(md).toMatch(/\| no mesh, IPv6 \|.*\| – \| – \| – \|$/m);
    expect(md).toMatch(/\| capture-only, eBPF, IPv6 \|.*\| 3,000 \| 3,000 \| – \|$/m);
    expect(chartSvg(all, 't')).toContain('eBPF 6');
  });

  it('puts the IPv6 ratios in the JSON', () => {
    const r = headlineRatios(all)['requests/s']!;
    expect(r.ebpfVsIptables6!.value).toBeCloseTo(1.5);
    expect(r.ebpfVsNone6!.value).toBeCloseTo(0.5);
    expect(r.iptablesVsNone6!.value).toBeCloseTo(1 / 3);
    expect(r.ebpfVsIptables!.value).toBeCloseTo(1.5);
  });

  it('leaves the IPv6 columns out of an IPv4-only report', () => {
    const md = markdown(INFO, all.filter((r) => familyOf(r.config) === 'ipv4'), [], [], []);
    expect(md).not.toContain('IPv6: eBPF / iptables');
    expect(md).not.toContain(', IPv6 |');
    expect(md).not.toMatch(/^IPv6 \(IPv6-only pods\)/m);
  });

  it('runs the IPv6 rows only when --configs names them, beside their IPv4 twins in run order', () => {
    expect(parseBenchArgs([]).configs).not.toContain('ebpf6');
    expect(parseBenchArgs(['--quick']).configs).toEqual(CONFIGS);
    expect(parseBenchArgs(['--configs', 'ebpf6,ebpf,iptables6,iptables,nomesh6,nomesh']).configs).toEqual(['nomesh', 'iptables', 'ebpf', 'nomesh6', 'iptables6', 'ebpf6']);
    expect(V6_CONFIGS.map(familyOf)).toEqual(['ipv6', 'ipv6', 'ipv6']);
  });

  it('addresses an IPv6 server in brackets in the URL and bare elsewhere', () => {
    const p = { seconds: 2, httpConns: 16, latencyRate: 1000, connThreads: 8 };
    expect(loadArgv('http', 'fd00:200::5:0:0:3', p)).toContain('http://[fd00:200::5:0:0:3]:80/1k');
    expect(loadArgv('http', '10.200.5.3', p)).toContain('http://10.200.5.3:80/1k');
    expect(loadArgv('bulk1', 'fd00:200::5:0:0:3', p).slice(0, 3)).toEqual(['iperf3', '-c', 'fd00:200::5:0:0:3']);
    expect(loadArgv('connrate', 'fd00:200::5:0:0:3', p)[1]).toBe('fd00:200::5:0:0:3');
    // the fixed-rate client: bare address, port, seconds, rate, connections, path
    expect(loadArgv('latency', 'fd00:200::5:0:0:3', p).slice(1)).toEqual(['fd00:200::5:0:0:3', '80', '2', '1000', '16', '/1k']);
  });
});

describe('bench report, memory scenario', () => {
  const heap = { heapUsed: 20 << 20, heapTotal: 24 << 20, external: 2 << 20, arrayBuffers: 0, newSpace: 1 << 20, returns: 1, mallocUsed: 10 << 20, mallocFree: 4 << 20 };
  const point = (phase: string, rssMb: number, withHeap = true) =>
    ({ phase, at: 1, rssKb: rssMb * 1024, anonKb: (rssMb - 45) * 1024, fileKb: 45 * 1024, hwmKb: rssMb * 1024, heap: withHeap ? heap : null });
  const result: MemoryResult = {
    plan: { pods: 100, conns: 1000, settleSeconds: 2, afterSeconds: [10, 40], bytePath: 'node' },
    opened: 1000,
    failed: 0,
    points: [point('proxy started, no pods', 70), point('100 pods served', 80), point('100 pods, 1000 idle connections', 130), point('connections closed', 135), point('40 s after they closed', 90)],
  };

  it('lists every phase with RSS, heap and glibc figures, and what one pod and one connection cost', () => {
    const md = memorySection(result);
    expect(md).toContain('| 100 pods, 1000 idle connections | 1 | 130.0 | 85.0 | 45.0 | 20.0 / 24.0 | 1.0 | 2.0 | 0.0 | 10.0 / 4.0 | 1 |');
    // (80 - 70) MB over 100 pods; (130 - 80) MB over 1000 connections
    expect(md).toContain('Per pod: 102.4 KiB of RSS; per open connection: 51.2 KiB');
    expect(md).toContain('40 s after they closed: 90.0 MB, 40.0 MB less than with the connections open (130.0 MB)');
  });

  it('shows a build without the admin /memory (another build, --proxy-cli) with its RSS only', () => {
    const md = memorySection({ ...result, points: result.points.map((p) => ({ ...p, heap: null })) });
    expect(md).toContain('| 100 pods served | 1 | 80.0 | 35.0 | 45.0 | – | – | – | – | – | – |');
    expect(memorySection(null)).toBe('');
  });
});

describe('bench report, the proxy against capture alone (issue 19)', () => {
  const rows = WORKLOADS.flatMap((w) => (['nomesh', 'ebpf', 'proxy-ebpf'] as ConfigName[]).map((c) => row(w, c)));

  it('gives the proxy (HBONE, eBPF) over capture-only eBPF for every figure, in the report and the JSON', () => {
    const md = markdown(INFO, rows, [], [], []);
    expect(md).toContain('| proxy eBPF / capture-only eBPF |');
    // new connections/s: 1,500 through the proxy against 6,000 captured alone
    expect(headlineRatios(rows)['new connections/s']!.proxyVsCapture!.value).toBeCloseTo(0.25);
    expect(md).toMatch(/^\| new connections\/s \|.*\| \*\*0\.25\*\* \([^)]*\) \|$/m);
  });

  it('leaves the column out without both rows', () => {
    expect(markdown(INFO, rows.filter((r) => r.config !== 'ebpf'), [], [], [])).not.toContain('capture-only eBPF |');
  });

  it('gives the p50 latency each configuration adds over no mesh, saturated and at a fixed rate', () => {
    // saturated: 1e5/v ms, so 1.0 ms no mesh, 1.667 eBPF, 6.667 the proxy; fixed rate 0.1, 0.14, 0.185
    const added = addedLatency(rows);
    expect(added.map((r) => r[0])).toEqual(['capture-only, eBPF', 'proxy (HBONE), eBPF']);
    expect(added[0]![1]).toMatch(/^\*\*0\.667\*\* /);
    expect(added[1]![2]).toMatch(/^\*\*0\.085\*\* \(0\.071–0\.099\)$/);
    const md = markdown({ ...INFO, latencyRate: 1000 }, rows, [], [], []);
    expect(md).toMatch(/^\| proxy \(HBONE\), eBPF \| \*\*5\.667\*\* .* \| \*\*0\.085\*\* .*\|$/m);
    expect(md).toContain('inpod-latency: 1000 requests/s spread over 16 kept-alive connections');
    // without a no-mesh row there is nothing to add to
    expect(addedLatency(rows.filter((r) => r.config !== 'nomesh'))).toEqual([]);
  });
});
