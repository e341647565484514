/**
 * `inpod bench [--quick] [--pods N] [--out DIR] [--reps R] [--seconds S] [--no-pin]`: the
 * capture-only rows of issue 7 (no mesh vs capture with iptables vs capture with eBPF, the same
 * native forwarder standing in for the proxy; with --configs, also between IPv6-only pods) and
 * the enrollment timings, on one host. Writes a markdown report, the JSON of every sample and an
 * SVG chart under bench/results/ (or --out).
 * Everything it creates carries a per-run prefix and is removed at the end, also on Ctrl-C.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import { MeshError } from '../util/errors.js';
import { ALL_CONFIGS, BUILD_DIR, BenchEnv, CONFIGS, CONNRATE, FWD, FWD_COMMAND, KNOWN_CONFIGS, OPTIONAL_CONFIGS, V6_CONFIGS, type ConfigName } from './env.js';
import { rssAfterLoad, runTraffic, type TrafficPlan, type TrafficSample } from './traffic.js';
import { runEnrollment, type EnrollPlan, type EnrollSample, type PodState } from './enroll.js';
import { rows as summarize, type Row } from './stats.js';
import { headlineRatios, markdown, type RunInfo } from './report.js';
import { chartSvg } from './chart.js';
import { describe } from './procs.js';
import { DEFAULT_MEMORY_PLAN, runMemory, type MemoryPlan, type MemoryResult } from './memory.js';

export interface BenchOptions {
  quick: boolean;
  traffic: TrafficPlan;
  enroll: EnrollPlan | null;
  out: string;
  pin: boolean;
  /** also measure the real proxy (HBONE) under each backend */
  proxy?: boolean;
  /** the configurations to run (default: by `proxy`) */
  configs?: ConfigName[];
  /** the memory scenario (--memory), or null */
  memory?: MemoryPlan | null;
  /** the `inpod` entry the proxy rows start (--proxy-cli; default: this build's) */
  proxyCli?: string;
  argv: string[];
  progress?: (line: string) => void;
}

export interface BenchResult {
  /** the per-run prefix every created name carried */
  prefix: string;
  markdownPath: string;
  jsonPath: string;
  svgPath: string;
  rows: Row[];
  traffic: TrafficSample[];
  enroll: { samples: EnrollSample[]; state: PodState[] };
  memory: MemoryResult | null;
}

export const BENCH_USAGE = `  inpod bench [--quick] [--proxy | --no-proxy] [--configs A,B] [--pods N] [--out DIR] [--reps R] [--seconds S] [--no-pin]
                      no mesh vs capture-only iptables vs capture-only eBPF vs the real proxy (HBONE
                      under each backend; passthrough with and without the kernel fast path; not in
                      --quick unless --proxy), and enrollment timing. --configs runs only those rows
                      (${KNOWN_CONFIGS.join(', ')}; ${OPTIONAL_CONFIGS.join(', ')} only when named;
                      ${V6_CONFIGS.join(', ')}: the capture-only rows between IPv6-only pods)
                      [--memory] the proxy's memory with 100 pods and 1000 idle HBONE connections, and after
                      they close (alone, under 2 minutes; with --configs, beside those rows)
                      [--memory-byte-path node|native] the memory scenario's proxy on that HBONE byte path (default node)
                      [--proxy-cli PATH] the proxy rows and --memory run this build's dist/cli/main.js instead`;

export const DEFAULT_OUT = resolve(BUILD_DIR, '..', 'bench', 'results');

