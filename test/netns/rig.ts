/**
 * One node for the real-namespace tests of the agent and the proxy: a Lab, a temp dir, the
 * capture backend, and what a test of the processes asks for on top of them: the CNI chain (net.d/
 * with the node's bridge conflist, bin/ where the agent installs inpod-cni) and a fake API server
 * with the ambient namespace `mesh`; `inpod ztunnel` in the lab cgroup and `inpod agent` as
 * processes with their output collected; a ZDS server where the agent's would be; or the proxy in
 * this process. `destroy()` stops every process (waiting for it to exit: nothing of theirs may
 * touch the kernel state while it is removed) and removes everything the rig made, also after a
 * failure; a rig whose creation fails has removed what it made before it throws.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { createBackend } from '../../ts/redirect/factory.js';
import type { BackendName, RedirectBackend } from '../../ts/redirect/backend.js';
import { CNI_PATH, type PodFamily } from '../../ts/sim/node.js';
import { openPath } from '../../ts/native/index.js';
import type { StateStore } from '../../ts/state/store.js';
import { Ztunnel, type ZtunnelOptions } from '../../ts/proxy/ztunnel.js';
import { ZdsServer, type ZdsPod } from '../../ts/zds/server.js';
import { FakeApiServer } from '../fixtures/apiserver.js';
import { CLI, freePorts } from '../cli.js';
import { Lab, type LabPod, until } from './lab.js';

export interface RigOptions {
  /** a few letters in the temp dir's name, to tell the tests' dirs apart */
  tag: string;
  /** the capture backend the test lists and uninstalls, and the agent's (default ebpf) */
  backend?: BackendName;
  /** the backend captures IPv6 too (BackendOptions.ipv6) */
  ipv6?: boolean;
  /** the lab's node netns is the host's (BackendOptions.hostNetns): its own connections are kubelet's */
  hostNetns?: boolean;
  /** the node's pod /24 (Lab.create), random by default */
  subnet?: string;
  /** an API server of the rig's own (kubeconfig in the dir), without the CNI chain or any object */
  api?: boolean;
  /**
   * What the agent needs: the CNI chain and an API server with the ambient namespace `mesh`.
   * `api`: another rig's server (two nodes of one cluster; the rig that made it stops it);
   * `family`: the pods the node's conflist gives addresses of (default ipv4); `node`: the node's
   * name (default node1).
   */
  cluster?: { api?: FakeApiServer; family?: PodFamily; node?: string };
}

export interface ProxyOptions {
  /** the state's source and any other flags: --config F, --kubeconfig F, --manifests D */
  args?: string[];
  /** --drain-seconds (default 1) */
  drainSeconds?: number;
  /** free ports for admin, metrics and readiness (a test that fetches them); else port 0 */
  ports?: boolean;
  /** --ca-dir (default <dir>/ca): two nodes share one CA */
  caDir?: string;
  env?: NodeJS.ProcessEnv;
}

export interface AgentOptions {
  /** --health-addr port (default: a free one) */
  healthPort?: number;
  /** --host-netns the lab's node netns: the node's own connections are kubelet's */
  hostNetns?: boolean;
  /** its own pod, as the downward API gives it (default inpod-system/inpod-agent-test) */
  self?: { name: string; namespace: string };
  /** a manifest directory in place of the API server (then no kubeconfig and no own pod) */
  manifests?: string;
  /** --state-dir under the rig's dir (default state) */
  stateDir?: string;
  /** --cni-socket under the rig's dir (default plugin.sock) */
  cniSocket?: string;
  /** any other flags */
  args?: string[];
}

export interface PodOptions {
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  /** spec.serviceAccountName (default `default`) */
  serviceAccount?: string;
  /** the pod's uid: ADD runs for it without a pod object applied (the test applied one, or none exists yet) */
  uid?: string;
  /** the sandbox's name in the lab (default the pod's name): a second sandbox of one pod */
  sandbox?: string;
}

/** A process the rig started; its output in `log`. */
export class Proc {
  log = '';
  /** resolves once the process has exited, with its exit code (null when a signal ended it) */
  readonly exited: Promise<number | null>;

