/**
 * The node agent (istio-cni role): decides which pods are in the mesh, captures them with the
 * redirection backend, hands them to the proxy over ZDS, and annotates them. This file wires the
 * parts, as istio-cni's server.go composes its informers, CNI plugin server and NetServer:
 * cluster events and CNI events come in, each becomes a job on its pod's queue (queue.ts: one at
 * a time per pod, retried with backoff when it fails retryably), which gathers what is known of
 * the pod, asks plan.ts what to do (pure) and has dataplane.ts do it. sandboxes.ts keeps the
 * records and the open netns of each sandbox, procscan.ts finds pods the agent never saw in
 * /proc, cniserver.ts takes the plugin's events, meshview.ts keeps the plugin's node-local view
 * of who is in the mesh, metrics.ts counts. On start it reconciles what the kernel already
 * captures before serving anyone. One agent is active on a node at a time: a new one takes the
 * sockets over, then the lease (handover.ts), for which the running one finishes its work under
 * way and steps down (ARCHITECTURE.md, "Upgrades").
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Registry } from 'prom-client';
import { MeshError } from '../util/errors.js';
import { logger, type Logger } from '../util/log.js';
import type { RedirectBackend } from '../redirect/backend.js';
import { openNetns, type PodNetns } from '../redirect/netns.js';
import { netnsAddrsOfFd } from '../native/index.js';
import { ZdsServer, type ZdsPod } from '../zds/server.js';
import type { PodEvent } from '../cni/plugin.js';
import { CniServer } from './cniserver.js';
import { AgentLease, leaseHeld, leaseName } from './handover.js';
import { Dataplane, type AgentZds } from './dataplane.js';
import { MeshViewWriter, meshView } from './meshview.js';
import { agentMetrics, type AgentMetrics } from './metrics.js';
import { plan, planAdd, planDel, planRestart, undiscovered, type SandboxView } from './plan.js';
import { meshVerdict, type PodObj } from './policy.js';
import { eventIps, holdsAny, statusPodIps, type NetnsAddrs } from './podips.js';
import { hostProc, scanProc, type ProcFs } from './procscan.js';
import { KeyedQueue, type QueueOptions } from './queue.js';
import { SandboxStore } from './sandboxes.js';
import type { ClusterSource } from './source.js';

export interface AgentOptions {
  source: ClusterSource;
  backend: RedirectBackend;
  stateDir: string;
  zdsPath: string;
  pluginSocket: string;
  /** where the plugin's mesh view is kept (meshview.ts); none written when absent */
  meshView?: string;
  /** namespaces whose pods are never in the mesh (the plugin's conflist entry has the same list) */
  excludeNamespaces?: readonly string[];
  /** how long a CNI ADD waits for the pod to appear in the cache before deciding without it */
  podWaitMs?: number;
  log?: Logger;
  /** retry backoff of pod jobs (default 100 ms doubling to 5 s) */
  retry?: Pick<QueueOptions, 'minMs' | 'maxMs' | 'timer'>;
  /** told once this agent has handed over to a newer one (it then only waits to be stopped) */
  onHandedOver?: () => void;
  /**
   * told if, after this agent handed over, no agent holds the lease any more (the newer one went
   * away, e.g. a rollout undone before it took over): nobody serves the node, and this agent
   * cannot take its role back in place (its sockets now name the newer one's). The command
   * exits, so that the kubelet restarts it.
   */
  onOrphaned?: () => void;
  /** seams for tests: the ZDS server, how a netns is opened, /proc, the boot id */
  zds?: (pods: () => ZdsPod[]) => AgentZds;
  openNetns?: (path: string) => PodNetns;
  /** the global addresses of a held netns (default: read through its fd) */
  netnsAddrs?: (ns: PodNetns) => NetnsAddrs;
  proc?: ProcFs;
  bootId?: string;
}

export class Agent {
  readonly zds: AgentZds;
  readonly registry: Registry;
  readonly #o: AgentOptions;
  readonly #log: Logger;
  readonly #metrics: AgentMetrics;
  readonly #store: SandboxStore;
  readonly #dp: Dataplane;
  readonly #queue: KeyedQueue;
  readonly #cni: CniServer;
  readonly #excluded: ReadonlySet<string>;
  readonly #view?: MeshViewWriter;
  readonly #addrs: (ns: PodNetns) => NetnsAddrs;
  #synced = false;
  #lease?: AgentLease;
  #handedOver = false;
  /** aborted by stop(): a start still waiting for the lease gives up */
  readonly #stopping = new AbortController();
  /** CNI events wait for this: the agent serves only once it holds the lease and has reconciled */
  readonly #serving: Promise<void>;
  #serve!: () => void;

