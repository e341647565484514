/**
 * Fakes for the agent's unit tests: network namespaces (a path -> cookie table that counts opens
 * and open fds), a redirection backend, a cluster source, a ZDS server, /proc and a timer. Each
 * records what it was asked to do, so a test can assert outcomes: what is captured, what the
 * proxy serves, how the pod is annotated, how often a path was opened.
 */
import { EventEmitter } from 'node:events';
import type { EnrolledPod, NetnsRef, PodNetns, PodSettings, RedirectBackend } from '../../ts/redirect/backend.js';
import type { AgentZds } from '../../ts/agent/dataplane.js';
import type { NetnsAddrs } from '../../ts/agent/podips.js';
import type { NamespaceObj, PodObj } from '../../ts/agent/policy.js';
import type { ProcFs } from '../../ts/agent/procscan.js';
import type { Timer } from '../../ts/agent/queue.js';
import type { ClusterSource, SourceEvents } from '../../ts/agent/source.js';
import type { ZdsPod } from '../../ts/zds/server.js';

/** A netns held open, without a kernel: its fd is a fake number, valid until closed. */
export function fakeNetns(path: string, cookie: bigint, onClose: () => void = () => {}): PodNetns {
  let closed = false;
  return {
    path,
    cookie,
    get fd(): number {
      if (closed) throw new Error(`fd of ${path} used after close`);
      return 1000 + Number(cookie);
    },
    get closed(): boolean {
      return closed;
    },
    close(): void {
      if (!closed) onClose();
      closed = true;
    },
  };
}

/** Netns paths and their cookies; counts every open of a path and the netns held open now. */
export class FakeNetnsTable {
  readonly paths = new Map<string, bigint>();
  readonly opens: string[] = [];
  open = 0;
  #next = 100n;

  /** the addresses each netns holds, by cookie (default: one IPv4 address of its own) */
  readonly addrs = new Map<bigint, NetnsAddrs>();

  /** A new netns at `path` (a fresh cookie: a reused path names another netns), with `addrs` if given. */
  add(path: string, addrs?: NetnsAddrs): bigint {
    const c = this.#next++;
    this.paths.set(path, c);
    if (addrs) this.addrs.set(c, addrs);
    return c;
  }
  /** The agent's reader of a held netns's addresses. */
  readonly addresses = (ns: PodNetns): NetnsAddrs => {
    void ns.fd; // a closed netns cannot be read
    return this.addrs.get(ns.cookie) ?? { ipv4: [`10.200.${Number(ns.cookie) >> 8}.${Number(ns.cookie) & 255}`], ipv6: [] };
  };
  remove(path: string): void {
    this.paths.delete(path);
  }
  /** The agent's opener: throws for a path that is not a netns. */
  readonly opener = (path: string): PodNetns => {
    const c = this.paths.get(path);
    if (c === undefined) throw new Error(`${path} is not a network namespace`);
    this.opens.push(path);
    this.open++;
    return fakeNetns(path, c, () => this.open--);
  };
  opensOf(path: string): number {
    return this.opens.filter((p) => p === path).length;
  }
}

/** A backend that keeps its captures in a map by cookie; `failures` are thrown by the next enrolls. */
export class FakeBackend implements RedirectBackend {
  readonly name = 'ebpf' as const;
  /** captures IPv6 (RedirectBackend.ipv6); the test sets it */
  ipv6 = false;
  readonly captured = new Map<bigint, { netns: PodNetns; settings: Partial<PodSettings> }>();
  readonly calls: string[] = [];
  readonly failures: Error[] = [];
  /** every netns it was handed as a path rather than held open (the agent never should) */
  readonly paths: string[] = [];

  async install(): Promise<void> {}
  async uninstall(): Promise<void> {}
  async enroll(netns: NetnsRef, settings: Partial<PodSettings> = {}): Promise<EnrolledPod> {
    const ns = this.#held(netns);
    this.calls.push(`enroll ${ns.path}`);
    const fail = this.failures.shift();
    if (fail) throw fail;
    void ns.fd; // a closed netns throws here, as a closed fd would fail the syscall
    this.captured.set(ns.cookie, { netns: ns, settings });
    return this.#pod(ns.cookie);
  }
  async unenroll(netns: NetnsRef): Promise<void> {
    const ns = this.#held(netns);
    this.calls.push(`unenroll ${ns.path}`);
    void ns.fd;
    this.captured.delete(ns.cookie);
  }
  async isEnrolled(netns: NetnsRef): Promise<boolean> {
    return this.captured.has(this.#held(netns).cookie);
  }
  async list(): Promise<EnrolledPod[]> {
    return [...this.captured.keys()].map((c) => this.#pod(c));
  }
  async reconcile(keep: Map<NetnsRef, Partial<PodSettings>>): Promise<EnrolledPod[]> {
    this.calls.push(`reconcile ${keep.size}`);
    const wanted = new Set<bigint>();
    for (const [netns, settings] of keep) wanted.add(BigInt((await this.enroll(netns, settings)).cookie));
    for (const c of [...this.captured.keys()]) if (!wanted.has(c)) this.captured.delete(c);
    return this.list();
  }
  /** The netns paths captured now. */
  netns(): string[] {
    return [...this.captured.values()].map((v) => v.netns.path).sort();
  }
  #held(netns: NetnsRef): PodNetns {
    if (typeof netns === 'string') {
      this.paths.push(netns);
      throw new Error(`the backend was given the path ${netns}, not a held netns`);
    }
    return netns;
  }
  #pod(cookie: bigint): EnrolledPod {
    const v = this.captured.get(cookie)!;
    return { netns: v.netns.path, backend: 'ebpf', cookie: cookie.toString(), podIps: [], settings: { probeSource: '169.254.7.127', probeSource6: 'fd16:9254:7127:1337:ffff:ffff:ffff:ffff', dnsCapture: false, excludeInboundPorts: [], excludeOutboundPorts: [], excludeOutboundCidrs: [], ...v.settings } };
  }
}