/** Turns the command line into a plan (pure; --quick: under 2 minutes, default: under 15). */
export function parseBenchArgs(argv: string[]): BenchOptions {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean', default: false },
      pods: { type: 'string' },
      out: { type: 'string' },
      reps: { type: 'string' },
      seconds: { type: 'string' },
      'no-pin': { type: 'boolean', default: false },
      proxy: { type: 'boolean' },
      'no-proxy': { type: 'boolean', default: false },
      configs: { type: 'string' },
      memory: { type: 'boolean', default: false },
      'memory-byte-path': { type: 'string', default: 'node' },
      'proxy-cli': { type: 'string' },
    },
    strict: true,
  });
  const int = (v: string | undefined, what: string, min: number): number | undefined => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new MeshError('INPOD_ERR_USAGE', `--${what} ${v}: want an integer >= ${min}`);
    return n;
  };
  const quick = values.quick!;
  // The full run includes the real proxy's rows (3 repetitions: about 17 minutes);
  // --quick leaves them out to stay under 2 minutes unless --proxy asks for them.
  const proxy = values['no-proxy'] ? false : values.proxy ?? !quick;
  // --memory alone runs the memory scenario only
  const memoryOnly = values.memory! && !values.configs;
  let configs: ConfigName[] = memoryOnly ? [] : proxy ? ALL_CONFIGS : CONFIGS;
  if (values.configs) {
    const asked = values.configs.split(',').map((c) => c.trim()).filter(Boolean);
    const bad = asked.filter((c) => !(KNOWN_CONFIGS as string[]).includes(c));
    if (bad.length || !asked.length) throw new MeshError('INPOD_ERR_USAGE', `--configs ${values.configs}: choose from ${KNOWN_CONFIGS.join(', ')}`);
    configs = KNOWN_CONFIGS.filter((c) => asked.includes(c));
  }
  const memoryBytePath = values['memory-byte-path'];
  if (memoryBytePath !== 'node' && memoryBytePath !== 'native') throw new MeshError('INPOD_ERR_USAGE', `--memory-byte-path ${memoryBytePath}: want node or native`);
  const pods = int(values.pods, 'pods', 1);
  const defaults = quick ? [10, 50] : [10, 100, 250];
  const levels = pods === undefined ? defaults : [...new Set([...defaults.filter((n) => n < pods), pods])];
  return {
    quick,
    traffic: {
      reps: int(values.reps, 'reps', 1) ?? (quick ? 2 : proxy ? 3 : 5),
      seconds: int(values.seconds, 'seconds', 1) ?? (quick ? 2 : 8),
      warmupSeconds: quick ? 1 : 3,
      httpConns: 16,
      // Istio's data-plane latency figures are at 1,000 requests/s (fortio, 1 KiB, HTTP/1.1)
      latencyRate: 1000,
      connThreads: 8,
      maxRetries: quick ? 3 : 10,
    },
    // a run limited with --configs is about those traffic rows: no enrollment rows
    enroll: values.configs || values.memory ? null : { levels, samples: quick ? 5 : 20 },
    out: values.out ? resolve(values.out) : DEFAULT_OUT,
    pin: !values['no-pin'],
    proxy: configs.some((c) => c.startsWith('proxy-')),
    configs,
    memory: values.memory ? { ...DEFAULT_MEMORY_PLAN, bytePath: memoryBytePath } : null,
    ...(values['proxy-cli'] ? { proxyCli: resolve(values['proxy-cli']) } : {}),
    argv,
  };
}

/** First line a tool prints about itself (some print it on stderr, some exit non-zero). */
function firstLine(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  return `${r.stdout ?? ''}${r.stderr ?? ''}`.split('\n')[0]!.trim() || `${cmd}: unknown`;
}

function hostInfo(): Record<string, string> {
  const os = readFileSync('/etc/os-release', 'utf8').match(/^PRETTY_NAME="?([^"\n]*)/m)?.[1] ?? 'unknown';
  return {
    kernel: firstLine('uname', ['-srm']),
    os,
    cpu: `${cpus().length} × ${cpus()[0]?.model ?? 'unknown'}`,
    memory: `${(totalmem() / 2 ** 30).toFixed(1)} GiB`,
    'load average at start': loadavg().map((x) => x.toFixed(2)).join(' '),
    versions: [
      `node ${process.version}`,
      firstLine('wrk', ['-v']).replace(/ Copyright.*/, ''),
      firstLine('iperf3', ['--version']).replace(/ \(.*/, ''),
      firstLine('nginx', ['-v']).replace('nginx version: ', ''),
      firstLine('gcc', ['--version']),
      firstLine('iptables', ['--version']),
      firstLine('bpftool', ['version']),
    ].join('; '),
  };
}

/** Fails early, with the fix, when a tool is missing or we are not root. */
function preflight(): void {
  if (process.getuid?.() !== 0) throw new MeshError('INPOD_ERR_USAGE', 'inpod bench needs root (network namespaces, cgroups, eBPF)');
  for (const f of [FWD, CONNRATE]) {
    if (!existsSync(f)) throw new MeshError('INPOD_ERR_USAGE', `${f} is missing: run "make build" (it compiles bench/*.c with gcc)`);
  }
  for (const [tool, pkg] of [['wrk', 'wrk'], ['iperf3', 'iperf3'], ['nginx', 'nginx-light'], ['nsenter', 'util-linux'], ['taskset', 'util-linux'], ['bpftool', 'bpftool']]) {
    try {
      execFileSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' });
    } catch {
      throw new MeshError('INPOD_ERR_USAGE', `${tool} is not installed: apt-get install ${pkg} (or "make deps")`);
    }
  }
}

