/**
 * Summaries of the samples: medians with their spread (min..max over repetitions), per-unit CPU
 * costs, and ratios whose range is the worst case of the two spreads. Pure functions.
 */
import type { ConfigName } from './env.js';
import type { WorkloadName } from './loads.js';
import type { TrafficSample } from './traffic.js';

export interface Stat {
  median: number;
  min: number;
  max: number;
  n: number;
}

/** Nearest-rank percentile of unsorted values (p in 0..100). */
export function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * s.length);
  return s[Math.min(s.length - 1, Math.max(0, rank - 1))]!;
}

export function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function stat(xs: number[]): Stat {
  return { median: median(xs), min: Math.min(...xs), max: Math.max(...xs), n: xs.length };
}

/** (max - min) / median, in percent. */
export function spreadPct(s: Stat): number {
  return s.median === 0 ? 0 : ((s.max - s.min) / Math.abs(s.median)) * 100;
}

export interface Ratio {
  value: number;
  low: number;
  high: number;
}

/** a/b on medians; low..high = min(a)/max(b) .. max(a)/min(b). */
export function ratio(a: Stat, b: Stat): Ratio {
  return { value: a.median / b.median, low: a.min / b.max, high: a.max / b.min };
}

/** Per-unit costs of one sample: CPU seconds per 1,000 requests/connections, or per GB. */
export interface Costs {
  fwdUser: number;
  fwdSys: number;
  softirq: number;
  ksoftirqd: number;
  hostBusy: number;
}

export function unitOf(w: WorkloadName): { per: number; label: string } {
  return w === 'bulk1' || w === 'bulk8' ? { per: 1e9, label: 'GB' } : { per: 1000, label: w === 'connrate' ? '1k conn' : '1k req' };
}

export function costs(s: TrafficSample): Costs {
  const units = s.work / unitOf(s.workload).per;
  const f = (x: number): number => (units > 0 ? x / units : NaN);
  return { fwdUser: f(s.cpu.fwdUser), fwdSys: f(s.cpu.fwdSys), softirq: f(s.cpu.softirq), ksoftirqd: f(s.cpu.ksoftirqd), hostBusy: f(s.cpu.hostBusy) };
}

/** The figures of one (workload, configuration) row, over its measured repetitions. */
export interface Row {
  workload: WorkloadName;
  config: ConfigName;
  metrics: Record<string, Stat>;
  costs: Record<keyof Costs, Stat>;
  rssKb: Stat;
  rssPeakKb: Stat;
  conntrack: Stat;
  /** CPUs busy outside the bench's cgroups during the runs (a noise gauge) */
  outside: Stat;
  errors: number;
  /** runs left out because other work disturbed them */
  disturbed: number;
}

export function rows(samples: TrafficSample[]): Row[] {
  const out: Row[] = [];
  const keyOf = (s: TrafficSample): string => `${s.workload}/${s.config}`;
  const groups = new Map<string, TrafficSample[]>();
  for (const s of samples.filter((x) => !x.warmup)) groups.set(keyOf(s), [...(groups.get(keyOf(s)) ?? []), s]);
  for (const all of groups.values()) {
    // disturbed runs were re-run; keep them only when a row has nothing else
    const calm = all.filter((s) => !s.disturbed);
    const g = calm.length > 0 ? calm : all;
    const metrics: Record<string, Stat> = {};
    for (const k of Object.keys(g[0]!.metrics)) metrics[k] = stat(g.map((s) => s.metrics[k]!));
    const cs = g.map(costs);
    out.push({
      workload: g[0]!.workload,
      config: g[0]!.config,
      metrics,
      costs: {
        fwdUser: stat(cs.map((c) => c.fwdUser)),
        fwdSys: stat(cs.map((c) => c.fwdSys)),
        softirq: stat(cs.map((c) => c.softirq)),
        ksoftirqd: stat(cs.map((c) => c.ksoftirqd)),
        hostBusy: stat(cs.map((c) => c.hostBusy)),
      },
      rssKb: stat(g.map((s) => s.rssKb)),
      rssPeakKb: stat(g.map((s) => s.rssPeakKb ?? s.rssKb)),
      conntrack: stat(g.map((s) => s.conntrack)),
      outside: stat(g.map((s) => s.cpu.outside / s.cpu.wall)),
      errors: g.reduce((a, s) => a + s.errors, 0),
      disturbed: all.length - calm.length,
    });
  }
  return out;
}

/** The headline figure of each workload, and whether more is better. */
export const PRIMARY: Record<WorkloadName, { key: string; label: string; higherIsBetter: boolean }> = {
  http: { key: 'rps', label: 'requests/s', higherIsBetter: true },
  latency: { key: 'p50', label: 'latency p50 at a fixed rate', higherIsBetter: false },
  bulk1: { key: 'gbps', label: 'Gbit/s, 1 stream', higherIsBetter: true },
  bulk8: { key: 'gbps', label: 'Gbit/s, 8 streams', higherIsBetter: true },
  connrate: { key: 'cps', label: 'new connections/s', higherIsBetter: true },
};