/** The cluster: namespaces and this node's pods, changed by the test, annotations kept on the pods. */
export class FakeSource extends EventEmitter<SourceEvents> implements ClusterSource {
  readonly namespaces = new Map<string, NamespaceObj>();
  readonly podMap = new Map<string, PodObj>();
  #uid = 0;

  async start(): Promise<void> {
    queueMicrotask(() => this.emit('synced'));
  }
  stop(): void {}
  namespace(name: string): NamespaceObj | undefined {
    return this.namespaces.get(name);
  }
  listNamespaces(): NamespaceObj[] {
    return [...this.namespaces.values()];
  }
  pod(namespace: string, name: string): PodObj | undefined {
    return this.podMap.get(`${namespace}/${name}`);
  }
  pods(): PodObj[] {
    return [...this.podMap.values()];
  }
  async annotatePod(namespace: string, name: string, key: string, value: string | null): Promise<void> {
    const p = this.pod(namespace, name);
    if (!p) return;
    const annotations = { ...p.metadata?.annotations };
    if (value === null) delete annotations[key];
    else annotations[key] = value;
    this.podMap.set(`${namespace}/${name}`, { ...p, metadata: { ...p.metadata, annotations } });
  }
  /** Sets a namespace's labels (ambient: true labels it istio.io/dataplane-mode=ambient) and tells the agent. */
  setNamespace(name: string, ambient: boolean, emit = true): void {
    this.namespaces.set(name, { metadata: { name, labels: ambient ? { 'istio.io/dataplane-mode': 'ambient' } : {} } });
    if (emit) this.emit('namespace', name);
  }
  /** Adds or changes a pod and tells the agent; returns it (a uid is made up when not given). */
  setPod(namespace: string, name: string, extra: { uid?: string; labels?: Record<string, string> } = {}, emit = true): PodObj {
    const uid = extra.uid ?? this.pod(namespace, name)?.metadata?.uid ?? `uid-${name}-${++this.#uid}`;
    const p: PodObj = { metadata: { name, namespace, uid, labels: extra.labels, annotations: this.pod(namespace, name)?.metadata?.annotations }, spec: { serviceAccountName: `sa-${name}` } };
    this.podMap.set(`${namespace}/${name}`, p);
    if (emit) this.emit('pod', namespace, name);
    return p;
  }
  deletePod(namespace: string, name: string): void {
    this.podMap.delete(`${namespace}/${name}`);
    this.emit('pod', namespace, name);
  }
  annotation(namespace: string, name: string): string | undefined {
    return this.pod(namespace, name)?.metadata?.annotations?.['ambient.istio.io/redirection'];
  }
}

/** The proxy's side of ZDS as the agent sees it: what it serves, by uid. */
export class FakeZds implements AgentZds {
  readonly path = '/fake/zds.sock';
  ready = false;
  /** uid -> the netns the proxy was given */
  readonly serving = new Map<string, PodNetns>();
  readonly failures: Error[] = [];
  #pods: () => ZdsPod[] = () => [];

  readonly factory = (pods: () => ZdsPod[]): AgentZds => {
    this.#pods = pods;
    return this;
  };
  start(): void {}
  close(): void {
    this.ready = false;
  }
  /** A proxy connects and takes the snapshot. */
  connect(): void {
    this.serving.clear();
    for (const p of this.#pods()) this.serving.set(p.uid, p.netns!);
    this.ready = true;
  }
  async addPod(pod: ZdsPod): Promise<void> {
    const fail = this.failures.shift();
    if (fail) throw fail;
    if (!pod.netns) throw new Error(`pod ${pod.uid} was sent by path, not with its held netns`);
    void pod.netns.fd;
    this.serving.set(pod.uid, pod.netns);
  }
  async removePod(uid: string): Promise<void> {
    this.serving.delete(uid);
  }
}

/** /proc with the given processes: pid -> cgroup file contents; their netns paths are in `dir`. */
export class FakeProc implements ProcFs {
  readonly procs = new Map<string, string>();
  scans = 0;
  constructor(readonly dir: string) {}
  netns(pid: string): string {
    return `${this.dir}/proc-${pid}-ns-net`;
  }
  pids(): string[] {
    this.scans++;
    return [...this.procs.keys()];
  }
  cgroup(pid: string): string | null {
    return this.procs.get(pid) ?? null;
  }
}

/** A timer the test fires by hand. */
export class ManualTimer {
  readonly pending: { fn: () => void; ms: number; cancelled: boolean }[] = [];
  readonly timer: Timer = (fn, ms) => {
    const t = { fn, ms, cancelled: false };
    this.pending.push(t);
    return () => {
      t.cancelled = true;
    };
  };
  /** Delays of the timers not yet fired nor cancelled. */
  delays(): number[] {
    return this.pending.filter((t) => !t.cancelled).map((t) => t.ms);
  }
  /** Fires every pending timer once. */
  fire(): void {
    const due = this.pending.splice(0).filter((t) => !t.cancelled);
    for (const t of due) t.fn();
  }
}
