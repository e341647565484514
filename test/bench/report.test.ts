/**
 * The report's IPv6 capture-only rows (issue 18): present beside their IPv4 twins, with their own
 * ratio columns and headline, and absent from an IPv4-only report. Pure: synthetic rows.
 */
import { describe, expect, it } from 'vitest';
import { CONFIGS, V6_CONFIGS, familyOf, type ConfigName } from '../../ts/bench/env.js';
import { WORKLOADS, loadArgv, type WorkloadName } from '../../ts/bench/loads.js';
import { headlineRatios, markdown, type RunInfo } from '../../ts/bench/report.js';
import { chartSvg } from '../../ts/bench/chart.js';
import { parseBenchArgs } from '../../ts/bench/index.js';
import { stat, type Row } from '../../ts/bench/stats.js';

/** requests/s per configuration (the other figures scale with it) */
const RPS: Partial<Record<ConfigName, number>> = { nomesh: 100_000, iptables: 40_000, ebpf: 60_000, nomesh6: 90_000, iptables6: 30_000, ebpf6: 45_000 };

function row(w: WorkloadName, c: ConfigName): Row {
  const v = RPS[c]!;
  const s = (x: number) => stat([x * 0.95, x, x * 1.05]);
  const metrics = w === 'http' ? { rps: s(v), p50: s(1e5 / v), p90: s(2e5 / v), p99: s(5e5 / v) } : w === 'connrate' ? { cps: s(v / 10) } : { gbps: s(v / 5000) };
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
    const p = { seconds: 2, httpConns: 16, connThreads: 8 };
    expect(loadArgv('http', 'fd00:200::5:0:0:3', p)).toContain('http://[fd00:200::5:0:0:3]:80/1k');
    expect(loadArgv('http', '10.200.5.3', p)).toContain('http://10.200.5.3:80/1k');
    expect(loadArgv('bulk1', 'fd00:200::5:0:0:3', p).slice(0, 3)).toEqual(['iperf3', '-c', 'fd00:200::5:0:0:3']);
    expect(loadArgv('connrate', 'fd00:200::5:0:0:3', p)[1]).toBe('fd00:200::5:0:0:3');
  });
});