export async function runBench(o: BenchOptions): Promise<BenchResult> {
  const say = o.progress ?? ((s: string) => void process.stdout.write(`${s}\n`));
  preflight();
  const prefix = `b${randomBytes(2).toString('hex')}`;
  const env = new BenchEnv(prefix, o.pin, o.configs ?? (o.proxy ? ALL_CONFIGS : CONFIGS), o.proxyCli);
  const started = new Date();
  const t0 = performance.now();
  let interrupted: NodeJS.Signals | null = null;
  const onSignal = (sig: NodeJS.Signals): void => {
    interrupted = sig;
    say(`${sig}: removing everything this run created (prefix ${prefix})`);
    void env.destroy().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const host = hostInfo();
    say(`inpod bench${o.quick ? ' --quick' : ''}: prefix ${prefix}, ${host.kernel}, ${host.cpu}`);
    await env.setup(say);
    const any = [...env.configs.values()][0];
    const capture = env.configs.get('ebpf') ?? env.configs.get('iptables') ?? env.configs.get('ebpf6') ?? env.configs.get('iptables6');
    const daemonCommands = [
      ...(capture ? [describe(capture.clientAt, FWD_COMMAND) + '   # client and server pod of each capture row'] : []),
      ...(any ? [describe(any.serverAt, ['nginx', '-p', 'DIR', '-c', 'DIR/nginx.conf', '-e', 'DIR/error.log']) +
        '   # master_process off, 1 worker, static 1 KiB file',
      describe(any.serverAt, ['iperf3', '-s', '-p', '5201'])] : []),
    ];
    const traffic = env.names.length ? await runTraffic(env, o.traffic, say) : [];
    const afterLoad = await rssAfterLoad(env);
    const enroll = o.enroll ? await runEnrollment(env, o.enroll, say) : { samples: [], state: [] };
    const memory = o.memory ? await runMemory(env, o.memory, say) : null;
    host['load average at end'] = loadavg().map((x) => x.toFixed(2)).join(' ');
    const rows = summarize(traffic);
    const info: RunInfo = {
      argv: o.argv,
      quick: o.quick,
      startedAt: started.toISOString(),
      durationS: (performance.now() - t0) / 1000,
      reps: o.traffic.reps,
      seconds: o.traffic.seconds,
      warmupSeconds: o.traffic.warmupSeconds,
      httpConns: o.traffic.httpConns,
      latencyRate: o.traffic.latencyRate,
      connThreads: o.traffic.connThreads,
      pinned: o.pin,
      enrollLevels: o.enroll?.levels ?? [],
      enrollSamples: o.enroll?.samples ?? 0,
      host,
      daemonCommands,
    };
    mkdirSync(o.out, { recursive: true });
    const stamp = started.toISOString().replace(/[:.]/g, '-').slice(0, 19);
    const base = join(o.out, `${stamp}-${o.quick ? 'quick' : 'full'}`);
    const res: BenchResult = { prefix, markdownPath: `${base}.md`, jsonPath: `${base}.json`, svgPath: `${base}.svg`, rows, traffic, enroll, memory };
    writeFileSync(res.markdownPath, markdown(info, rows, traffic, enroll.samples, enroll.state, memory, afterLoad));
    writeFileSync(res.jsonPath, `${JSON.stringify({ info, configurations: env.names, rows, ratios: headlineRatios(rows), traffic, rssAfterLoadKb: afterLoad, enrollment: enroll, memory }, null, 1)}\n`);
    writeFileSync(res.svgPath, chartSvg(rows, `inpod bench (${stamp}${o.quick ? ', quick' : ''})`));
    say(`report: ${res.markdownPath}\nsamples: ${res.jsonPath}\nchart: ${res.svgPath}`);
    return res;
  } catch (e) {
    if (interrupted) throw new MeshError('INPOD_ERR_USAGE', `interrupted by ${interrupted}; everything created was removed`);
    throw e;
  } finally {
    say('cleaning up');
    await env.destroy();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/** The `inpod bench` entry point (wired from ts/cli/main.ts). */
export async function bench(argv: string[]): Promise<void> {
  await runBench(parseBenchArgs(argv));
}
