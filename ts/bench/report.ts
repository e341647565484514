/**
 * The markdown report: the figures per configuration with their spread, the ratios against no
 * mesh and eBPF against iptables, CPU per unit of work, the enrollment rows and per-pod kernel
 * state, and how it was measured (host, versions, commands, repetitions). Pure given its input.
 */
import { CONFIG_LABEL, KNOWN_CONFIGS, V6_CONFIGS, backendOf, type ConfigName } from './env.js';
import { PORTS } from '../istio.js';
import { WORKLOADS, WORKLOAD_LABEL, type WorkloadName } from './loads.js';
import { PRIMARY, percentile, ratio, spreadPct, unitOf, type Ratio, type Row, type Stat } from './stats.js';
import type { EnrollSample, PodState } from './enroll.js';
import { AFTER_LOAD_SECONDS, DISTURBED_CPUS, type TrafficSample } from './traffic.js';
import type { MemoryResult } from './memory.js';

export interface RunInfo {
  argv: string[];
  quick: boolean;
  startedAt: string;
  durationS: number;
  reps: number;
  seconds: number;
  warmupSeconds: number;
  httpConns: number;
  /** inpod-latency's fixed rate (a run recorded before it: absent) */
  latencyRate?: number;
  connThreads: number;
  pinned: boolean;
  enrollLevels: number[];
  enrollSamples: number;
  host: Record<string, string>;
  daemonCommands: string[];
}

const num = (v: number, digits = 0): string =>
  Number.isFinite(v) ? v.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits }) : 'n/a';

function cell(s: Stat | undefined, digits = 0): string {
  if (!s || !Number.isFinite(s.median)) return 'n/a';
  return s.n > 1 ? `${num(s.median, digits)} ±${spreadPct(s).toFixed(0)}%` : num(s.median, digits);
}

function rcell(r: Ratio | null): string {
  if (!r || !Number.isFinite(r.value)) return 'n/a';
  return `**${r.value.toFixed(2)}** (${r.low.toFixed(2)}–${r.high.toFixed(2)})`;
}

