/**
 * Carries out what plan.ts decides: captures and releases pod sandboxes with the redirection
 * backend, tells the proxy over ZDS, annotates pods, and keeps the agent's record of what the
 * kernel captures and the proxy serves. Every backend and ZDS call gets the sandbox's netns as
 * the store holds it (opened once), never its path. As istio-cni's NetServer
 * (cni/pkg/nodeagent/net_linux.go AddPodToMesh / RemovePodFromMesh, ztunnelserver.go PodAdded).
 * A sandbox is enrolled with every address its netns holds, IPv4 and IPv6 (podips.ts). The
 * caller serializes the work of one pod.
 */
import { existsSync } from 'node:fs';
import { MeshError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import type { PodNetns, PodSettings, RedirectBackend } from '../redirect/backend.js';
import type { ZdsPod } from '../zds/server.js';
import type { AgentMetrics } from './metrics.js';
import type { Action, RestartPlan, SandboxView } from './plan.js';
import { captureAddresses, type NetnsAddrs } from './podips.js';
import { REDIRECTION_ANNOTATION, type PodObj } from './policy.js';
import { sandboxKey, type Sandbox, type SandboxStore } from './sandboxes.js';
import type { ClusterSource } from './source.js';

/** The ZDS server as the agent uses it (ts/zds/server.ts; a fake in tests). */
export interface AgentZds {
  readonly path: string;
  /** a proxy is connected and has its snapshot */
  readonly ready: boolean;
  /** takes the socket path, not accepting yet (an agent taking over from another); optional */
  listen?(): void;
  start(): void;
  close(): void;
  addPod(pod: ZdsPod): Promise<void>;
  removePod(uid: string): Promise<void>;
}

/** A pod as the proxy serves it: its newest sandbox, with that sandbox's held netns. */
export type ServedPod = ZdsPod & { cookie: string };

export interface DataplaneDeps {
  backend: RedirectBackend;
  zds: AgentZds;
  store: SandboxStore;
  source: Pick<ClusterSource, 'annotatePod'>;
  metrics: AgentMetrics;
  log: Logger;
  /** the global addresses of a held netns (ts/native netnsAddrsOfFd; a fake in tests) */
  addrs: (ns: PodNetns) => NetnsAddrs;
}

export class Dataplane {
  /** sandboxKey of every sandbox captured in the kernel (each has its netns held in the store) */
  readonly captured = new Set<string>();
  /** uid -> the sandbox the proxy serves */
  readonly served = new Map<string, ServedPod>();
  readonly #d: DataplaneDeps;

  constructor(d: DataplaneDeps) {
    this.#d = d;
  }

  /**
   * A sandbox as plan() sees it. With `open`, a sandbox not captured has its path opened (once)
   * to see that it still names its netns, and that netns stays held for the capture that may
   * follow; `settle` closes it if none did.
   */
  view(s: Sandbox, open: boolean): SandboxView {
    const captured = this.captured.has(sandboxKey(s));
    return {
      sandbox: s,
      captured,
      served: this.served.get(s.uid)?.cookie === s.cookie,
      present: existsSync(s.netns),
      alive: open ? this.#d.store.netnsOf(s) !== null : this.#d.store.held(s) !== undefined,
    };
  }

  /** Runs the actions in order; the first failure stops the rest and is thrown. */
  async apply(actions: Action[], pod: PodObj | undefined): Promise<void> {
    for (const a of actions) {
      switch (a.do) {
        case 'capture':
          await this.#capture(a, pod);
          break;
        case 'uncapture':
          await this.#uncapture(a.sandbox);
          break;
        case 'release':
          await this.#uncapture(a.sandbox);
          this.#d.store.forget(a.sandbox);
          break;
        case 'unannotate':
          if (pod) await this.#annotate(pod, null);
          break;
      }
    }
  }

  /** Closes the held netns of those sandboxes that ended up not captured. */
  settle(sandboxes: Sandbox[]): void {
    for (const s of sandboxes) if (!this.captured.has(sandboxKey(s))) this.#d.store.drop(s);
  }

  /** After a restart: the backend keeps exactly `p.keep` (and repairs it), the proxy's snapshot serves `p.serve`. */
  async restart(p: RestartPlan): Promise<number> {
    for (const s of p.forget) this.#d.store.forget(s);
    const keep = new Map<PodNetns, Partial<PodSettings>>();
    for (const { sandbox, settings } of p.keep) keep.set(this.#netns(sandbox), settings);
    const left = await this.#d.backend.reconcile(keep);
    for (const { sandbox } of p.keep) this.captured.add(sandboxKey(sandbox));
    for (const { sandbox, info } of p.serve) {
      this.served.set(sandbox.uid, { uid: sandbox.uid, info, netnsPath: sandbox.netns, netns: this.#netns(sandbox), cookie: sandbox.cookie });
    }
    for (const pod of p.annotate) await this.#annotate(pod, 'enabled');
    this.#d.metrics.enrolled.set(this.captured.size);
    this.settle(this.#d.store.all());
    return left.length;
  }

  /**
   * Captures one sandbox (see the capture action). Without a proxy the capture stands (fail
   * closed) and the next snapshot hands the pod over, unless `requireProxy`. What is already so
   * (captured, served) is not done again.
   */
  async #capture(a: Extract<Action, { do: 'capture' }>, pod: PodObj | undefined): Promise<void> {
    const started = performance.now();
    const sb = a.sandbox;
    const key = sandboxKey(sb);
    try {
      if (a.requireProxy && !this.#d.zds.ready) {
        throw new MeshError('INPOD_ERR_ZDS', `no proxy is connected on ${this.#d.zds.path}; is the inpod ztunnel DaemonSet running on this node?`, { retryable: true });
      }
      let changed = false;
      if (a.enroll && !this.captured.has(key)) {
        const ns = this.#netns(sb);
        // every address the netns holds, both families, goes to the capture layer; the one place
        // a pod with IPv6 is refused while the backend cannot capture IPv6 (fail closed)
        const claimed = sb.containerId ? sb.ips ?? [] : [];
        const podIps = captureAddresses(`${sb.namespace}/${sb.name}`, claimed, this.#d.addrs(ns), { capable: this.#d.backend.ipv6, backend: this.#d.backend.name });
        await this.#d.backend.enroll(ns, { ...a.settings, podIps });
        this.captured.add(key);
        changed = true;
      }
      const prev = this.served.get(sb.uid);
      if (a.serve && prev?.cookie !== sb.cookie) {
        const z: ServedPod = { uid: sb.uid, info: a.info, netnsPath: sb.netns, netns: this.#netns(sb), cookie: sb.cookie };
        this.served.set(sb.uid, z);
        if (this.#d.zds.ready) {
          try {
            await this.#d.zds.addPod(z);
          } catch (e) {
            // the proxy still serves what it served: say so in the next snapshot
            if (this.served.get(sb.uid) === z) prev ? this.served.set(sb.uid, prev) : this.served.delete(sb.uid);
            throw e;
          }
        }
        if (prev) this.#d.log.info({ ns: sb.namespace, pod: sb.name, uid: sb.uid, netns: sb.netns, superseded: prev.netnsPath }, 'pod sandbox recreated: the proxy serves the new netns, the old one fails closed until its DEL');
        changed = true;
      }
      if (a.annotate && pod) await this.#annotate(pod, 'enabled');
      if (changed) {
        this.#d.metrics.latency.observe((performance.now() - started) / 1000);
        this.#d.metrics.enrolled.set(this.captured.size);
        this.#d.log.info({ ns: sb.namespace, pod: sb.name, uid: sb.uid, netns: sb.netns, served: a.serve }, 'pod enrolled');
      }
    } catch (e) {
      this.#d.metrics.errors.inc({ op: 'enroll' });
      this.#d.log.warn({ ns: sb.namespace, pod: sb.name, netns: sb.netns, err: (e as Error).message }, 'enroll failed');
      throw e;
    }
  }

  /**
   * Undoes a capture: the proxy stops serving the pod if this is the sandbox it serves (the pod's
   * other sandboxes, if any, stay captured: fail closed), and the kernel stops capturing the
   * sandbox's netns, reached through the held fd even if its path is gone or names another netns
   * now. The netns is let go; the record stays.
   */
  async #uncapture(sb: Sandbox): Promise<void> {
    const key = sandboxKey(sb);
    const served = this.served.get(sb.uid)?.cookie === sb.cookie;
    const captured = this.captured.has(key);
    if (!served && !captured) return;
    try {
      if (served) {
        await this.#d.zds.removePod(sb.uid);
        this.served.delete(sb.uid);
      }
      if (captured) {
        const ns = this.#d.store.held(sb);
        if (ns) await this.#d.backend.unenroll(ns);
        this.captured.delete(key);
        this.#d.store.drop(sb);
      }
      this.#d.metrics.enrolled.set(this.captured.size);
      this.#d.log.info({ uid: sb.uid, netns: sb.netns }, 'pod unenrolled');
    } catch (e) {
      this.#d.metrics.errors.inc({ op: 'unenroll' });
      throw e;
    }
  }

  /** The sandbox's held netns (opened now if needed); throws if it is gone. */
  #netns(sb: Sandbox): PodNetns {
    const ns = this.#d.store.netnsOf(sb);
    if (!ns) throw new MeshError('INPOD_ERR_NETNS', `the network namespace of pod ${sb.namespace}/${sb.name} (${sb.netns}) is gone`);
    return ns;
  }

  async #annotate(pod: PodObj, value: string | null): Promise<void> {
    try {
      await this.#d.source.annotatePod(pod.metadata!.namespace!, pod.metadata!.name!, REDIRECTION_ANNOTATION, value);
    } catch (e) {
      this.#d.log.warn({ pod: `${pod.metadata?.namespace}/${pod.metadata?.name}`, err: (e as Error).message }, 'annotation not written (will not block capture)');
    }
  }
}
