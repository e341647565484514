/**
 * The node agent (istio-cni role): decides which pods are in the mesh, captures them with the
 * redirection backend, hands them to the proxy over ZDS, and annotates them. Work for one pod
 * is serialized; handlers read the source's cache, so a burst of events converges on the last
 * state. On start it reconciles what the kernel already captures before serving anyone.
 */
import http from 'node:http';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { MeshError } from '../util/errors.js';
import { logger, type Logger } from '../util/log.js';
import type { PodSettings, RedirectBackend } from '../redirect/backend.js';
import { ZdsServer, type ZdsPod } from '../zds/server.js';
import { meshVerdict, podCaptureSettings, REDIRECTION_ANNOTATION, type PodObj } from './policy.js';
import type { ClusterSource } from './source.js';
import type { PodEvent } from '../cni/plugin.js';

interface KnownPod {
  uid: string;
  namespace: string;
  name: string;
  netns: string;
}

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

export class Agent {
  readonly zds: ZdsServer;
  readonly registry = new Registry();
  readonly #o: AgentOptions;
  readonly #log: Logger;
  readonly #known = new Map<string, KnownPod>(); // uid -> netns, from CNI events (persisted)
  readonly #enrolled = new Map<string, ZdsPod>();
  readonly #queues = new Map<string, Promise<unknown>>();
  #plugin?: http.Server;
  #synced = false;
  readonly #m;

