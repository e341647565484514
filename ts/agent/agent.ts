/**
 * The node agent (istio-cni role): decides which pods are in the mesh, captures them with the
 * redirection backend, hands them to the proxy over ZDS, and annotates them. Work for one pod
 * is serialized; handlers read the source's cache, so a burst of events converges on the last
 * state. On start it reconciles what the kernel already captures before serving anyone.
 *
 * Capture is per sandbox (pod uid and netns, sandboxes.ts), the proxy's view per pod: for a pod
 * in the mesh every sandbox whose netns still exists is captured, and the proxy serves the newest
 * (ZDS names a pod by uid alone; an Add with another netns makes the proxy switch over). An older
 * sandbox that still exists therefore stays captured with no proxy listening in it: it fails
 * closed until its own DEL, or until its netns is gone, unenrolls it.
 */
import http from 'node:http';
import { existsSync, mkdirSync, readdirSync, readFileSync, unlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { MeshError } from '../util/errors.js';
import { logger, type Logger } from '../util/log.js';
import { netnsCookie } from '../native/index.js';
import type { PodSettings, RedirectBackend } from '../redirect/backend.js';
import { ZdsServer, type ZdsPod } from '../zds/server.js';
import { meshVerdict, podCaptureSettings, REDIRECTION_ANNOTATION, type PodObj } from './policy.js';
import { SandboxStore, delTargets, newest, sandboxKey, type Sandbox } from './sandboxes.js';
import type { ClusterSource } from './source.js';
import type { PodEvent } from '../cni/plugin.js';

export interface AgentOptions {
  source: ClusterSource;
  backend: RedirectBackend;
  stateDir: string;
  zdsPath: string;
  pluginSocket: string;
  /** how long a CNI ADD waits for the pod to appear in the cache before deciding without it */
  podWaitMs?: number;
  log?: Logger;
}

/** A pod as the proxy serves it: its newest sandbox. */
type ServedPod = ZdsPod & { cookie: string };

export class Agent {
  readonly zds: ZdsServer;
  readonly registry = new Registry();
  readonly #o: AgentOptions;
  readonly #log: Logger;
  readonly #sandboxes: SandboxStore;
  readonly #captured = new Set<string>(); // sandboxKey of every sandbox captured in the kernel
  readonly #served = new Map<string, ServedPod>(); // uid -> the sandbox the proxy serves
  readonly #queues = new Map<string, Promise<unknown>>();
  #plugin?: http.Server;
  #synced = false;
  readonly #m;

  constructor(o: AgentOptions) {
    this.#o = o;
    this.#log = o.log ?? logger('agent');
    this.#sandboxes = new SandboxStore(join(o.stateDir, 'pods'), { cookie: (p) => netnsCookie(p).toString(), bootId: readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim() });
    this.zds = new ZdsServer({ path: o.zdsPath, pods: () => [...this.#served.values()], log: this.#log.child({ component: 'zds' }) });
    this.#m = {
      enrolled: new Gauge({ name: 'inpod_agent_pods_enrolled', help: 'Pod sandboxes (network namespaces) captured on this node', registers: [this.registry] }),
      latency: new Histogram({ name: 'inpod_agent_enroll_seconds', help: 'Time to capture a pod and have the proxy acknowledge it', buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5], registers: [this.registry] }),
      errors: new Counter({ name: 'inpod_agent_errors_total', help: 'Failed enroll/unenroll operations', labelNames: ['op'], registers: [this.registry] }),
    };
  }

  get ready(): boolean {
    return this.#synced;
  }

  /** Pods the proxy serves (uid -> pod with the netns of its newest sandbox). */
  get enrolled(): ReadonlyMap<string, ZdsPod> {
    return this.#served;
  }

  async start(): Promise<void> {
    this.#sandboxes.load();
    const synced = new Promise<void>((r) => this.#o.source.once('synced', () => r()));
    // a failure is logged and counted where it happens; the pod's next event tries again
    const live = (ns: string, name: string): void => void this.#enqueue(`${ns}/${name}`, () => this.#reconcilePod(ns, name)).catch(() => {});
    this.#o.source.on('pod', live);
    this.#o.source.on('namespace', (ns) => {
      for (const p of this.#o.source.pods()) if (p.metadata?.namespace === ns) live(ns, p.metadata!.name!);
    });
    this.#o.source.on('error', (e) => this.#log.warn({ err: e.message }, 'cluster source error (retrying)'));
    await this.#o.source.start();
    await synced;
    await this.#reconcileAll();
    this.zds.start();
    await this.#startPluginServer();
    this.#synced = true;
    this.#log.info({ enrolled: this.#served.size, sandboxes: this.#captured.size }, 'agent ready');
  }

  stop(): void {
    this.#o.source.stop();
    this.zds.close();
    this.#plugin?.close();
    if (existsSync(this.#o.pluginSocket)) unlinkSync(this.#o.pluginSocket);
  }

  /* ------------------------------------------------------------------ decisions */

  #enqueue<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.#queues.get(key) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const tail = next.catch(() => {});
    this.#queues.set(key, tail);
    void tail.then(() => {
      if (this.#queues.get(key) === tail) this.#queues.delete(key);
    });
    return next;
  }

  #podKey(p: PodObj): string {
    return `${p.metadata?.namespace}/${p.metadata?.name}`;
  }

  /** Live path: make the kernel and the proxy match what the pod should be. */
  async #reconcilePod(ns: string, name: string): Promise<void> {
    const pod = this.#o.source.pod(ns, name);
    if (!pod) {
      for (const s of this.#sandboxes.all()) if (s.namespace === ns && s.name === name) await this.#uncapture(s);
      return;
    }
    const uid = pod.metadata?.uid ?? '';
    const verdict = meshVerdict(this.#o.source.namespace(ns), pod);
    let mine = this.#sandboxes.ofPod(uid);
    if (!verdict.enroll) {
      if (this.#served.has(uid) || mine.some((s) => this.#captured.has(sandboxKey(s)))) {
        this.#log.info({ ns, pod: name, reason: verdict.reason }, 'leaving the mesh');
        for (const s of mine) await this.#uncapture(s);
      }
      if (pod.metadata?.annotations?.[REDIRECTION_ANNOTATION]) await this.#annotate(pod, null);
      return;
    }
    // /proc is scanned only for pods that belong in the mesh and whose netns we never saw
    if (mine.length === 0) mine = [this.#discover(uid, ns, name)].filter((s): s is Sandbox => !!s);
    // a sandbox whose netns is gone (or whose path now names another netns, checked only before
    // capturing it) has nothing left to capture: forget it
    const gone = mine.filter((s) => !existsSync(s.netns) || (!this.#captured.has(sandboxKey(s)) && !this.#sandboxes.alive(s)));
    for (const s of gone) await this.#release(s);
    const live = mine.filter((s) => !gone.includes(s));
    const top = newest(live);
    if (!top) {
      if (pod.metadata?.annotations?.[REDIRECTION_ANNOTATION]) await this.#annotate(pod, null);
      return;
    }
    for (const s of live) if (s !== top) await this.#capture(pod, s, { serve: false, requireProxy: false });
    await this.#capture(pod, top, { serve: true, requireProxy: false });
  }

  /**
   * Captures one sandbox in the kernel (if it is not yet) and, with `serve`, makes it the one the
   * proxy serves for its pod (Add over ZDS; the proxy drops the pod's previous netns). Without a
   * proxy the capture stands (fail closed) and the next snapshot hands the pod over, unless
   * `requireProxy` (a CNI ADD must not return before the proxy serves the pod). The caller has
   * checked that the sandbox's path still names its netns (its cookie), so a namespace that took
   * over a reused path is never captured.
   */
  async #capture(pod: PodObj, sb: Sandbox, o: { serve: boolean; requireProxy: boolean }): Promise<void> {
    const started = performance.now();
    const key = sandboxKey(sb);
    const info = { name: sb.name, namespace: sb.namespace, serviceAccount: pod.spec?.serviceAccountName ?? 'default' };
    try {
      if (o.requireProxy && !this.zds.ready) {
        throw new MeshError('INPOD_ERR_ZDS', `no proxy is connected on ${this.zds.path}; is the inpod ztunnel DaemonSet running on this node?`, { retryable: true });
      }
      let changed = false;
      if (!this.#captured.has(key)) {
        await this.#o.backend.enroll(sb.netns, podCaptureSettings(pod));
        this.#captured.add(key);
        changed = true;
      }
      const prev = this.#served.get(sb.uid);
      if (o.serve && prev?.cookie !== sb.cookie) {
        const z: ServedPod = { uid: sb.uid, info, netnsPath: sb.netns, cookie: sb.cookie };
        this.#served.set(sb.uid, z);
        if (this.zds.ready) {
          try {
            await this.zds.addPod(z);
          } catch (e) {
            // the proxy still serves what it served: say so in the next snapshot
            if (this.#served.get(sb.uid) === z) prev ? this.#served.set(sb.uid, prev) : this.#served.delete(sb.uid);
            throw e;
          }
        }
        if (prev) this.#log.info({ ns: sb.namespace, pod: sb.name, uid: sb.uid, netns: sb.netns, superseded: prev.netnsPath }, 'pod sandbox recreated: the proxy serves the new netns, the old one fails closed until its DEL');
        changed = true;
      }
      if (o.serve && (changed || pod.metadata?.annotations?.[REDIRECTION_ANNOTATION] !== 'enabled')) await this.#annotate(pod, 'enabled');
      if (changed) {
        this.#m.latency.observe((performance.now() - started) / 1000);
        this.#m.enrolled.set(this.#captured.size);
        this.#log.info({ ns: sb.namespace, pod: sb.name, uid: sb.uid, netns: sb.netns, served: o.serve }, 'pod enrolled');
      }
    } catch (e) {
      this.#m.errors.inc({ op: 'enroll' });
      this.#log.warn({ ns: sb.namespace, pod: sb.name, netns: sb.netns, err: (e as Error).message }, 'enroll failed');
      throw e;
    }
  }

  /**
   * Undoes #capture for one sandbox: the proxy stops serving the pod if this is the sandbox it
   * serves (the pod's other sandboxes, if any, stay captured: fail closed), and the kernel stops
   * capturing the netns if it is still the sandbox's (`via`: a path just checked to be it, which
   * spares a second cookie read). The record stays (see #release).
   */
  async #uncapture(sb: Sandbox, via?: string): Promise<void> {
    const key = sandboxKey(sb);
    const served = this.#served.get(sb.uid)?.cookie === sb.cookie;
    const captured = this.#captured.has(key);
    if (!served && !captured) return;
    try {
      if (served) {
        await this.zds.removePod(sb.uid);
        this.#served.delete(sb.uid);
      }
      if (captured) {
        const path = via ?? (this.#sandboxes.alive(sb) ? sb.netns : null);
        if (path) await this.#o.backend.unenroll(path);
        this.#captured.delete(key);
      }
      this.#m.enrolled.set(this.#captured.size);
      this.#log.info({ uid: sb.uid, netns: sb.netns }, 'pod unenrolled');
    } catch (e) {
      this.#m.errors.inc({ op: 'unenroll' });
      throw e;
    }
  }

  /** The sandbox is over (its DEL, or its netns is gone): uncapture it and forget its record. */
  async #release(sb: Sandbox, via?: string): Promise<void> {
    await this.#uncapture(sb, via);
    this.#sandboxes.forget(sb);
  }

  async #annotate(pod: PodObj, value: string | null): Promise<void> {
    try {
      await this.#o.source.annotatePod(pod.metadata!.namespace!, pod.metadata!.name!, REDIRECTION_ANNOTATION, value);
    } catch (e) {
      this.#log.warn({ pod: this.#podKey(pod), err: (e as Error).message }, 'annotation not written (will not block capture)');
    }
  }

  /**
   * After a restart: keep what should be captured (every live sandbox of a pod in the mesh, the
   * newest served), drop what belongs to pods that are gone, forget sandboxes whose netns is gone.
   */
  async #reconcileAll(): Promise<void> {
    const live = new Set(this.#o.source.pods().map((p) => p.metadata?.uid));
    for (const s of this.#sandboxes.all()) if (!live.has(s.uid) || !this.#sandboxes.alive(s)) this.#sandboxes.forget(s);
    const keep = new Map<string, Partial<PodSettings>>();
    const wanted: { pod: PodObj; mine: Sandbox[] }[] = [];
    for (const pod of this.#o.source.pods()) {
      const uid = pod.metadata?.uid ?? '';
      if (!meshVerdict(this.#o.source.namespace(pod.metadata?.namespace ?? ''), pod).enroll) continue;
      let mine = this.#sandboxes.ofPod(uid);
      if (mine.length === 0) mine = [this.#discover(uid, pod.metadata?.namespace ?? '', pod.metadata?.name ?? '')].filter((s): s is Sandbox => !!s);
      if (mine.length === 0) continue;
      for (const s of mine) keep.set(s.netns, podCaptureSettings(pod));
      wanted.push({ pod, mine });
    }
    const left = await this.#o.backend.reconcile(keep);
    for (const { pod, mine } of wanted) {
      for (const s of mine) this.#captured.add(sandboxKey(s));
      const top = newest(mine)!;
      this.#served.set(top.uid, { uid: top.uid, info: { name: top.name, namespace: top.namespace, serviceAccount: pod.spec?.serviceAccountName ?? 'default' }, netnsPath: top.netns, cookie: top.cookie });
      if (pod.metadata?.annotations?.[REDIRECTION_ANNOTATION] !== 'enabled') await this.#annotate(pod, 'enabled');
    }
    this.#m.enrolled.set(this.#captured.size);
    this.#log.info({ kept: left.length }, 'reconciled capture with the cluster');
  }

  /* ------------------------------------------------------------------ CNI events */

  /**
   * ADD: record the sandbox; if the pod belongs in the mesh, capture its netns and make it the
   * one the proxy serves (a pod's latest ADD wins), then return.
   */
  async cniAdd(ev: PodEvent): Promise<{ enrolled: boolean; reason: string }> {
    if (!ev.netns || !existsSync(ev.netns)) throw new MeshError('INPOD_ERR_CNI', `netns ${ev.netns || '(none)'} of pod ${ev.podNamespace}/${ev.podName} does not exist`);
    const cookie = this.#sandboxes.cookieAt(ev.netns);
    if (cookie === null) throw new MeshError('INPOD_ERR_CNI', `${ev.netns} of pod ${ev.podNamespace}/${ev.podName} is not a network namespace; the runtime must pass CNI_NETNS`);
    const pod = await this.#waitForPod(ev.podNamespace, ev.podName, ev.podUid);
    const uid = ev.podUid || pod?.metadata?.uid || `${ev.podNamespace}/${ev.podName}`;
    const sb = this.#sandboxes.add({ uid, namespace: ev.podNamespace, name: ev.podName, netns: ev.netns, cookie, containerId: ev.containerId ?? '' });
    return this.#enqueue(`${ev.podNamespace}/${ev.podName}`, async () => {
      const obj: PodObj = pod ?? { metadata: { name: ev.podName, namespace: ev.podNamespace, uid } };
      const v = meshVerdict(this.#o.source.namespace(ev.podNamespace), obj);
      if (!v.enroll) return { enrolled: false, reason: v.reason };
      // a later ADD for the pod may have come meanwhile: then that one is served, this one captured
      const serve = sandboxKey(newest(this.#sandboxes.ofPod(uid)) ?? sb) === sandboxKey(sb);
      await this.#capture({ ...obj, metadata: { ...obj.metadata, uid } }, sb, { serve, requireProxy: true });
      return { enrolled: true, reason: v.reason };
    });
  }

  /** DEL: releases the sandbox it names (see delTargets), only that one; idempotent. */
  async cniDel(ev: PodEvent): Promise<void> {
    const uid = ev.podUid || this.#sandboxes.all().find((s) => s.namespace === ev.podNamespace && s.name === ev.podName)?.uid;
    if (!uid) return;
    await this.#enqueue(`${ev.podNamespace}/${ev.podName}`, async () => {
      const mine = this.#sandboxes.ofPod(uid);
      if (mine.length === 0) return;
      const cookie = ev.netns ? this.#sandboxes.cookieAt(ev.netns) : null;
      const targets = delTargets(mine, { containerId: ev.containerId ?? '', netns: ev.netns }, cookie, (x) => this.#sandboxes.alive(x));
      // matched by cookie, CNI_NETNS is the sandbox's netns now: one cookie read for the whole DEL
      for (const s of targets) await this.#release(s, cookie !== null ? ev.netns : undefined);
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

  async #startPluginServer(): Promise<void> {
    mkdirSync(dirname(this.#o.pluginSocket), { recursive: true });
    if (existsSync(this.#o.pluginSocket)) unlinkSync(this.#o.pluginSocket);
    this.#plugin = http.createServer((req, res) => {
      let body = '';
      req.on('data', (d) => (body += d));
      req.on('end', () => {
        const reply = (code: number, obj: object): void => {
          res.writeHead(code, { 'content-type': 'application/json' });
          res.end(JSON.stringify(obj));
        };
        let ev: PodEvent;
        try {
          ev = JSON.parse(body) as PodEvent;
        } catch {
          return reply(400, { error: 'request body is not JSON' });
        }
        const op = req.url === '/cmd/add' ? this.cniAdd(ev) : req.url === '/cmd/del' ? this.cniDel(ev).then(() => ({})) : null;
        if (!op) return reply(404, { error: `unknown path ${req.url}` });
        op.then((r) => reply(200, r), (e: Error) => reply(500, { error: e.message }));
      });
    });
    await new Promise<void>((r) => this.#plugin!.listen(this.#o.pluginSocket, () => r()));
  }

  /* ------------------------------------------------------------------ /proc discovery */

  /** A running pod's netns from /proc: a process whose cgroup path names the pod uid. */
  #discover(uid: string, namespace: string, name: string): Sandbox | undefined {
    if (!uid) return undefined;
    const needles = [`pod${uid}`, `pod${uid.replace(/-/g, '_')}`];
    for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
      let cg: string;
      try {
        cg = readFileSync(`/proc/${pid}/cgroup`, 'utf8');
      } catch {
        continue;
      }
      if (!needles.some((n) => cg.includes(n))) continue;
      const netns = `/proc/${pid}/ns/net`;
      const cookie = this.#sandboxes.cookieAt(netns);
      if (cookie !== null) return this.#sandboxes.add({ uid, namespace, name, netns, cookie, containerId: '' });
    }
    return undefined;
  }
}
