/**
 * The benchmark's world: one simulated node (ts/sim/node.ts) with a client pod and a server pod
 * per configuration (no mesh, capture-only iptables, capture-only eBPF), all on the same bridge,
 * so every configuration crosses the same veths. Separate pods per configuration keep one
 * configuration's state out of another's: the iptables pods keep conntrack on after their rules
 * go, and the eBPF hooks attach to a child cgroup only the eBPF configuration's processes join
 * (its sibling, the "plain" cgroup, has no programs). Client-side processes are pinned to CPU 0,
 * server-side ones to CPU 1. Every name carries the run's prefix; destroy() removes everything,
 * never throws, and may run twice (normal end and SIGINT).
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SimNode, type PodFamily, type SimPod } from '../sim/node.js';
import { MARKS, PORTS } from '../istio.js';
import { createBackend } from '../redirect/factory.js';
import { cgroup2Mount } from '../redirect/preflight.js';
import type { BackendName, BackendOptions, RedirectBackend } from '../redirect/backend.js';
import { Daemons, inNetns, shebangLaunch, waitListening, type Placement } from './procs.js';
import { ZdsServer } from '../zds/server.js';
import { pino } from 'pino';

export type ConfigName = 'nomesh' | 'iptables' | 'ebpf' | 'proxy-iptables' | 'proxy-ebpf' | 'proxy-passthrough' | 'proxy-fastpath' | 'proxy-h2default' | 'proxy-native' | 'nomesh6' | 'iptables6' | 'ebpf6';
export const CONFIGS: ConfigName[] = ['nomesh', 'iptables', 'ebpf'];
/**
 * With --proxy: the real proxy (inpod ztunnel). HBONE between two enrolled pods under each
 * backend; then plain TCP passthrough from an enrolled client to a server outside the mesh
 * (eBPF capture), relayed by Node (fast path off) and spliced in the kernel (fast path on).
 */
export const PROXY_CONFIGS: ConfigName[] = ['proxy-iptables', 'proxy-ebpf', 'proxy-passthrough', 'proxy-fastpath'];
export const ALL_CONFIGS: ConfigName[] = [...CONFIGS, ...PROXY_CONFIGS];
/**
 * The capture-only rows for IPv6 (issue 18): the same three, between IPv6-only pods (addresses in
 * fd00:200::/64), with the same forwarder (dual-stack, reading IP6T_SO_ORIGINAL_DST) and the same
 * loads. Only when --configs names them: beside their IPv4 twins they double the capture rows' time.
 */
export const V6_CONFIGS: ConfigName[] = ['nomesh6', 'iptables6', 'ebpf6'];
/**
 * Rows only --configs asks for. proxy-h2default: proxy-ebpf with Node's HTTP/2 defaults (64 KiB
 * windows, 16 KiB frames) in place of ztunnel's, through ztunnel's own environment variables:
 * the "before" of issue 16's HTTP/2 settings, measured beside proxy-ebpf in one run.
 * proxy-native: proxy-ebpf with the native HBONE byte path (`--byte-path native`,
 * ts/proxy/hbone/native.ts), beside Node's.
 */
export const OPTIONAL_CONFIGS: ConfigName[] = ['proxy-h2default', 'proxy-native', ...V6_CONFIGS];
/** Every row, in the order runs and reports list them. */
export const KNOWN_CONFIGS: ConfigName[] = [...ALL_CONFIGS, ...OPTIONAL_CONFIGS];
/** Node's HTTP/2 defaults (nghttp2: RFC 9113's initial window and frame size), as ztunnel's variables. */
const NODE_H2_DEFAULTS = ['HTTP2_STREAM_WINDOW_SIZE=65535', 'HTTP2_CONNECTION_WINDOW_SIZE=65535', 'HTTP2_FRAME_SIZE=16384'];
export const CONFIG_LABEL: Record<ConfigName, string> = {
  nomesh: 'no mesh',
  iptables: 'capture-only, iptables',
  ebpf: 'capture-only, eBPF',
  'proxy-iptables': 'proxy (HBONE), iptables',
  'proxy-ebpf': 'proxy (HBONE), eBPF',
  'proxy-passthrough': 'proxy passthrough, eBPF, userspace copy',
  'proxy-fastpath': 'proxy passthrough, eBPF + fast path',
  'proxy-h2default': "proxy (HBONE), eBPF, Node's HTTP/2 defaults",
  'proxy-native': 'proxy (HBONE), eBPF, native byte path',
  nomesh6: 'no mesh, IPv6',
  iptables6: 'capture-only, iptables, IPv6',
  ebpf6: 'capture-only, eBPF, IPv6',
};

