/**
 * The traffic rows: every workload against every configuration, interleaved (A B C A B C ...)
 * so drift on the host hits all configurations alike, after one short warm-up round. Each run is
 * one sample with the load generator's figures and the CPU it cost (forwarders' user/system time,
 * host softirq and busy time over the run) and the forwarders' RSS: its peak during the run, at its
 * end, and (rssAfterLoad) once every run is over and they have been idle a while.
 */
import type { BenchEnv, ConfigName } from './env.js';
import { delta, rssKb, snapshot, type CpuDelta } from './cpu.js';
import { WORKLOADS, runLoad, type LoadParams, type WorkloadName } from './loads.js';

export interface TrafficSample {
  rep: number;
  warmup: boolean;
  /** other work held more than DISTURBED_CPUS during the run: re-run once, left out of the summaries */
  disturbed: boolean;
  workload: WorkloadName;
  config: ConfigName;
  metrics: Record<string, number>;
  /** requests, bytes or connections done in the run */
  work: number;
  errors: number;
  cpu: CpuDelta;
  /** forwarders' summed RSS at the end of the run, KiB (0 without a mesh) */
  rssKb: number;
  /** the highest of their summed RSS sampled every 200 ms during the run, KiB */
  rssPeakKb: number;
  /** conntrack entries in the two pods right after the run */
  conntrack: number;
  command: string;
  startedAt: string;
}

export interface TrafficPlan extends LoadParams {
  reps: number;
  warmupSeconds: number;
  /** disturbed runs re-run at most this many times in all (keeps the run inside its time budget) */
  maxRetries: number;
}

export type Progress = (line: string) => void;

/** CPUs of task time outside the bench (other tests, builds) above which a run counts as disturbed. */
export const DISTURBED_CPUS = 0.25;

function headline(w: WorkloadName, m: Record<string, number>): string {
  switch (w) {
    case 'http':
      return `${m.rps!.toFixed(0)} req/s, p50 ${m.p50!.toFixed(3)} ms, p99 ${m.p99!.toFixed(3)} ms`;
    case 'latency':
      return `${m.rps!.toFixed(0)} req/s fixed, p50 ${m.p50!.toFixed(3)} ms, p99 ${m.p99!.toFixed(3)} ms, ${m.late} sent late`;
    case 'bulk1':
    case 'bulk8':
      return `${m.gbps!.toFixed(2)} Gbit/s`;
    case 'connrate':
      return `${m.cps!.toFixed(0)} conn/s`;
  }
}

export async function runOne(env: BenchEnv, w: WorkloadName, c: ConfigName, rep: number, p: LoadParams, warmup: boolean): Promise<TrafficSample> {
  const s = env.configs.get(c)!;
  const startedAt = new Date().toISOString();
  const cgroups = Object.values(env.cgroups);
  const before = snapshot(s.fwdPids, cgroups);
  let rssPeakKb = rssKb(s.fwdPids);
  const sampler = setInterval(() => (rssPeakKb = Math.max(rssPeakKb, rssKb(s.fwdPids))), 200);
  const r = await runLoad(w, s.clientAt, s.server.ip, p).finally(() => clearInterval(sampler));
  const cpu = delta(before, snapshot(s.fwdPids, cgroups));
  const endKb = rssKb(s.fwdPids);
  return {
    rep,
    warmup,
    disturbed: cpu.outside / cpu.wall > DISTURBED_CPUS,
    workload: w,
    config: c,
    metrics: r.metrics,
    work: r.work,
    errors: r.errors,
    cpu,
    rssKb: endKb,
    rssPeakKb: Math.max(rssPeakKb, endKb),
    conntrack: await env.conntrackEntries(c),
    command: r.command,
    startedAt,
  };
}

export async function runTraffic(env: BenchEnv, plan: TrafficPlan, progress: Progress): Promise<TrafficSample[]> {
  const samples: TrafficSample[] = [];
  const total = plan.reps * WORKLOADS.length * env.names.length;
  const t0 = performance.now();
  const clock = (): string => {
    const s = Math.round((performance.now() - t0) / 1000);
    return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
  };
  if (plan.warmupSeconds > 0) {
    progress(`warm-up: every workload once per configuration, ${plan.warmupSeconds} s each`);
    for (const w of WORKLOADS) {
      for (const c of env.names) samples.push(await runOne(env, w, c, 0, { ...plan, seconds: plan.warmupSeconds }, true));
    }
  }
  let done = 0;
  let retries = 0;
  const tReps = performance.now();
  for (let rep = 1; rep <= plan.reps; rep++) {
    for (const w of WORKLOADS) {
      for (const c of env.names) {
        let s = await runOne(env, w, c, rep, plan, false);
        if (s.disturbed && retries < plan.maxRetries) {
          retries++;
          progress(`  ${w} ${c}: ${(s.cpu.outside / s.cpu.wall).toFixed(1)} CPUs of other work on the host during the run; running it again`);
          samples.push(s);
          s = await runOne(env, w, c, rep, plan, false);
        }
        samples.push(s);
        done++;
        const eta = Math.round(((performance.now() - tReps) / done) * (total - done) / 1000);
        const errs = s.errors ? `, ${s.errors} errors` : '';
        const busy =
          (s.cpu.ksoftirqd / s.cpu.wall > 0.2 ? `, ksoftirqd ${(s.cpu.ksoftirqd / s.cpu.wall).toFixed(1)} CPUs` : '') +
          (s.cpu.outside / s.cpu.wall > 0.2 ? `, other load ${(s.cpu.outside / s.cpu.wall).toFixed(1)} CPUs` : '');
        progress(
          `[${String(done).padStart(3)}/${total} ${clock()} eta ${eta}s] rep ${rep}/${plan.reps} ${w.padEnd(8)} ${c.padEnd(14)} ` +
            `${headline(w, s.metrics)}${errs}${busy}`,
        );
      }
    }
  }
  return samples;
}

/** Seconds the forwarders are left idle after the last run before their RSS "after the load" is read. */
export const AFTER_LOAD_SECONDS = 15;

/**
 * The proxy's RSS per proxy configuration once every run is over and it has been idle for
 * `seconds` (it gives memory back a few seconds after a load ends), KiB. Empty without a proxy
 * row (then nothing is waited for).
 */
export async function rssAfterLoad(env: BenchEnv, seconds = AFTER_LOAD_SECONDS): Promise<Partial<Record<ConfigName, number>>> {
  const out: Partial<Record<ConfigName, number>> = {};
  const meshed = [...env.configs.values()].filter((c) => c.name.startsWith('proxy-') && c.fwdPids.length > 0);
  if (meshed.length === 0) return out;
  await new Promise((r) => setTimeout(r, seconds * 1000));
  for (const c of meshed) out[c.name] = rssKb(c.fwdPids);
  return out;
}