  constructor(o: AgentOptions) {
    this.#o = o;
    this.#log = o.log ?? logger('agent');
    this.zds = new ZdsServer({ path: o.zdsPath, pods: () => [...this.#enrolled.values()], log: this.#log.child({ component: 'zds' }) });
    this.#m = {
      enrolled: new Gauge({ name: 'inpod_agent_pods_enrolled', help: 'Pods captured on this node', registers: [this.registry] }),
      latency: new Histogram({ name: 'inpod_agent_enroll_seconds', help: 'Time to capture a pod and have the proxy acknowledge it', buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5], registers: [this.registry] }),
      errors: new Counter({ name: 'inpod_agent_errors_total', help: 'Failed enroll/unenroll operations', labelNames: ['op'], registers: [this.registry] }),
    };
  }

  get ready(): boolean {
    return this.#synced;
  }

  /** Pods currently captured (uid -> pod). */
  get enrolled(): ReadonlyMap<string, ZdsPod> {
    return this.#enrolled;
  }

  async start(): Promise<void> {
    this.#loadKnown();
    const synced = new Promise<void>((r) => this.#o.source.once('synced', () => r()));
    this.#o.source.on('pod', (ns, name) => void this.#enqueue(`${ns}/${name}`, () => this.#reconcilePod(ns, name)));
    this.#o.source.on('namespace', (ns) => {
      for (const p of this.#o.source.pods()) if (p.metadata?.namespace === ns) void this.#enqueue(`${ns}/${p.metadata?.name}`, () => this.#reconcilePod(ns, p.metadata!.name!));
    });
    this.#o.source.on('error', (e) => this.#log.warn({ err: e.message }, 'cluster source error (retrying)'));
    await this.#o.source.start();
    await synced;
    await this.#reconcileAll();
    this.zds.start();
    await this.#startPluginServer();
    this.#synced = true;
    this.#log.info({ enrolled: this.#enrolled.size }, 'agent ready');
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
    const current = [...this.#enrolled.values()].find((p) => p.info.namespace === ns && p.info.name === name);
    if (!pod) {
      if (current) await this.#unenroll(current.uid, current.netnsPath, null);
      return;
    }
    const uid = pod.metadata?.uid ?? '';
    const verdict = meshVerdict(this.#o.source.namespace(ns), pod);
    // /proc is scanned only for pods that belong in the mesh and whose netns we never saw
    const known = this.#known.get(uid) ?? (verdict.enroll ? this.#discover(uid, ns, name) : undefined);
    if (verdict.enroll && known && existsSync(known.netns)) {
      if (!this.#enrolled.has(uid)) await this.#enroll(pod, known.netns, false);
      else if (pod.metadata?.annotations?.[REDIRECTION_ANNOTATION] !== 'enabled') await this.#annotate(pod, 'enabled');
    } else if (this.#enrolled.has(uid)) {
      this.#log.info({ ns, pod: name, reason: verdict.reason }, 'leaving the mesh');
      await this.#unenroll(uid, this.#enrolled.get(uid)!.netnsPath, pod);
    } else if (pod.metadata?.annotations?.[REDIRECTION_ANNOTATION]) {
      await this.#annotate(pod, null);
    }
  }

  async #enroll(pod: PodObj, netns: string, requireProxy: boolean): Promise<void> {
    const started = performance.now();
    const uid = pod.metadata!.uid!;
    const info = { name: pod.metadata!.name!, namespace: pod.metadata!.namespace!, serviceAccount: pod.spec?.serviceAccountName ?? 'default' };
    const settings: Partial<PodSettings> = podCaptureSettings(pod);
    try {
      if (requireProxy && !this.zds.ready) {
        throw new MeshError('INPOD_ERR_ZDS', `no proxy is connected on ${this.zds.path}; is the inpod ztunnel DaemonSet running on this node?`, { retryable: true });
      }
      await this.#o.backend.enroll(netns, settings);
      const zpod = { uid, info, netnsPath: netns };
      this.#enrolled.set(uid, zpod);
      // Without a proxy the capture stands (fail closed) and the next snapshot hands it over.
      if (this.zds.ready) await this.zds.addPod(zpod);
      await this.#annotate(pod, 'enabled');
      this.#m.latency.observe((performance.now() - started) / 1000);
      this.#m.enrolled.set(this.#enrolled.size);
      this.#log.info({ ns: info.namespace, pod: info.name, uid, netns }, 'pod enrolled');
    } catch (e) {
      this.#m.errors.inc({ op: 'enroll' });
      this.#log.warn({ ns: info.namespace, pod: info.name, err: (e as Error).message }, 'enroll failed');
      throw e;
    }
  }

  async #unenroll(uid: string, netns: string, pod: PodObj | null): Promise<void> {
    try {
      await this.zds.removePod(uid);
      if (existsSync(netns)) await this.#o.backend.unenroll(netns);
      this.#enrolled.delete(uid);
      this.#m.enrolled.set(this.#enrolled.size);
      if (pod) await this.#annotate(pod, null);
      this.#log.info({ uid, netns }, 'pod unenrolled');
    } catch (e) {
      this.#m.errors.inc({ op: 'unenroll' });
      throw e;
    }
  }

  async #annotate(pod: PodObj, value: string | null): Promise<void> {
    try {
      await this.#o.source.annotatePod(pod.metadata!.namespace!, pod.metadata!.name!, REDIRECTION_ANNOTATION, value);
    } catch (e) {
      this.#log.warn({ pod: this.#podKey(pod), err: (e as Error).message }, 'annotation not written (will not block capture)');
    }
  }

  /** After a restart: keep what should be captured, drop what belongs to pods that are gone. */
  async #reconcileAll(): Promise<void> {
    const keep = new Map<string, Partial<PodSettings>>();
    const wanted: { pod: PodObj; netns: string }[] = [];
    for (const pod of this.#o.source.pods()) {
      const uid = pod.metadata?.uid ?? '';
      if (!meshVerdict(this.#o.source.namespace(pod.metadata?.namespace ?? ''), pod).enroll) continue;
      const known = this.#known.get(uid) ?? this.#discover(uid, pod.metadata?.namespace ?? '', pod.metadata?.name ?? '');
      if (!known || !existsSync(known.netns)) continue;
      keep.set(known.netns, podCaptureSettings(pod));
      wanted.push({ pod, netns: known.netns });
    }
    const left = await this.#o.backend.reconcile(keep);
    for (const { pod, netns } of wanted) {
      this.#enrolled.set(pod.metadata!.uid!, { uid: pod.metadata!.uid!, info: { name: pod.metadata!.name!, namespace: pod.metadata!.namespace!, serviceAccount: pod.spec?.serviceAccountName ?? 'default' }, netnsPath: netns });
      if (pod.metadata?.annotations?.[REDIRECTION_ANNOTATION] !== 'enabled') await this.#annotate(pod, 'enabled');
    }
    // forget netns records of pods that are gone
    const live = new Set(this.#o.source.pods().map((p) => p.metadata?.uid));
    for (const uid of [...this.#known.keys()]) if (!live.has(uid)) this.#forget(uid);
    this.#m.enrolled.set(this.#enrolled.size);
    this.#log.info({ kept: left.length }, 'reconciled capture with the cluster');
  }

  /* ------------------------------------------------------------------ CNI events */

  /** ADD: record the netns; capture and hand over if the pod belongs in the mesh. */
  async cniAdd(ev: PodEvent): Promise<{ enrolled: boolean; reason: string }> {
    if (!ev.netns || !existsSync(ev.netns)) throw new MeshError('INPOD_ERR_CNI', `netns ${ev.netns || '(none)'} of pod ${ev.podNamespace}/${ev.podName} does not exist`);
    const pod = await this.#waitForPod(ev.podNamespace, ev.podName, ev.podUid);
    const uid = ev.podUid || pod?.metadata?.uid || `${ev.podNamespace}/${ev.podName}`;
    this.#remember({ uid, namespace: ev.podNamespace, name: ev.podName, netns: ev.netns });
    return this.#enqueue(`${ev.podNamespace}/${ev.podName}`, async () => {
      const obj: PodObj = pod ?? { metadata: { name: ev.podName, namespace: ev.podNamespace, uid } };
      const v = meshVerdict(this.#o.source.namespace(ev.podNamespace), obj);
      if (!v.enroll) return { enrolled: false, reason: v.reason };
      if (!this.#enrolled.has(uid)) await this.#enroll({ ...obj, metadata: { ...obj.metadata, uid } }, ev.netns, true);
      return { enrolled: true, reason: v.reason };
    });
  }

  /** DEL: idempotent; unknown pods are fine. */
  async cniDel(ev: PodEvent): Promise<void> {
    const uid = ev.podUid || [...this.#known.values()].find((k) => k.namespace === ev.podNamespace && k.name === ev.podName)?.uid;
    if (!uid) return;
    await this.#enqueue(`${ev.podNamespace}/${ev.podName}`, async () => {
      const e = this.#enrolled.get(uid);
      if (e) await this.#unenroll(uid, e.netnsPath, null);
      this.#forget(uid);
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

  /* ------------------------------------------------------------------ netns records */

  #recordDir(): string {
    return join(this.#o.stateDir, 'pods');
  }

  #remember(k: KnownPod): void {
    this.#known.set(k.uid, k);
    mkdirSync(this.#recordDir(), { recursive: true });
    writeFileSync(join(this.#recordDir(), `${encodeURIComponent(k.uid)}.json`), JSON.stringify(k));
  }

  #forget(uid: string): void {
    this.#known.delete(uid);
    rmSync(join(this.#recordDir(), `${encodeURIComponent(uid)}.json`), { force: true });
  }

  #loadKnown(): void {
    if (!existsSync(this.#recordDir())) return;
    for (const f of readdirSync(this.#recordDir())) {
      try {
        const k = JSON.parse(readFileSync(join(this.#recordDir(), f), 'utf8')) as KnownPod;
        this.#known.set(k.uid, k);
      } catch {
        rmSync(join(this.#recordDir(), f), { force: true });
      }
    }
  }

  /** A running pod's netns from /proc: a process whose cgroup path names the pod uid. */
  #discover(uid: string, namespace: string, name: string): KnownPod | undefined {
    if (!uid) return undefined;
    const needles = [`pod${uid}`, `pod${uid.replace(/-/g, '_')}`];
    for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
      let cg: string;
      try {
        cg = readFileSync(`/proc/${pid}/cgroup`, 'utf8');
      } catch {
        continue;
      }
      if (needles.some((n) => cg.includes(n))) {
        const k = { uid, namespace, name, netns: `/proc/${pid}/ns/net` };
        this.#remember(k);
        return k;
      }
    }
    return undefined;
  }
}