function table(head: string[], body: string[][]): string {
  return [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`, ...body.map((r) => `| ${r.join(' | ')} |`)].join('\n');
}

/** The configurations present in the rows, in the run's order. */
export function configsOf(rows: Row[]): ConfigName[] {
  return KNOWN_CONFIGS.filter((c) => rows.some((r) => r.config === c));
}

export function find(rows: Row[], w: WorkloadName, c: ConfigName): Row | undefined {
  return rows.find((r) => r.workload === w && r.config === c);
}

/** The figures compared across configurations: [label, workload, picker, digits]. */
function figures(): [string, WorkloadName, (r: Row) => Stat | undefined, number][] {
  const out: [string, WorkloadName, (r: Row) => Stat | undefined, number][] = [];
  out.push(['requests/s', 'http', (r) => r.metrics.rps, 0]);
  for (const p of ['p50', 'p90', 'p99']) out.push([`latency ${p} (ms)`, 'http', (r) => r.metrics[p], 3]);
  for (const p of ['p50', 'p90', 'p99']) out.push([`latency ${p} at a fixed rate (ms)`, 'latency', (r) => r.metrics[p], 3]);
  out.push(['Gbit/s, 1 stream', 'bulk1', (r) => r.metrics.gbps, 2]);
  out.push(['Gbit/s, 8 streams', 'bulk8', (r) => r.metrics.gbps, 2]);
  out.push(['new connections/s', 'connrate', (r) => r.metrics.cps, 0]);
  for (const w of WORKLOADS) out.push([`host CPU s per ${unitOf(w).label} (${w})`, w, (r) => r.costs.hostBusy, 3]);
  return out;
}

export interface HeadlineRatios {
  iptablesVsNone: Ratio | null;
  ebpfVsNone: Ratio | null;
  ebpfVsIptables: Ratio | null;
  proxyEbpfVsIptables: Ratio | null;
  /** the proxy (HBONE) over capture alone, both eBPF: what the proxy itself costs (issue 19's goals) */
  proxyVsCapture: Ratio | null;
  fastVsUserspace: Ratio | null;
  h2ZtunnelVsNode: Ratio | null;
  /** the native HBONE byte path against Node's (proxy eBPF both) */
  nativeVsNode: Ratio | null;
  /** the native byte path against capture alone */
  nativeVsCapture: Ratio | null;
  /** the same three capture-only ratios between IPv6-only pods (the *6 rows) */
  iptablesVsNone6: Ratio | null;
  ebpfVsNone6: Ratio | null;
  ebpfVsIptables6: Ratio | null;
}

/** Ratios of the headline figures, for the README and the JSON. */
export function headlineRatios(rows: Row[]): Record<string, HeadlineRatios> {
  const out: ReturnType<typeof headlineRatios> = {};
  for (const [label, w, pick] of figures()) {
    const g = (c: ConfigName): Stat | undefined => {
      const r = find(rows, w, c);
      return r ? pick(r) : undefined;
    };
    const rt = (a?: Stat, b?: Stat): Ratio | null => (a && b ? ratio(a, b) : null);
    out[label] = { iptablesVsNone: rt(g('iptables'), g('nomesh')), ebpfVsNone: rt(g('ebpf'), g('nomesh')), ebpfVsIptables: rt(g('ebpf'), g('iptables')), proxyEbpfVsIptables: rt(g('proxy-ebpf'), g('proxy-iptables')), proxyVsCapture: rt(g('proxy-ebpf'), g('ebpf')), fastVsUserspace: rt(g('proxy-fastpath'), g('proxy-passthrough')), h2ZtunnelVsNode: rt(g('proxy-ebpf'), g('proxy-h2default')),
      nativeVsNode: rt(g('proxy-native'), g('proxy-ebpf')), nativeVsCapture: rt(g('proxy-native'), g('ebpf')),
      iptablesVsNone6: rt(g('iptables6'), g('nomesh6')), ebpfVsNone6: rt(g('ebpf6'), g('nomesh6')), ebpfVsIptables6: rt(g('ebpf6'), g('iptables6')) };
  }
  return out;
}

/** a − b for two stats: the medians' difference and the widest one of the extremes. */
function difference(a: Stat, b: Stat): string {
  return `**${(a.median - b.median).toFixed(3)}** (${(a.min - b.max).toFixed(3)}–${(a.max - b.min).toFixed(3)})`;
}

/** Per configuration with a mesh: p50 latency over no mesh's of the same family, both loads. */
export function addedLatency(rows: Row[]): string[][] {
  const out: string[][] = [];
  for (const c of configsOf(rows)) {
    const base: ConfigName = V6_CONFIGS.includes(c) ? 'nomesh6' : 'nomesh';
    if (c === base) continue;
    const cellOf = (w: WorkloadName): string => {
      const a = find(rows, w, c)?.metrics.p50;
      const b = find(rows, w, base)?.metrics.p50;
      return a && b ? difference(a, b) : 'n/a';
    };
    if (!find(rows, 'http', base) && !find(rows, 'latency', base)) continue;
    out.push([CONFIG_LABEL[c], cellOf('http'), cellOf('latency')]);
  }
  return out;
}

function trafficSection(rows: Row[], afterLoad: Partial<Record<ConfigName, number>>): string {
  const head = ['configuration', 'requests/s', 'p50 ms', 'p90 ms', 'p99 ms', 'fixed rate: p50 ms', 'p90 ms', 'p99 ms', 'Gbit/s ×1', 'Gbit/s ×8', 'new conn/s', 'forwarder RSS KiB', 'RSS peak KiB', 'RSS after the load KiB'];
  const configs = configsOf(rows);
  const body = configs.map((c) => {
    const [h, l] = [find(rows, 'http', c), find(rows, 'latency', c)];
    return [
      CONFIG_LABEL[c],
      cell(h?.metrics.rps),
      ...(['p50', 'p90', 'p99'] as const).map((p) => cell(h?.metrics[p], 3)),
      ...(['p50', 'p90', 'p99'] as const).map((p) => cell(l?.metrics[p], 3)),
      cell(find(rows, 'bulk1', c)?.metrics.gbps, 2),
      cell(find(rows, 'bulk8', c)?.metrics.gbps, 2),
      cell(find(rows, 'connrate', c)?.metrics.cps),
      backendOf(c) === null ? '–' : num(Math.max(...rows.filter((r) => r.config === c).map((r) => r.rssKb.max))),
      backendOf(c) === null ? '–' : num(Math.max(...rows.filter((r) => r.config === c).map((r) => r.rssPeakKb?.max ?? r.rssKb.max))),
      afterLoad[c] === undefined ? '–' : num(afterLoad[c]!),
    ];
  });
  const ratios = headlineRatios(rows);
  const withProxy = configs.includes('proxy-ebpf');
  const withProxyCapture = configs.includes('proxy-ebpf') && configs.includes('ebpf');
  const withFast = configs.includes('proxy-fastpath') && configs.includes('proxy-passthrough');
  const withH2 = configs.includes('proxy-ebpf') && configs.includes('proxy-h2default');
  const withNative = configs.includes('proxy-ebpf') && configs.includes('proxy-native');
  const withNativeCapture = configs.includes('ebpf') && configs.includes('proxy-native');
  const withV6 = configs.some((c) => V6_CONFIGS.includes(c));
  const rbody = Object.entries(ratios).map(([label, r]) => [label, rcell(r.iptablesVsNone), rcell(r.ebpfVsNone), rcell(r.ebpfVsIptables),
    ...(withV6 ? [rcell(r.iptablesVsNone6), rcell(r.ebpfVsNone6), rcell(r.ebpfVsIptables6)] : []),
    ...(withProxy ? [rcell(r.proxyEbpfVsIptables)] : []), ...(withProxyCapture ? [rcell(r.proxyVsCapture)] : []), ...(withFast ? [rcell(r.fastVsUserspace)] : []), ...(withH2 ? [rcell(r.h2ZtunnelVsNode)] : []),
    ...(withNative ? [rcell(r.nativeVsNode)] : []), ...(withNativeCapture ? [rcell(r.nativeVsCapture)] : [])]);
  const added = addedLatency(rows);
  const cbody: string[][] = [];
  for (const w of WORKLOADS) {
    for (const c of configs) {
      const r = find(rows, w, c);
      if (!r) continue;
      cbody.push([w, CONFIG_LABEL[c], `per ${unitOf(w).label}`, cell(r.costs.fwdUser, 3), cell(r.costs.fwdSys, 3), cell(r.costs.softirq, 3), cell(r.costs.ksoftirqd, 3), cell(r.costs.hostBusy, 3), num(r.outside.median, 2), String(r.disturbed), num(r.conntrack.max), String(r.errors)]);
    }
  }
  return [
    '## Traffic',
    '',
    'Medians over the repetitions, ±spread = (max − min) / median. Forwarder RSS: the forwarders of the configuration',
    '(both inpod-fwd, or the one proxy), summed, from /proc/<pid>/status: the most at the end of a run, the most sampled',
    `every 200 ms during one (peak), and, for the proxy rows, once every run was over and it had been idle ${AFTER_LOAD_SECONDS} s (after the load).`,
    '',
    table(head, body),
    '',
    ...(added.length ? ['### Latency added over no mesh (p50, ms: the difference of the medians, and of the extremes in parentheses)', '',
      'At saturation (wrk) the percentiles are mostly queueing and follow requests/s; at a fixed rate (inpod-latency)',
      'they are the time the path adds when it is not saturated, as Istio reports its data plane\'s latency.', '',
      table(['configuration', 'p50 added, saturated', 'p50 added, fixed rate'], added), ''] : []),
    '### Ratios (median ratio, and the worst case of both spreads in parentheses)',
    '',
    'Above 1 is more for the first configuration: better for rates, worse for latency and CPU.',
    '',
    table(['figure', 'iptables / no mesh', 'eBPF / no mesh', 'eBPF / iptables',
      ...(withV6 ? ['IPv6: iptables / no mesh', 'IPv6: eBPF / no mesh', 'IPv6: eBPF / iptables'] : []), ...(withProxy ? ['proxy eBPF / proxy iptables'] : []),
      ...(withProxyCapture ? ['proxy eBPF / capture-only eBPF'] : []),
      ...(withFast ? ['fast path / userspace passthrough'] : []), ...(withH2 ? ["ztunnel's HTTP/2 settings / Node's defaults (proxy eBPF)"] : []),
      ...(withNative ? ['native byte path / Node (proxy eBPF)'] : []), ...(withNativeCapture ? ['proxy native / capture-only eBPF'] : [])], rbody),
    '',
    '### CPU seconds per unit of work',
    '',
    'Forwarder user/system time is both forwarders of the configuration (client pod and server pod), from',
    '/proc/<pid>/stat; softirq and host busy time are the whole host (all CPUs) from /proc/stat over the run,',
    'so they include the load generator and the app; softirq adds the ksoftirqd threads\' time (deferred softirq',
    'work, charged by this kernel as their system time; it competes with the pinned tasks for their CPU). "outside" = CPUs busy outside the bench\'s cgroups during the',
    'runs (median; task time, so without irq/softirq time): other work on the host and steal; well above 0 means the',
    `run was disturbed: a run with more than ${DISTURBED_CPUS} CPUs was run again\n(once; at most the plan's retry budget) and left out of every figure (counted in`,
    '"disturbed runs"; still in the JSON). conntrack = entries in the two pods right after a run (max; entries of earlier runs linger until',
    'garbage-collected).',
    '',
    table(['workload', 'configuration', 'unit', 'fwd user', 'fwd sys', 'softirq', 'of it ksoftirqd', 'host busy', 'outside (CPUs)', 'disturbed runs', 'conntrack', 'errors'], cbody),
  ].join('\n');
}

function enrollSection(samples: EnrollSample[], state: PodState[]): string {
  if (samples.length === 0) return '';
  const body: string[][] = [];
  const levels = [...new Set(samples.map((s) => s.n))].sort((a, b) => a - b);
  const pick = (b: string, via: string, n: number, op: string): number[] =>
    samples.filter((s) => s.backend === b && s.via === via && s.n === n && s.op === op).map((s) => s.ms);
  for (const via of ['factory', 'bare'] as const) {
    for (const b of ['iptables', 'ebpf'] as const) {
      for (const n of levels) {
        const e = pick(b, via, n, 'enroll');
        const u = pick(b, via, n, 'unenroll');
        if (e.length === 0) continue;
        body.push([b, via === 'factory' ? 'createBackend' : 'backend alone', String(n), num(percentile(e, 50), 1), num(percentile(e, 99), 1), num(percentile(u, 50), 1), num(percentile(u, 99), 1), String(e.length)]);
      }
    }
  }
  const rbody = levels.flatMap((n) =>
    (['factory', 'bare'] as const).map((via) => {
      const r = (op: string): string => num(percentile(pick('iptables', via, n, op), 50) / percentile(pick('ebpf', via, n, op), 50), 1);
      return [String(n), via === 'factory' ? 'createBackend' : 'backend alone', `${r('enroll')}×`, `${r('unenroll')}×`];
    }),
  );
  const sbody = state.map((s) => [
    s.backend,
    String(s.iptablesRules),
    String(s.ipRules),
    String(s.routes),
    Object.entries(s.mapEntries).map(([k, v]) => `${k} +${v}`).join(', ') || '0',
    String(s.links),
  ]);
  return [
    '## Enrollment',
    '',
    'Time of one enroll() and one unenroll() of a pod with N pods already enrolled, in milliseconds,',
    'timed in-process. "createBackend" is what the agent calls (it first asks the other backend whether it',
    'already captures the pod); "backend alone" is the backend class by itself.',
    '',
    table(['backend', 'way in', 'N enrolled', 'enroll p50', 'enroll p99', 'unenroll p50', 'unenroll p99', 'samples'], body),
    '',
    'iptables time / eBPF time (p50):',
    '',
    table(['N enrolled', 'way in', 'enroll', 'unenroll'], rbody),
    '',
    'Kernel state one enrolled pod adds:',
    '',
    table(['backend', 'iptables rules in the pod', 'ip rules', 'routes', 'eBPF map entries', 'pinned bpf_links'], sbody),
  ].join('\n');
}

function methodSection(info: RunInfo, traffic: TrafficSample[]): string {
  const cmds = new Map<string, string>();
  for (const s of traffic) if (!s.warmup) cmds.set(`${s.workload} / ${s.config}`, s.command);
  return [
    '## How it was measured',
    '',
    `- command: \`${['inpod', 'bench', ...info.argv].join(' ')}\`${info.quick ? ' (quick: a smoke run, not for quoting)' : ''}`,
    `- started ${info.startedAt}, took ${Math.round(info.durationS)} s`,
    ...Object.entries(info.host).map(([k, v]) => `- ${k}: ${v}`),
    `- ${info.reps} repetitions of ${info.seconds} s per workload and configuration, run interleaved ` +
      `(for each repetition, for each workload: no mesh, iptables, eBPF), after a ${info.warmupSeconds} s warm-up run of each`,
    `- wrk: 1 thread, ${info.httpConns} kept-alive connections, as fast as the path answers (its percentiles are mostly queueing: about connections / requests/s)` +
      (info.latencyRate ? `; inpod-latency: ${info.latencyRate} requests/s spread over ${info.httpConns} kept-alive connections, HTTP/1.1, latency from each request's send to the last byte of its answer (as Istio's fortio runs: the latency the path adds when it is not saturated)` : '') +
      `; inpod-connrate: ${info.connThreads} threads, HTTP/1.0, one request per connection`,
    `- enrollment: N = ${info.enrollLevels.join(', ')}; ${info.enrollSamples} enroll+unenroll pairs per N, backend and way in`,
    '- topology: one simulated node (a node netns with a Linux bridge); per configuration a client pod and a server pod',
    '  (netns wired by the CNI bridge plugin), all on the same bridge. Capture rows enroll both pods and run',
    `  build/inpod-fwd in each: client app -> client pod forwarder (${PORTS.outbound}) -> server pod forwarder (${PORTS.inboundPlaintext}) -> app.`,
    '  The forwarder listens on [::] dual-stack (as ztunnel) and reads the original destination at the level of the',
    '  family on the wire (SO_ORIGINAL_DST, IP6T_SO_ORIGINAL_DST). The IPv6 rows (no mesh, IPv6 and its twins) use',
    '  IPv6-only pods (fd00:200::/64 from host-local), the same loads, forwarder and backends (IPv6 capture on).',
    '  The eBPF configuration\'s processes run in a child cgroup where the hooks are attached; the others in a sibling',
    '  cgroup without programs. The iptables pods are separate pods, so conntrack never runs in the other rows\' pods.',
    info.pinned
      ? '- CPU pinning: client pod processes (load generator, client forwarder) on CPU 0; server pod processes (nginx,\n' +
        '  iperf3 server, server forwarder) on CPU 1. The load generator shares CPU 0 with the client-side forwarder,\n' +
        '  and the app shares CPU 1 with the server-side forwarder: on 2 cores they cannot be kept apart.'
      : '- CPU pinning: off (--no-pin); the scheduler places every process.',
    '- pod sysctls: ip_local_port_range 1024-65000, tcp_tw_reuse=1, conntrack TCP TIME_WAIT and CLOSE timeouts 2 s',
    '  (the conntrack table is shared with the whole host; at the default 120 s the connection-rate run would fill it).',
    '- softirq time comes from /proc/stat; whether it is measured exactly depends on CONFIG_IRQ_TIME_ACCOUNTING, and',
    '  veth receive work often runs in the sending task\'s context, counted there as system time.',
    '',
    'Daemons:',
    '',
    '```',
    ...info.daemonCommands,
    '```',
    '',
    'Load commands (one per workload and configuration):',
    '',
    '```',
    ...[...cmds.entries()].map(([k, v]) => `# ${k}\n${v}`),
    '```',
  ].join('\n');
}

const mb = (kb: number): string => num(kb / 1024, 1);
const mib = (bytes: number | undefined): string => (bytes === undefined ? '–' : num(bytes / 2 ** 20, 1));

/** The memory scenario's readings (--memory), and what one pod and one connection cost. */
export function memorySection(m: MemoryResult | null): string {
  if (!m) return '';
  const p = m.points;
  const body = p.map((x) => [x.phase, num(x.at, 0), mb(x.rssKb), mb(x.anonKb), mb(x.fileKb),
    x.heap ? `${mib(x.heap.heapUsed)} / ${mib(x.heap.heapTotal)}` : '–', mib(x.heap?.newSpace), mib(x.heap?.external), mib(x.heap?.arrayBuffers),
    x.heap ? `${mib(x.heap.mallocUsed)} / ${mib(x.heap.mallocFree)}` : '–', x.heap ? String(x.heap.returns) : '–']);
  const [none, pods, open] = p;
  const per = (a: number | undefined, b: number | undefined, n: number): string => (a === undefined || b === undefined || n === 0 ? 'n/a' : num((b - a) / n, 1));
  const peak = open ? open.rssKb : 0;
  const last = p[p.length - 1];
  return [
    '## Memory',
    '',
    `One proxy serving ${m.plan.pods} pods (eBPF capture, all HBONE workloads, ${m.plan.bytePath === 'native' ? 'the native' : 'Node\'s'} HBONE byte path); each pod opens ${Math.round(m.plan.conns / m.plan.pods)} connections ` +
      `to the next pod's echo app: ${m.opened} opened through the proxy (${m.failed} failed${m.firstError ? `: ${m.firstError}` : ''}), ` +
      `one byte each way, then idle. Each reading ${m.plan.settleSeconds} s after the phase; RSS, anonymous and file-backed from /proc/<pid>/status, ` +
      'the heap figures from the proxy\'s admin /memory (MiB; glibc\'s from mallinfo2: free bytes stay counted after they are trimmed; ' +
      'returns: how often the proxy gave memory back so far).',
    '',
    table(['phase', 's', 'RSS MB', 'anon MB', 'file MB', 'V8 heap used / total', 'young gen', 'external', 'ArrayBuffers', 'glibc in use / free', 'returns'], body),
    '',
    `Per pod: ${per(none?.rssKb, pods?.rssKb, m.plan.pods)} KiB of RSS; per open connection: ${per(pods?.rssKb, open?.rssKb, m.opened)} KiB ` +
      `(both ends, its share of the pooled mTLS connections included). ${last ? `${last.phase}: ${mb(last.rssKb)} MB` : 'n/a'}, ` +
      `${last && peak ? mb(peak - last.rssKb) : 'n/a'} MB less than with the connections open (${mb(peak)} MB).`,
  ].join('\n');
}

export function markdown(info: RunInfo, rows: Row[], traffic: TrafficSample[], enroll: EnrollSample[], state: PodState[], memory: MemoryResult | null = null,
  afterLoad: Partial<Record<ConfigName, number>> = {}): string {
  const r = headlineRatios(rows);
  const pick = (k: string): string => rcell(r[k]?.ebpfVsIptables ?? null);
  const pick6 = (k: string): string => rcell(r[k]?.ebpfVsIptables6 ?? null);
  const v6 = rows.some((x) => V6_CONFIGS.includes(x.config));
  const enr = enroll.filter((s) => s.via === 'factory' && s.op === 'enroll');
  const top = Math.max(...enr.map((s) => s.n));
  const ep = (b: string): number => percentile(enr.filter((s) => s.backend === b && s.n === top).map((s) => s.ms), 50);
  return [
    `# inpod bench: capture-only rows and enrollment${info.quick ? ' (quick)' : ''}`,
    '',
    `Headline, eBPF / iptables (median, worst case of the spreads): requests/s ${pick('requests/s')}, ` +
      `new connections/s ${pick('new connections/s')}, Gbit/s ×1 ${pick('Gbit/s, 1 stream')}, ` +
      `Gbit/s ×8 ${pick('Gbit/s, 8 streams')}, p99 latency ${pick('latency p99 (ms)')}` +
      (enr.length ? `; enrolling one pod at N=${top}: iptables ${num(ep('iptables'), 1)} ms, eBPF ${num(ep('ebpf'), 1)} ms (p50).` : '.'),
    '',
    ...(v6
      ? [`IPv6 (IPv6-only pods), eBPF / iptables: requests/s ${pick6('requests/s')}, new connections/s ${pick6('new connections/s')}, ` +
          `Gbit/s ×1 ${pick6('Gbit/s, 1 stream')}, Gbit/s ×8 ${pick6('Gbit/s, 8 streams')}, p99 latency ${pick6('latency p99 (ms)')}.`, '']
      : []),
    `Figures per workload: ${WORKLOADS.map((w) => `${w} = ${WORKLOAD_LABEL[w]}, ${PRIMARY[w].label}`).join('; ')}.`,
    '',
    rows.length ? trafficSection(rows, afterLoad) : '',
    '',
    enrollSection(enroll, state),
    '',
    memorySection(memory),
    '',
    methodSection(info, traffic),
    '',
  ].join('\n');
}