/** The capture backend a configuration uses (null: no mesh). */
export function backendOf(name: ConfigName): BackendName | null {
  if (name === 'nomesh' || name === 'nomesh6') return null;
  return name === 'iptables' || name === 'iptables6' || name === 'proxy-iptables' ? 'iptables' : 'ebpf';
}

/** The address family of a configuration's pods: IPv6-only for the *6 rows, else IPv4. */
export function familyOf(name: ConfigName): PodFamily {
  return (V6_CONFIGS as string[]).includes(name) ? 'ipv6' : 'ipv4';
}
// the built entry, from dist/bench/ as from ts/bench/ (under vitest), both two levels below the root
const CLI = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url));

export const BUILD_DIR = fileURLToPath(new URL('../../build/', import.meta.url));
export const FWD = join(BUILD_DIR, 'inpod-fwd');
/** The forwarder as the capture rows run it: the proxy's mark, listening on its capture ports ([::], dual-stack). */
export const FWD_COMMAND = [FWD, `0x${MARKS.proxy.toString(16)}`, String(PORTS.outbound), String(PORTS.inboundPlaintext)];
export const CONNRATE = join(BUILD_DIR, 'inpod-connrate');
export const LATENCY = join(BUILD_DIR, 'inpod-latency');
export const HTTP_PORT = 80;
export const IPERF_PORT = 5201;
export const BODY_BYTES = 1024;

export interface ConfigSetup {
  name: ConfigName;
  client: SimPod;
  server: SimPod;
  clientAt: Placement;
  serverAt: Placement;
  /** forwarder pids (client pod, server pod); empty without a mesh */
  fwdPids: number[];
}

/** Pod sysctls: room for short connections; short conntrack TIME_WAIT (the table is host-wide). */
const POD_SYSCTLS = [
  'net.ipv4.ip_local_port_range=1024 65000',
  'net.ipv4.tcp_tw_reuse=1',
  'net.netfilter.nf_conntrack_tcp_timeout_time_wait=2',
  'net.netfilter.nf_conntrack_tcp_timeout_close=2',
];

export class BenchEnv {
  node: SimNode | null = null;
  readonly cgroups: { ebpf: string; plain: string };
  readonly backendOpts: BackendOptions;
  readonly backends = new Map<BackendName, RedirectBackend>();
  readonly configs = new Map<ConfigName, ConfigSetup>();
  readonly daemons = new Daemons();
  readonly workDir: string;
  /** bare network namespaces made for the enrollment rows */
  readonly bareNetns: string[] = [];
  #destroying: Promise<void> | null = null;

  readonly #zds: ZdsServer[] = [];
  readonly #zdsByTag = new Map<string, ZdsServer>();

  /**
   * @param proxyCli the `inpod` entry the proxy rows start (default: this build's), to measure
   * another build of the proxy with this bench
   */
  constructor(readonly prefix: string, readonly pin: boolean, readonly names: ConfigName[] = CONFIGS, readonly proxyCli: string = CLI) {
    const root = cgroup2Mount(readFileSync('/proc/mounts', 'utf8'));
    if (!root) throw new Error('no cgroup2 mount in /proc/mounts: mount cgroup2 (see README "Requirements")');
    this.cgroups = { ebpf: join(root, `${prefix}-ebpf`), plain: join(root, `${prefix}-plain`) };
    this.workDir = mkdtempSync(join(tmpdir(), `${prefix}-`));
    // ipv6: the IPv6 rows' pods are enrolled (IPv4-only pods are the same either way)
    this.backendOpts = { cgroupPath: this.cgroups.ebpf, pinRoot: `/sys/fs/bpf/${prefix}inpod`, stateDir: join(this.workDir, 'state'), ipv6: true };
  }

