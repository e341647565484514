/**
 * CPU and memory accounting from /proc (no hardware counters on this machine kind): a process's
 * user/system time from /proc/<pid>/stat, the host's softirq and busy time from /proc/stat, the
 * NET_RX/NET_TX softirq counts from /proc/softirqs, RSS from /proc/<pid>/status. The parsers are
 * pure so they can be tested on captured text.
 */
import { readdirSync, readFileSync } from 'node:fs';

/** Clock ticks per second for /proc times (USER_HZ; 100 on every Linux this runs on). */
export const USER_HZ = 100;

export interface ProcTimes {
  /** seconds */
  user: number;
  sys: number;
}

/** Fields 14 and 15 of /proc/<pid>/stat; the command name may contain spaces and parentheses. */
export function parsePidStat(text: string): ProcTimes {
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3 (state): utime is field 14, stime field 15
  return { user: Number(rest[11]) / USER_HZ, sys: Number(rest[12]) / USER_HZ };
}

export interface HostTimes {
  /** seconds of softirq time summed over CPUs */
  softirq: number;
  /** seconds of non-idle time summed over CPUs */
  busy: number;
  /** seconds of irq + softirq time summed over CPUs (charged to no task) */
  irq: number;
}

/** The aggregate "cpu" line of /proc/stat. */
export function parseProcStat(text: string): HostTimes {
  const line = text.split('\n').find((l) => l.startsWith('cpu '));
  if (!line) throw new Error('no aggregate cpu line in /proc/stat');
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = v;
  return { softirq: softirq / USER_HZ, busy: (user + nice + system + irq + softirq + steal) / USER_HZ, irq: (irq + softirq) / USER_HZ };
}

/** NET_RX + NET_TX softirq counts, summed over CPUs. */
export function parseSoftirqs(text: string): number {
  let n = 0;
  for (const line of text.split('\n')) {
    const m = /^\s*(NET_RX|NET_TX):\s+(.*)$/.exec(line);
    if (m) n += m[2]!.trim().split(/\s+/).map(Number).reduce((a, b) => a + b, 0);
  }
  return n;
}

/** The kernel's view of a process's memory, KiB (/proc/<pid>/status). */
export interface ProcMemory {
  rssKb: number;
  /** RssAnon: heap, stacks, malloc arenas, V8's heap */
  anonKb: number;
  /** RssFile: the node binary's and the libraries' pages */
  fileKb: number;
  /** VmHWM: the highest RSS so far */
  hwmKb: number;
}

/** The memory lines of /proc/<pid>/status (0 for a line that is absent, or no text). */
export function parseProcMemory(text: string): ProcMemory {
  const kb = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+)\\s+kB`, 'm').exec(text)?.[1] ?? 0);
  return { rssKb: kb('VmRSS'), anonKb: kb('RssAnon'), fileKb: kb('RssFile'), hwmKb: kb('VmHWM') };
}

/** usage_usec of a cgroup2 cpu.stat, in seconds (0 when absent). */
export function parseCgroupUsage(text: string): number {
  const m = /^usage_usec (\d+)/m.exec(text);
  return m ? Number(m[1]) / 1e6 : 0;
}

/** pids of the ksoftirqd/N threads: softirq work the kernel defers runs there, as task time. */
export function ksoftirqdPids(): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    if (readOr(`/proc/${d}/comm`, '').startsWith('ksoftirqd/')) out.push(Number(d));
  }
  return out;
}

let ksoftirqd: number[] | null = null;

export interface CpuSnapshot {
  procs: ProcTimes;
  /** user+system seconds of the ksoftirqd threads */
  ksoftirqd: number;
  /** CPU seconds used by the bench's own cgroups */
  ours: number;
  host: HostTimes;
  netSoftirqs: number;
  at: number;
}

export interface CpuDelta {
  /** forwarder user / system seconds (all forwarders of the configuration) */
  fwdUser: number;
  fwdSys: number;
  /** host softirq seconds, all CPUs: softirq time in /proc/stat plus the ksoftirqd threads' time
   * (which this kernel charges as their system time) */
  softirq: number;
  /** the ksoftirqd part of `softirq`: deferred softirq work, competing with tasks for the CPU */
  ksoftirqd: number;
  /** host busy seconds, all CPUs (load generator, app, forwarders, kernel) */
  hostBusy: number;
  /** task time outside the bench's cgroups and ksoftirqd (host busy minus irq/softirq, ksoftirqd
   * and ours): other work on the machine, and steal; a noise gauge */
  outside: number;
  /** NET_RX + NET_TX softirqs raised */
  netSoftirqs: number;
  /** wall seconds */
  wall: number;
}

function readOr(path: string, fallback: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return fallback;
  }
}

/** Reads the counters now; `pids` are the forwarders (may be empty), `cgroups` the bench's own. */
export function snapshot(pids: number[], cgroups: string[]): CpuSnapshot {
  const times = (p: number): ProcTimes => parsePidStat(readOr(`/proc/${p}/stat`, 'x (x) S' + ' 0'.repeat(20)));
  const procs = pids.map(times);
  ksoftirqd ??= ksoftirqdPids();
  return {
    ksoftirqd: ksoftirqd.map(times).reduce((a, t) => a + t.user + t.sys, 0),
    procs: { user: procs.reduce((a, p) => a + p.user, 0), sys: procs.reduce((a, p) => a + p.sys, 0) },
    ours: cgroups.reduce((a, cg) => a + parseCgroupUsage(readOr(`${cg}/cpu.stat`, '')), 0),
    host: parseProcStat(readFileSync('/proc/stat', 'utf8')),
    netSoftirqs: parseSoftirqs(readFileSync('/proc/softirqs', 'utf8')),
    at: performance.now(),
  };
}

export function delta(a: CpuSnapshot, b: CpuSnapshot): CpuDelta {
  return {
    fwdUser: b.procs.user - a.procs.user,
    fwdSys: b.procs.sys - a.procs.sys,
    softirq: b.host.softirq - a.host.softirq + (b.ksoftirqd - a.ksoftirqd),
    ksoftirqd: b.ksoftirqd - a.ksoftirqd,
    hostBusy: b.host.busy - a.host.busy,
    outside: Math.max(0, b.host.busy - a.host.busy - (b.host.irq - a.host.irq) - (b.ksoftirqd - a.ksoftirqd) - (b.ours - a.ours)),
    netSoftirqs: b.netSoftirqs - a.netSoftirqs,
    wall: (b.at - a.at) / 1000,
  };
}

/** Summed RSS of the processes, KiB. */
export function rssKb(pids: number[]): number {
  return pids.reduce((a, p) => a + parseProcMemory(readOr(`/proc/${p}/status`, '')).rssKb, 0);
}
