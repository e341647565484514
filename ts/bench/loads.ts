/**
 * The load generators, run in the client pod, and the parsers of their output (pure, tested on
 * captured text): wrk for requests/s and latency over kept-alive connections at saturation,
 * inpod-latency for latency at a fixed rate below it (as Istio measures its data plane), iperf3 for
 * bulk throughput, inpod-connrate for new connections per second.
 */
import { CONNRATE, HTTP_PORT, IPERF_PORT, LATENCY } from './env.js';
import { describe, runIn, type Placement } from './procs.js';

export type WorkloadName = 'http' | 'latency' | 'bulk1' | 'bulk8' | 'connrate';
export const WORKLOADS: WorkloadName[] = ['http', 'latency', 'bulk1', 'bulk8', 'connrate'];
export const WORKLOAD_LABEL: Record<WorkloadName, string> = {
  http: 'HTTP 1 KiB, kept-alive (wrk)',
  latency: 'HTTP 1 KiB, kept-alive, at a fixed rate (inpod-latency)',
  bulk1: 'bulk, 1 stream (iperf3)',
  bulk8: 'bulk, 8 streams (iperf3)',
  connrate: 'new connection per request (inpod-connrate)',
};

export interface LoadResult {
  /** what the load generator measured */
  metrics: Record<string, number>;
  /** units of work done, for CPU per unit: requests, bytes or connections */
  work: number;
  errors: number;
  command: string;
}

export interface LoadParams {
  seconds: number;
  /** wrk connections, and inpod-latency's */
  httpConns: number;
  /** inpod-latency's requests/s over its httpConns connections */
  latencyRate: number;
  /** connrate threads */
  connThreads: number;
}

/** wrk durations: "812.00us", "1.23ms", "2.00s", "1.5m". Returns milliseconds. */
export function parseDurationMs(s: string): number {
  const m = /^([\d.]+)(us|ms|s|m)$/.exec(s.trim());
  if (!m) throw new Error(`unrecognised wrk duration "${s}"`);
  const v = Number(m[1]);
  return m[2] === 'us' ? v / 1000 : m[2] === 'ms' ? v : m[2] === 's' ? v * 1000 : v * 60_000;
}

/** The figures of `wrk --latency` output. */
export function parseWrk(out: string): { rps: number; p50: number; p90: number; p99: number; requests: number; errors: number } {
  const pct = (p: string): number => {
    const m = new RegExp(`^\\s*${p}%\\s+(\\S+)`, 'm').exec(out);
    if (!m) throw new Error(`wrk output has no ${p}% latency:\n${out}`);
    return parseDurationMs(m[1]!);
  };
  const rps = /^Requests\/sec:\s+([\d.]+)/m.exec(out);
  const total = /^\s*(\d+) requests in/m.exec(out);
  if (!rps || !total) throw new Error(`wrk output has no request rate:\n${out}`);
  let errors = 0;
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  if (sock) errors += sock.slice(1).map(Number).reduce((a, b) => a + b, 0);
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(out);
  if (non2xx) errors += Number(non2xx[1]);
  return { rps: Number(rps[1]), p50: pct('50'), p90: pct('90'), p99: pct('99'), requests: Number(total[1]), errors };
}

/** iperf3 -J: received rate and bytes summed over streams. */
export function parseIperf(json: string): { gbps: number; bytes: number; retransmits: number } {
  const r = JSON.parse(json) as {
    error?: string;
    end?: { sum_received?: { bits_per_second: number; bytes: number }; sum_sent?: { retransmits?: number } };
  };
  if (r.error) throw new Error(`iperf3: ${r.error}`);
  const rx = r.end?.sum_received;
  if (!rx) throw new Error('iperf3 output has no end.sum_received');
  return { gbps: rx.bits_per_second / 1e9, bytes: rx.bytes, retransmits: r.end?.sum_sent?.retransmits ?? 0 };
}

/** inpod-connrate's JSON line. */
export function parseConnrate(out: string): { cps: number; conns: number; errors: number; p50: number; p99: number } {
  const r = JSON.parse(out.trim().split('\n').pop() ?? '{}') as { conns: number; errors: number; seconds: number; p50_us: number; p99_us: number };
  if (!(r.seconds > 0)) throw new Error(`inpod-connrate gave no result: ${out}`);
  return { cps: r.conns / r.seconds, conns: r.conns, errors: r.errors, p50: r.p50_us / 1000, p99: r.p99_us / 1000 };
}