  /** Creates the node, pods, cgroups and backends; enrolls the capture pods; starts the daemons. */
  async setup(log: (s: string) => void): Promise<void> {
    for (const cg of Object.values(this.cgroups)) mkdirSync(cg);
    this.node = await SimNode.create({ prefix: this.prefix });
    for (const b of ['iptables', 'ebpf'] as const) {
      const be = await createBackend(b, this.backendOpts);
      this.backends.set(b, be);
      await be.install();
    }
    for (const name of this.names) {
      // pi pe pp pf ph; n i e; n6 i6 e6
      const short = name.startsWith('proxy-') ? `p${name[6]}` : `${name[0]!}${familyOf(name) === 'ipv6' ? '6' : ''}`;
      const client = await this.node.addPod(`${short}c`, familyOf(name));
      const server = await this.node.addPod(`${short}s`, familyOf(name));
      for (const pod of [client, server]) await inNetns(pod.netnsPath, ['sysctl', '-qw', ...POD_SYSCTLS]);
      const cgroup = backendOf(name) === 'ebpf' ? this.cgroups.ebpf : this.cgroups.plain;
      const setup: ConfigSetup = {
        name,
        client,
        server,
        clientAt: { netns: client.netnsPath, cgroup, cpu: this.pin ? 0 : null },
        serverAt: { netns: server.netnsPath, cgroup, cpu: this.pin ? 1 : null },
        fwdPids: [],
      };
      this.configs.set(name, setup);
      if (name.startsWith('proxy-')) {
        setup.fwdPids.push(await this.#startProxy(name, setup, cgroup));
      } else if (backendOf(name) !== null) {
        // Enrolled first, listeners after: the eBPF sockops hook sees the inbound listener open.
        const be = this.backends.get(backendOf(name)!)!;
        await be.enroll(client.netnsPath);
        await be.enroll(server.netnsPath);
        for (const at of [setup.clientAt, setup.serverAt]) {
          const p = await this.daemons.start(at, FWD_COMMAND, 'ready');
          setup.fwdPids.push(p.pid!);
        }
      }
      await this.#startServers(setup);
      log(`  ${CONFIG_LABEL[name]}: client ${client.ip} (${client.netnsName}), server ${server.ip} (${server.netnsName})`);
    }
  }

  /**
   * The real proxy for one configuration: one `inpod ztunnel` process (in the configuration's
   * cgroup, not pinned: Node uses more than one thread), handed its pods over ZDS by a server in
   * this process. HBONE rows: both pods are enrolled HBONE workloads, so client -> server is
   * mTLS. Passthrough rows: only the client is in the mesh, so its traffic to the server leaves
   * as plain TCP through the proxy, with the kernel fast path off or on.
   */
  async #startProxy(name: ConfigName, s: ConfigSetup, cgroup: string): Promise<number> {
    const be = this.backends.get(backendOf(name)!)!;
    const mesh = name === 'proxy-passthrough' || name === 'proxy-fastpath' ? [s.client] : [s.client, s.server];
    for (const p of mesh) await be.enroll(p.netnsPath);
    return this.startProxy(name, mesh, cgroup, {
      env: name === 'proxy-h2default' ? NODE_H2_DEFAULTS : [],
      bytePath: name === 'proxy-native' ? 'native' : 'node',
      fastPath: name === 'proxy-passthrough' ? 'off' : 'on',
    });
  }

  /**
   * Starts one `inpod ztunnel` (this build's, or --proxy-cli's) in `cgroup`, in the host netns (it
   * enters the pods itself), with `mesh` as its HBONE workloads, and hands it those pods (enrolled
   * already) over ZDS, unless `handLater` (then addProxyPods does); resolves with its pid once it
   * has taken them all.
   */
  async startProxy(tag: string, mesh: SimPod[], cgroup: string, o: { env?: string[]; fastPath: 'on' | 'off'; bytePath: 'node' | 'native'; handLater?: boolean }): Promise<number> {
    const cfg = join(this.workDir, `${tag}.yaml`);
    writeFileSync(cfg, `workloads:\n${mesh.map((p) => `  - {uid: ${p.netnsName}, name: ${p.netnsName}, namespace: bench, serviceAccount: ${p.netnsName}, workloadIps: ["${p.ip}"], protocol: HBONE}`).join('\n')}\n`);
    const sock = join(this.workDir, `${tag}.sock`);
    let ready = false;
    const zds = new ZdsServer({ path: sock, pods: () => [], onReady: () => (ready = true), log: pino({ level: 'silent' }) });
    zds.start();
    this.#zds.push(zds);
    this.#zdsByTag.set(tag, zds);
    const at = { netns: `/proc/${process.pid}/ns/net`, cgroup, cpu: null };
    // started as the build's own entry says (its first line: node's flags, the environment)
    const launch = shebangLaunch(readFileSync(this.proxyCli, 'utf8').split('\n', 1)[0]!);
    // the byte path always said (INPOD_BYTE_PATH, read by `inpod ztunnel`): never the bench's own environment's
    const proc = await this.daemons.start(at, ['env', ...launch.env, 'INPOD_LOG_LEVEL=warn', `INPOD_BYTE_PATH=${o.bytePath}`, ...(o.env ?? []), process.execPath, ...launch.nodeArgs, this.proxyCli, 'ztunnel', '--config', cfg, '--zds', sock,
      '--ca-dir', join(this.workDir, 'ca'), '--admin-addr', '127.0.0.1:0', '--metrics-addr', '127.0.0.1:0', '--readiness-addr', '127.0.0.1:0',
      '--fast-path', o.fastPath]);
    for (let i = 0; i < 200 && !ready; i++) await new Promise((r) => setTimeout(r, 50));
    if (!ready) throw new Error(`${tag}: the proxy did not connect over ZDS`);
    if (!o.handLater) await this.addProxyPods(tag, mesh);
    return proc.pid!;
  }