  constructor(o: AgentOptions) {
    this.#o = o;
    this.#log = o.log ?? logger('agent');
    this.#metrics = agentMetrics();
    this.registry = this.#metrics.registry;
    const bootId = o.bootId ?? readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    this.#store = new SandboxStore(join(o.stateDir, 'pods'), { open: o.openNetns ?? openNetns, bootId });
    const pods = (): ZdsPod[] => [...this.#dp.served.values()];
    this.zds = o.zds ? o.zds(pods) : new ZdsServer({ path: o.zdsPath, pods, log: this.#log.child({ component: 'zds' }) });
    this.#addrs = o.netnsAddrs ?? ((ns) => netnsAddrsOfFd(ns.fd));
    this.#dp = new Dataplane({ backend: o.backend, zds: this.zds, store: this.#store, source: o.source, metrics: this.#metrics, log: this.#log, addrs: this.#addrs });
    this.#queue = new KeyedQueue({
      ...o.retry,
      onFailure: (pod, err, retryInMs, attempt) => {
        if (retryInMs !== null) this.#metrics.retries.inc();
        this.#log.warn({ pod, err: err.message, attempt, retryInMs }, retryInMs === null ? 'pod reconcile failed; its next event tries again' : 'pod reconcile failed; retrying');
      },
    });
    this.#cni = new CniServer(o.pluginSocket, { add: (ev) => this.cniAdd(ev), del: (ev) => this.cniDel(ev) });
    this.#serving = new Promise((r) => (this.#serve = r));
    this.#excluded = new Set(o.excludeNamespaces ?? []);
    const src = o.source;
    if (o.meshView) this.#view = new MeshViewWriter(o.meshView, () => meshView(src.listNamespaces(), src.pods(), (n) => src.namespace(n), this.#excluded), { log: this.#log.child({ component: 'meshview' }) });
  }

  /** Serving: it holds the lease, has reconciled, and has not handed over. */
  get ready(): boolean {
    return this.#synced && !this.#handedOver;
  }

  /** Pods the proxy serves (uid -> pod with the netns of its newest sandbox). */
  get enrolled(): ReadonlyMap<string, ZdsPod> {
    return this.#dp.served;
  }

  async start(): Promise<void> {
    // The sockets first: from here on the plugin and the proxy reach this agent (and wait until
    // it serves), while the agent before it, if one runs, finishes its work and hands over.
    this.zds.listen?.();
    await this.#cni.start();
    this.#lease = await AgentLease.acquire(leaseName(this.#o.stateDir), { log: this.#log, handOver: () => this.#handOver(), signal: this.#stopping.signal });
    const { source } = this.#o;
    this.#store.load();
    const synced = new Promise<void>((r) => source.once('synced', () => r()));
    source.on('pod', (ns, name) => {
      this.#view?.changed();
      this.#live(ns, name, false);
    });
    source.on('namespace', (ns) => {
      this.#view?.changed();
      // one /proc scan for the namespace's pods the agent never saw, not one per pod
      const pods = source.pods().filter((p) => p.metadata?.namespace === ns);
      this.#discover(undiscovered(pods, (n) => source.namespace(n), (uid) => this.#store.ofPod(uid).length > 0, this.#excluded));
      for (const p of pods) this.#live(ns, p.metadata!.name!, true);
    });
    source.on('error', (e) => this.#log.warn({ err: e.message }, 'cluster source error (retrying)'));
    await source.start();
    await synced;
    this.#view?.start();
    await this.#restart();
    this.zds.start();
    this.#synced = true;
    this.#serve();
    this.#log.info({ enrolled: this.#dp.served.size, sandboxes: this.#dp.captured.size }, 'agent ready');
  }

  /** Stops; capture stays in the kernel. The sockets are removed only if they are still this agent's. */
  stop(): void {
    this.#stopping.abort();
    this.#queue.stop();
    this.#view?.stop();
    this.#o.source.stop();
    this.zds.close();
    void this.#cni.close();
    this.#store.closeAll();
    this.#lease?.release();
  }

  /**
   * A newer agent asked for the lease: stop taking work (a CNI request that still arrives is
   * passed on to the newer agent, which holds the socket path already), finish the CNI requests
   * and pod jobs under way (their proxy Acks come over this agent's ZDS connections), then let
   * the proxies go (they reconnect to the newer agent). The newer agent reads the records left
   * here once it holds the lease. Capture stays in the kernel.
   */
  async #handOver(): Promise<void> {
    this.#handedOver = true;
    this.#queue.stop();
    this.#view?.stop(); // the newer agent keeps the mesh view from here on
    this.#o.source.stop();
    await this.#cni.handOver();
    await this.#queue.idle();
    this.zds.close();
    this.#store.closeAll();
    this.#log.info('handed over to the newer agent; waiting to be stopped');
    this.#o.onHandedOver?.();
    this.#watchOrphaned();
  }

  /** After the hand-over: the lease found free twice in a row, a second apart, means nobody took over. */
  #watchOrphaned(): void {
    const name = leaseName(this.#o.stateDir);
    let free = 0;
    const timer = setInterval(() => {
      if (this.#stopping.signal.aborted) return clearInterval(timer);
      void leaseHeld(name).then((held) => {
        free = held ? 0 : free + 1;
        if (free < 2 || this.#stopping.signal.aborted) return;
        clearInterval(timer);
        this.#log.error('the agent this one handed over to is gone and no agent serves the node');
        this.#o.onOrphaned?.();
      }, () => {});
    }, 1000);
    timer.unref();
  }

  /* ------------------------------------------------------------------ cluster events */

  /** A pod changed: make the kernel and the proxy match it (retried while it fails retryably). */
  #live(ns: string, name: string, scanned: boolean): void {
    this.#queue.ensure(`${ns}/${name}`, () => this.#reconcilePod(ns, name, scanned));
  }

  async #reconcilePod(ns: string, name: string, scanned: boolean): Promise<void> {
    const { source } = this.#o;
    const pod = source.pod(ns, name);
    let views: SandboxView[];
    if (!pod) {
      views = this.#store.all().filter((s) => s.namespace === ns && s.name === name).map((s) => this.#dp.view(s, false));
    } else {
      const uid = pod.metadata?.uid ?? '';
      // netns are opened (and /proc scanned, if no CNI event named one) only for pods in the mesh
      const inMesh = meshVerdict(source.namespace(ns), pod, this.#excluded).enroll;
      if (inMesh && !scanned) this.#discover(undiscovered([pod], (n) => source.namespace(n), (u) => this.#store.ofPod(u).length > 0, this.#excluded));
      views = this.#store.ofPod(uid).map((s) => this.#dp.view(s, inMesh));
    }
    const p = plan(pod, source.namespace(ns), views, this.#excluded);
    if (p.verdict && !p.verdict.enroll && p.actions.some((a) => a.do === 'uncapture')) this.#log.info({ ns, pod: name, reason: p.verdict.reason }, 'leaving the mesh');
    try {
      await this.#dp.apply(p.actions, pod);
    } finally {
      this.#dp.settle(views.map((v) => v.sandbox));
    }
  }

  /** After a restart: keep what should be captured, drop the rest (see planRestart). */
  async #restart(): Promise<void> {
    const { source } = this.#o;
    const pods = source.pods();
    const namespace = (n: string) => source.namespace(n);
    const uids = new Set(pods.map((p) => p.metadata?.uid));
    const views = (): SandboxView[] => this.#store.all().map((s) => this.#dp.view(s, uids.has(s.uid)));
    const before = views();
    this.#discover(undiscovered(pods, namespace, (uid) => before.some((v) => v.alive && v.sandbox.uid === uid), this.#excluded));
    const kept = await this.#dp.restart(planRestart(pods, namespace, views(), this.#excluded));
    this.#log.info({ kept }, 'reconciled capture with the cluster');
  }

  /**
   * Finds the netns of `pods` in /proc (one scan) and records them; each found netns stays held.
   * A pod with addresses in its status (status.podIPs, both families, else status.podIP) takes
   * the first netns that holds one of them, as istio-cni's netnsPodIPChecker: a process of the
   * pod's cgroup in another netns (one that joined the host's, say) is not the pod's sandbox.
   */
  #discover(pods: PodObj[]): void {
    if (pods.length === 0) return;
    const found = scanProc(pods.map((p) => p.metadata?.uid ?? ''), this.#o.proc ?? hostProc);
    for (const pod of pods) {
      const uid = pod.metadata?.uid ?? '';
      const ips = statusPodIps(pod);
      for (const path of found.get(uid) ?? []) {
        const ns = this.#store.open(path);
        if (!ns) continue;
        if (ips.length && !this.#holds(ns, ips)) {
          ns.close();
          continue;
        }
        const sb = this.#store.add({ uid, namespace: pod.metadata?.namespace ?? '', name: pod.metadata?.name ?? '', netns: path, cookie: ns.cookie.toString(), containerId: '', ips });
        this.#store.hold(sb, ns);
        break;
      }
    }
  }

  #holds(ns: PodNetns, ips: string[]): boolean {
    try {
      return holdsAny(this.#addrs(ns), ips);
    } catch {
      return false;
    }
  }

  /* ------------------------------------------------------------------ CNI events */

  /**
   * ADD: record the sandbox (its netns opened here, once, and held) with the pod IPs of the CNI
   * result, both families; if the pod belongs in the mesh, capture it with every address its
   * netns holds (podips.ts) and make it the one the proxy serves (a pod's latest ADD wins), then return.
   */
  async cniAdd(ev: PodEvent): Promise<{ enrolled: boolean; reason: string }> {
    await this.#serving;
    const ips = eventIps(ev.ips);
    if (!ev.netns || !existsSync(ev.netns)) throw new MeshError('INPOD_ERR_CNI', `netns ${ev.netns || '(none)'} of pod ${ev.podNamespace}/${ev.podName} does not exist`);
    const ns = this.#store.open(ev.netns);
    if (!ns) throw new MeshError('INPOD_ERR_CNI', `${ev.netns} of pod ${ev.podNamespace}/${ev.podName} is not a network namespace; the runtime must pass CNI_NETNS`);
    const found = await this.#waitForPod(ev.podNamespace, ev.podName, ev.podUid);
    const uid = ev.podUid || found?.metadata?.uid || `${ev.podNamespace}/${ev.podName}`;
    const sb = this.#store.add({ uid, namespace: ev.podNamespace, name: ev.podName, netns: ev.netns, cookie: ns.cookie.toString(), containerId: ev.containerId ?? '', ips });
    this.#store.hold(sb, ns);
    return this.#queue.run(`${ev.podNamespace}/${ev.podName}`, async () => {
      try {
        const obj: PodObj = found ?? { metadata: { name: ev.podName, namespace: ev.podNamespace, uid } };
        const pod = { ...obj, metadata: { ...obj.metadata, uid } };
        const views = this.#store.ofPod(uid).map((s) => this.#dp.view(s, false));
        const p = planAdd(pod, this.#o.source.namespace(ev.podNamespace), views, sb, this.#excluded);
        if (!p.verdict.enroll) return { enrolled: false, reason: p.verdict.reason };
        await this.#dp.apply(p.actions, pod);
        return { enrolled: true, reason: p.verdict.reason };
      } finally {
        this.#dp.settle([sb]);
      }
    });
  }

  /** DEL: releases the sandbox it names (see delTargets), only that one; idempotent. */
  async cniDel(ev: PodEvent): Promise<void> {
    await this.#serving;
    const uid = ev.podUid || this.#store.all().find((s) => s.namespace === ev.podNamespace && s.name === ev.podName)?.uid;
    if (!uid) return;
    await this.#queue.run(`${ev.podNamespace}/${ev.podName}`, async () => {
      const mine = this.#store.ofPod(uid);
      if (mine.length === 0) return;
      // one open of CNI_NETNS for its cookie; the sandboxes themselves are reached through their held netns
      const cookie = ev.netns ? this.#store.cookieAt(ev.netns) : null;
      await this.#dp.apply(planDel(mine, { containerId: ev.containerId ?? '', netns: ev.netns }, cookie, (x) => this.#store.alive(x)), undefined);
    });
  }

  async #waitForPod(ns: string, name: string, uid: string): Promise<PodObj | undefined> {
    const end = Date.now() + (this.#o.podWaitMs ?? 5000);
    for (;;) {
      const p = this.#o.source.pod(ns, name);
      if (p && (!uid || p.metadata?.uid === uid)) return p;
      if (Date.now() > end) return p;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}