/** inpod-latency's JSON line (microseconds in, milliseconds out). */
export function parseLatency(out: string): { rps: number; requests: number; errors: number; late: number; p50: number; p90: number; p99: number } {
  const r = JSON.parse(out.trim().split('\n').pop() ?? '{}') as { requests: number; errors: number; late: number; seconds: number; p50_us: number; p90_us: number; p99_us: number };
  if (!(r.seconds > 0) || !(r.requests > 0)) throw new Error(`inpod-latency gave no result: ${out}`);
  return { rps: r.requests / r.seconds, requests: r.requests, errors: r.errors, late: r.late, p50: r.p50_us / 1000, p90: r.p90_us / 1000, p99: r.p99_us / 1000 };
}

/** Builds the command line of a workload against the server IP (IPv4 or IPv6). */
export function loadArgv(w: WorkloadName, serverIp: string, p: LoadParams): string[] {
  const secs = Math.max(1, Math.round(p.seconds));
  const host = serverIp.includes(':') ? `[${serverIp}]` : serverIp; // RFC 3986: an IPv6 literal in brackets
  switch (w) {
    case 'http':
      return ['wrk', '-t1', `-c${p.httpConns}`, `-d${secs}s`, '--latency', `http://${host}:${HTTP_PORT}/1k`];
    case 'latency':
      return [LATENCY, serverIp, String(HTTP_PORT), String(secs), String(p.latencyRate), String(p.httpConns), '/1k'];
    case 'bulk1':
    case 'bulk8':
      return ['iperf3', '-c', serverIp, '-p', String(IPERF_PORT), '-t', String(secs), '-P', w === 'bulk1' ? '1' : '8', '-J'];
    case 'connrate':
      return [CONNRATE, serverIp, String(HTTP_PORT), String(p.seconds), String(p.connThreads), '/1k'];
  }
}

/**
 * iperf3's server runs one test at a time and takes a moment to let the last one go: a client
 * that comes right after (a disturbed run repeated at once) is told the server is busy, or has
 * its control connection reset, before any byte is measured. Pure.
 */
export function iperfNotReady(out: string): boolean {
  try {
    const e = (JSON.parse(out) as { error?: string }).error ?? '';
    return /server is busy|connection reset by peer/i.test(e);
  } catch {
    return false;
  }
}

/** How often a bulk load asks an iperf3 server that is not ready yet, a second apart. */
const IPERF_ATTEMPTS = 10;

/** Runs one workload from the client placement and returns its figures. */
export async function runLoad(w: WorkloadName, at: Placement, serverIp: string, p: LoadParams): Promise<LoadResult> {
  const argv = loadArgv(w, serverIp, p);
  let r = await runIn(at, argv, (p.seconds + 30) * 1000);
  for (let n = 1; w.startsWith('bulk') && n < IPERF_ATTEMPTS && iperfNotReady(r.stdout); n++) {
    await new Promise((done) => setTimeout(done, 1000));
    r = await runIn(at, argv, (p.seconds + 30) * 1000);
  }
  const command = describe(at, argv);
  if (r.code !== 0 && !(w.startsWith('bulk') && r.stdout.trim().startsWith('{'))) {
    throw new Error(`${argv[0]} failed (${r.code}): ${(r.stderr || r.stdout).trim().slice(0, 2000)}`);
  }
  switch (w) {
    case 'http': {
      const x = parseWrk(r.stdout);
      return { metrics: { rps: x.rps, p50: x.p50, p90: x.p90, p99: x.p99 }, work: x.requests, errors: x.errors, command };
    }
    case 'latency': {
      const x = parseLatency(r.stdout);
      return { metrics: { rps: x.rps, p50: x.p50, p90: x.p90, p99: x.p99, late: x.late }, work: x.requests, errors: x.errors, command };
    }
    case 'bulk1':
    case 'bulk8': {
      const x = parseIperf(r.stdout);
      return { metrics: { gbps: x.gbps, retransmits: x.retransmits }, work: x.bytes, errors: 0, command };
    }
    case 'connrate': {
      const x = parseConnrate(r.stdout);
      return { metrics: { cps: x.cps, p50: x.p50, p99: x.p99 }, work: x.conns, errors: x.errors, command };
    }
  }
}