  /** Hands pods to the proxy started as `tag` over ZDS; resolves once it took them all. */
  async addProxyPods(tag: string, pods: SimPod[]): Promise<void> {
    const zds = this.#zdsByTag.get(tag)!;
    for (const p of pods) await zds.addPod({ uid: p.netnsName, info: { name: p.netnsName, namespace: 'bench', serviceAccount: p.netnsName }, netnsPath: p.netnsPath });
  }

  async #startServers(s: ConfigSetup): Promise<void> {
    const dir = join(this.workDir, `nginx-${s.name}`);
    mkdirSync(join(dir, 'www'), { recursive: true });
    writeFileSync(join(dir, 'www', '1k'), 'x'.repeat(BODY_BYTES));
    writeFileSync(join(dir, 'nginx.conf'), nginxConf(dir));
    await this.daemons.start(s.serverAt, ['nginx', '-p', dir, '-c', join(dir, 'nginx.conf'), '-e', join(dir, 'error.log')]);
    await this.daemons.start(s.serverAt, ['iperf3', '-s', '-p', String(IPERF_PORT)]);
    await waitListening(s.server.netnsPath, HTTP_PORT);
    await waitListening(s.server.netnsPath, IPERF_PORT);
  }

  /** Conntrack entries in the configuration's two pods right now (per-netns count). */
  async conntrackEntries(name: ConfigName): Promise<number> {
    const s = this.configs.get(name)!;
    let n = 0;
    for (const pod of [s.client, s.server]) {
      const v = await inNetns(pod.netnsPath, ['cat', '/proc/sys/net/netfilter/nf_conntrack_count']).catch(() => '0');
      n += Number(v.trim()) || 0;
    }
    return n;
  }

  /** Removes everything this run created. Never throws; a second call waits for the first. */
  destroy(): Promise<void> {
    this.#destroying ??= this.#destroy();
    return this.#destroying;
  }

  async #destroy(): Promise<void> {
    await this.daemons.stopAll().catch(() => {});
    for (const z of this.#zds) z.close();
    for (const cg of Object.values(this.cgroups)) await killCgroup(cg);
    for (const [name, be] of this.backends) {
      for (const s of this.configs.values()) {
        if (backendOf(s.name) === name) {
          await be.unenroll(s.client.netnsPath).catch(() => {});
          await be.unenroll(s.server.netnsPath).catch(() => {});
        }
      }
      await be.uninstall().catch(() => {});
    }
    await removeNetns(this.bareNetns.splice(0));
    await this.node?.destroy().catch(() => {});
    rmSync(this.backendOpts.pinRoot!, { recursive: true, force: true });
    for (const cg of Object.values(this.cgroups)) {
      try {
        if (existsSync(cg)) rmdirSync(cg);
      } catch {
        /* a process we did not start joined it; left for `inpod doctor` */
      }
    }
    rmSync(this.workDir, { recursive: true, force: true });
  }
}

function nginxConf(dir: string): string {
  return `daemon off;
master_process off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  sendfile on;
  tcp_nopush off;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  server {
    listen ${HTTP_PORT} backlog=4096;
    listen [::]:${HTTP_PORT} backlog=4096;
    root ${dir}/www;
    default_type application/octet-stream;
  }
}
`;
}

/** SIGKILLs every process in a cgroup until it is empty (bounded). */
async function killCgroup(cg: string): Promise<void> {
  const procs = join(cg, 'cgroup.procs');
  for (let i = 0; i < 50 && existsSync(procs); i++) {
    const pids = readFileSync(procs, 'utf8').split('\n').filter(Boolean);
    if (pids.length === 0) return;
    for (const pid of pids) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        /* gone already */
      }
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Deletes network namespaces by name, a shell per batch (hundreds of them at the end of a run). */
export async function removeNetns(names: string[]): Promise<void> {
  if (names.length === 0) return;
  const { runProgram } = await import('../util/run.js');
  const script = names.map((n) => `ip netns del '${n}' 2>/dev/null`).join('\n') + '\ntrue\n';
  await runProgram('sh', ['-s'], script).catch(() => {});
}