  constructor(readonly role: 'agent' | 'proxy', readonly child: ChildProcess, onData: (d: string) => void, readonly healthPort = 0, readonly ports = { admin: 0, metrics: 0, readiness: 0 }) {
    this.exited = new Promise((r) => child.once('exit', (code) => r(code)));
    for (const out of [child.stdout!, child.stderr!]) {
      out.on('data', (d: Buffer) => {
        this.log += d;
        onData(String(d));
      });
    }
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Sends `signal` (SIGKILL: as a crash, no shutdown logic runs) and waits for the exit; its exit code. */
  stop(signal: NodeJS.Signals = 'SIGKILL'): Promise<number | null> {
    if (this.running) this.child.kill(signal);
    return this.exited;
  }
}

export class Rig {
  /** everything every process wrote, in the order it came */
  log = '';
  api?: FakeApiServer;
  backend!: RedirectBackend;
  /** the latest agent and proxy started */
  agent?: Proc;
  proxy?: Proc;
  /** the ZDS server (startZds) and how many proxies took its snapshot */
  zds?: ZdsServer;
  zdsReady = 0;
  readonly zdsPods: ZdsPod[] = [];
  /** the proxy in this process (serve) and its log lines */
  zt?: Ztunnel;
  readonly records: Record<string, unknown>[] = [];
  readonly node: string;
  readonly #procs: Proc[] = [];
  readonly #pauses: { proc: ChildProcess; cgroup: string }[] = [];
  #ownApi = false;

  private constructor(readonly lab: Lab, readonly dir: string, readonly backendName: BackendName, node: string) {
    this.node = node;
  }

  static async create(o: RigOptions): Promise<Rig> {
    const lab = await Lab.create({ subnet: o.subnet });
    let rig: Rig;
    try {
      rig = new Rig(lab, mkdtempSync(join(tmpdir(), `${lab.prefix}${o.tag}`)), o.backend ?? 'ebpf', o.cluster?.node ?? 'node1');
    } catch (e) {
      await lab.destroy();
      throw e;
    }
    try {
      rig.backend = await createBackend(rig.backendName, { cgroupPath: lab.cgroupPath, pinRoot: rig.pinRoot, stateDir: rig.p('state'), ipv6: o.ipv6, hostNetns: o.hostNetns ? lab.nodeNetnsPath : undefined });
      if (o.cluster) await rig.#cluster(o.cluster);
      else if (o.api) await rig.#startApi();
    } catch (e) {
      await rig.destroy();
      throw e;
    }
    return rig;
  }

  async #cluster(c: NonNullable<RigOptions['cluster']>): Promise<void> {
    for (const d of ['net.d', 'bin']) mkdirSync(this.p(d));
    const { cniVersion, name, ...bridge } = this.lab.node.netConf(c.family) as { cniVersion: string; name: string };
    writeFileSync(this.p('net.d/10-sim.conflist'), JSON.stringify({ cniVersion, name, plugins: [bridge] }));
    if (c.api) {
      this.api = c.api;
      writeFileSync(this.p('kubeconfig'), this.api.kubeconfig());
    } else await this.#startApi();
    this.api!.apply('namespaces', { metadata: { name: 'mesh', labels: { 'istio.io/dataplane-mode': 'ambient' } } });
  }

  async #startApi(): Promise<void> {
    this.api = new FakeApiServer();
    this.#ownApi = true;
    await this.api.start();
    writeFileSync(this.p('kubeconfig'), this.api.kubeconfig());
  }

  /** A path in the rig's dir. */
  p(f: string): string {
    return join(this.dir, f);
  }

  get pinRoot(): string {
    return `/sys/fs/bpf/${this.lab.prefix}inpod`;
  }

  /** The node's CNI config as it is now (the agent chains inpod-cni into it). */
  conflist(): { cniVersion: string; name: string; plugins: { type: string }[] } {
    return JSON.parse(readFileSync(this.p('net.d/10-sim.conflist'), 'utf8'));
  }

  /** Where a runtime looks for the plugins: the agent's bin dir first. */
  cniPath(): string {
    return `${this.p('bin')}:${CNI_PATH}`;
  }

  /** The tails of the latest agent's and proxy's output, for a timeout's message. */
  logs(): string {
    return [['agent', this.agent, 2500], ['proxy', this.proxy, 1400]].filter(([, proc]) => proc).map(([role, proc, n]) => `${role}:\n${(proc as Proc).log.slice(-(n as number))}`).join('\n');
  }

  /** until() with the processes' output as the context of its timeout (default 15 s). */
  until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> {
    return until(what, cond, { timeoutMs, context: () => this.logs() });
  }

  /** Starts `inpod ztunnel` in the lab cgroup (as the proxy sits in the node's root cgroup) on <dir>/zds.sock. */
  async startProxy(o: ProxyOptions = {}): Promise<Proc> {
    const [admin, metrics, readiness] = o.ports ? await freePorts(3) : [0, 0, 0];
    const argv = [CLI, 'ztunnel', ...(o.args ?? []), '--zds', this.p('zds.sock'), '--ca-dir', o.caDir ?? this.p('ca'), '--drain-seconds', String(o.drainSeconds ?? 1),
      '--admin-addr', `127.0.0.1:${admin}`, '--metrics-addr', `127.0.0.1:${metrics}`, '--readiness-addr', `127.0.0.1:${readiness}`];
    // the shell joins the cgroup first, so that nothing of the proxy ever runs outside it
    const child = spawn('sh', ['-c', 'echo $$ > "$0/cgroup.procs" && exec node "$@"', this.lab.cgroupPath, ...argv], { stdio: ['ignore', 'pipe', 'pipe'], env: o.env ?? process.env });
    this.proxy = this.#track(new Proc('proxy', child, (d) => (this.log += d), 0, { admin: admin!, metrics: metrics!, readiness: readiness! }));
    return this.proxy;
  }

  /** Starts `inpod agent` for this node: the rig's backend, cgroup, pins, CNI dirs and API server; ZDS on <dir>/zds.sock. */
  async startAgent(o: AgentOptions = {}): Promise<Proc> {
    const health = o.healthPort ?? (await freePorts(1))[0]!;
    const self = o.self ?? { name: 'inpod-agent-test', namespace: 'inpod-system' };
    const mode = o.manifests ? ['--manifests', o.manifests] : ['--kubeconfig', this.p('kubeconfig'), '--pod-name', self.name, '--pod-namespace', self.namespace];
    const child = spawn('node', [CLI, 'agent', '--backend', this.backendName, ...mode, '--node', this.node, '--cgroup', this.lab.cgroupPath,
      '--zds', this.p('zds.sock'), '--cni-socket', this.p(o.cniSocket ?? 'plugin.sock'), '--cni-bin-dir', this.p('bin'), '--cni-conf-dir', this.p('net.d'),
      '--state-dir', this.p(o.stateDir ?? 'state'), '--pin-root', this.pinRoot, '--health-addr', `127.0.0.1:${health}`,
      ...(o.hostNetns ? ['--host-netns', this.lab.nodeNetnsPath] : []), ...(o.args ?? [])], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.agent = this.#track(new Proc('agent', child, (d) => (this.log += d), health));
    return this.agent;
  }

  #track(p: Proc): Proc {
    this.#procs.push(p);
    return p;
  }

  /** Waits until the latest agent has chained and installed inpod-cni, is ready and the proxy took its snapshot. */
  async ready(timeoutMs = 30_000): Promise<void> {
    await this.until('the agent to chain inpod-cni', () => existsSync(this.p('net.d/10-sim.conflist')) && this.conflist().plugins.some((x) => x.type === 'inpod-cni') && existsSync(this.p('bin/inpod-cni')), timeoutMs);
    await this.until('the agent to be ready', () => /agent ready/.test(this.agent!.log), timeoutMs);
    await this.until('the proxy to take the snapshot', () => /snapshot sent/.test(this.agent!.log), timeoutMs);
  }

  /** Applies the Pod object of a pod of this node; returns it as the API server holds it. */
  pod(ns: string, name: string, o: PodOptions = {}): ReturnType<FakeApiServer['apply']> {
    return this.api!.apply('pods', { metadata: { name, namespace: ns, labels: o.labels, annotations: o.annotations }, spec: { nodeName: this.node, serviceAccountName: o.serviceAccount ?? 'default', containers: [{ name: 'app' }] } } as never);
  }

  /**
   * Starts a pod as the runtime does: its object applied (unless `o.uid`), then ADD through the
   * whole chain (bridge + host-local + inpod-cni); the CNI error output when the chain fails.
   */
  async runPod(ns: string, name: string, o: PodOptions = {}): Promise<{ pod?: LabPod; error?: string; uid: string }> {
    const uid = o.uid ?? this.pod(ns, name, o).metadata.uid!;
    try {
      return { pod: await this.lab.node.addPodWithChain(o.sandbox ?? name, this.conflist(), { namespace: ns, name, uid }, this.cniPath()), uid };
    } catch (e) {
      return { error: (e as { cniOutput?: string }).cniOutput ?? (e as Error).message, uid };
    }
  }

  /** runPod that must succeed, then the kubelet's report: Running, with the pod's IPs. */
  async startPod(ns: string, name: string, o: PodOptions = {}): Promise<LabPod> {
    const r = await this.runPod(ns, name, o);
    if (!r.pod) throw new Error(`ADD of ${ns}/${name} failed: ${r.error}\n${this.logs()}`);
    const pod = r.pod;
    const cur = this.api!.get('pods', ns, name)!;
    this.api!.apply('pods', { ...cur, status: { phase: 'Running', podIP: pod.ip4 ?? pod.ip, podIPs: [pod.ip4, pod.ip6].filter(Boolean).map((ip) => ({ ip })) } } as never);
    return pod;
  }

  /** DEL through the whole chain, as the runtime tears a sandbox down. */
  delPod(ns: string, name: string, uid: string, sandbox = name): Promise<void> {
    return this.lab.node.delPodWithChain(sandbox, this.conflist(), { namespace: ns, name, uid }, this.cniPath());
  }

  /**
   * A process of the pod in its pod cgroup (as the runtime's pause container): how the agent finds
   * a pod no CNI event told it about. Returns the netns path the agent will know it by.
   */
  async pause(uid: string, netnsPath: string): Promise<string> {
    const cgroup = join(this.lab.cgroupPath, `pod${uid}`);
    mkdirSync(cgroup);
    const proc = spawn('sh', ['-c', `echo $$ > ${cgroup}/cgroup.procs && exec nsenter --net=${netnsPath} sleep 600`], { stdio: 'ignore' });
    this.#pauses.push({ proc, cgroup });
    await this.until('the pod process in its cgroup', () => readFileSync(join(cgroup, 'cgroup.procs'), 'utf8').trim() !== '');
    return `/proc/${readFileSync(join(cgroup, 'cgroup.procs'), 'utf8').trim().split('\n')[0]}/ns/net`;
  }

  /** A ZDS server where the agent's would be (<dir>/zds.sock), handing over `zdsPods`; zdsReady counts the snapshots taken. */
  startZds(): ZdsServer {
    this.zds = new ZdsServer({ path: this.p('zds.sock'), pods: () => this.zdsPods, onReady: () => this.zdsReady++ });
    this.zds.start();
    return this.zds;
  }

  /** The agent's path for a new pod: capture it, then hand it to the proxy over ZDS and wait for the Ack. */
  async handOver(pod: LabPod, info: { uid: string; name: string; namespace: string; serviceAccount: string }): Promise<void> {
    await this.backend.enroll(pod.netnsPath);
    const z = { uid: info.uid, info: { name: info.name, namespace: info.namespace, serviceAccount: info.serviceAccount }, netnsPath: pod.netnsPath };
    this.zdsPods.push(z);
    await this.zds!.addPod(z);
  }

  /** The proxy in this process, which joins the lab cgroup; its log lines (at `level`, default info) in `records`. */
  async serve(state: StateStore, o: Partial<ZtunnelOptions> & { level?: string } = {}): Promise<Ztunnel> {
    const { level, ...opts } = o;
    this.lab.joinCgroup();
    const log = pino({ level: level ?? 'info' }, { write: (l: string) => void this.records.push(JSON.parse(l)) });
    this.zt = await Ztunnel.create({ trustDomain: 'cluster.local', caDir: this.p('ca'), state, log, ...opts });
    return this.zt;
  }

  /** Captures `pod` and has the in-process proxy serve it. */
  async servePod(pod: LabPod, info: { uid: string; name: string; namespace: string; serviceAccount: string }): Promise<void> {
    await this.backend.enroll(pod.netnsPath);
    await this.zt!.addPod(info, openPath(pod.netnsPath));
  }

  /** Stops every process the rig started and waits for each to exit. */
  async stopAll(): Promise<void> {
    for (const { proc } of this.#pauses) proc.kill('SIGKILL');
    await Promise.all([...this.#procs.map((p) => p.stop()), ...this.#pauses.map(({ proc }) => (proc.exitCode !== null || proc.signalCode !== null ? null : new Promise((r) => proc.once('exit', r))))]);
  }

  /** Removes everything: processes first, then servers, capture, lab and dir. Every step runs; the first failure is thrown at the end. */
  async destroy(): Promise<void> {
    const errors: unknown[] = [];
    const step = async (f: () => unknown): Promise<void> => {
      try {
        await f();
      } catch (e) {
        errors.push(e);
      }
    };
    await step(() => this.stopAll());
    // a pod cgroup can be removed once it has no process
    for (const { cgroup } of this.#pauses.splice(0)) await step(() => rmdirSync(cgroup));
    await step(() => this.zds?.close());
    await step(() => this.zt?.close());
    await step(() => this.lab.leaveCgroup());
    if (this.#ownApi) await step(() => this.api?.stop());
    await this.backend?.uninstall().catch(() => {});
    await step(() => this.lab.destroy());
    rmSync(this.dir, { recursive: true, force: true });
    if (errors.length) throw errors[0];
  }
}
