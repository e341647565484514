/**
 * The proxy (ztunnel role): the pods it serves, keyed by uid, one netns each, with their listeners
 * inside it. ZDS drives it (`zdsHandler()`, ztunnel's src/inpod/statemanager.rs): Add opens a pod
 * (a repeated Add with the same netns keeps the pod and its connections as they are; with another
 * netns, the pod's sandbox was recreated, and the new netns replaces the old), Del closes it, and
 * after a reconnect the snapshot decides who stays. Keep after SnapshotSent, a second
 * SnapshotSent and Add without workload_info are protocol errors (ZdsProtocolError).
 * It makes what the pods share: the HBONE pool, the fast path, the authorizer (ts/policy) and the
 * telemetry (ts/telemetry), the two parts every listener reports to.
 */
import { fstatSync } from 'node:fs';
import { join } from 'node:path';
import { CertManager } from '../identity/manager.js';
import { LocalCa } from '../identity/ca.js';
import type { IdentityProvider } from '../identity/provider.js';
import { StateStore } from '../state/store.js';
import { logger, type Logger } from '../util/log.js';
import type { Fd } from '../native/index.js';
import { PolicyAuthorizer } from '../policy/authorizer.js';
import { IstioTelemetry } from '../telemetry/istio.js';
import { HbonePool } from './pool.js';
import { nodeDialer } from './hbone/client.js';
import { DEFAULT_HBONE_LIMITS, type HboneLimits } from './hbone/limits.js';
import { NativeHbone } from './hbone/native.js';
import { MeshError } from '../util/errors.js';
import type { PodInputs, ProxyDeps } from './inputs.js';
import { PodProxy, type PodInfo } from './pod.js';
import { PolicyWatcher } from './policy-watch.js';
import { ConnectionTable, observers } from './connections.js';
import { FastPath, PROMOTE_DEFAULT } from './fastpath/index.js';
import type { ZdsHandler } from '../zds/client.js';
import { ZdsProtocolError } from '../zds/messages.js';

export interface ZtunnelOptions {
  trustDomain: string;
  caDir: string;
  state: StateStore;
  certTtlMs?: number;
  /** where workload certificates come from (default: the node-local CA in caDir) */
  identity?: IdentityProvider;
  log?: Logger;
  /**
   * splice passthrough / plaintext-inbound connections in the kernel: 'on' as soon as the proxy
   * has decided the connection, 'promote' once it has carried 64 KiB or lasted 50 ms (spares
   * short connections the setup cost), 'off' (default) never: see ARCHITECTURE.md for the
   * measured trade-off
   */
  fastPath?: 'on' | 'promote' | 'off';
  /**
   * 'hbone' (default): pods on this node talk HBONE like any others. 'direct': a connection
   * between two pods this proxy serves skips TLS and is delivered (spliced) inside the node,
   * after the destination's policy check with the client's identity.
   */
  sameNode?: 'hbone' | 'direct';
  /** per-peer limits and keepalive of HBONE connections, both ends (defaults: hbone/limits.ts) */
  hbone?: Partial<HboneLimits>;
  /**
   * What moves HBONE bytes: 'node' (default) Node's tls and http2 in JavaScript; 'native' the
   * addon's engine on its own thread (hbone/native.ts), every decision still made here. See
   * ARCHITECTURE.md "The HBONE byte path" for the measured difference.
   */
  bytePath?: 'node' | 'native';
  /**
   * Makes the proxy of one pod sandbox (default: a PodProxy, whose start() opens the pod's
   * listeners inside its netns). Tests of the pods' lifecycle pass one that opens nothing.
   */
  podProxy?: (info: PodInfo, netns: Fd, deps: ProxyDeps) => PodProxy;
}

export class Ztunnel {
  readonly pods = new Map<string, PodProxy>();
  readonly pool: HbonePool;
  /** the native byte path's engine, when `bytePath` is 'native' */
  readonly native?: NativeHbone;
  readonly log: Logger;
  /** decides inbound connections from the state's AuthorizationPolicies */
  readonly authorizer: PolicyAuthorizer;
  /** closes open inbound connections a policy update denies */
  readonly policyWatch: PolicyWatcher;
  /** Istio's metrics (`registry`, served on 15020) and the access log */
  readonly telemetry: IstioTelemetry;
  /** the connections open now, per pod (the admin's /config_dump) */
  readonly connections = new ConnectionTable();
  readonly fastPath: FastPath;
  /** see ZtunnelOptions.sameNode; may be changed while running (new connections follow it) */
  sameNode: 'hbone' | 'direct';
  #seenSinceSnapshot: Set<string> | null = null;
  /** the current ZDS connection's snapshot has been taken whole */
  #snapshotTaken = false;
  /** pods whose last Add failed (no listeners): the proxy is not ready while any is left */
  readonly #failed = new Set<string>();

  private constructor(readonly opts: ZtunnelOptions, readonly certs: CertManager) {
    this.log = opts.log ?? logger('ztunnel');
    const limits = { ...DEFAULT_HBONE_LIMITS, ...opts.hbone };
    if ((opts.bytePath ?? bytePathSetting()) === 'native') this.native = new NativeHbone(certs, limits);
    this.pool = new HbonePool({ dial: this.native?.dialer() ?? nodeDialer({ certs, connectTimeoutMs: 10_000, h2: limits }) });
    this.authorizer = new PolicyAuthorizer(opts.state, this.log);
    this.policyWatch = new PolicyWatcher(opts.state, this.authorizer);
    this.telemetry = new IstioTelemetry(opts.state, this.log);
    this.telemetry.countProxies(() => ({ active: this.pods.size, pending: this.#failed.size }));
    const mode = opts.fastPath ?? 'off';
    this.sameNode = opts.sameNode ?? 'hbone';
    this.fastPath = new FastPath({ enabled: mode !== 'off', promoteAfter: mode === 'promote' ? PROMOTE_DEFAULT : null, log: this.log, registry: this.telemetry.registry });
  }

  static async create(opts: ZtunnelOptions): Promise<Ztunnel> {
    const ca = opts.identity ?? (await LocalCa.open(opts.caDir, opts.trustDomain));
    return new Ztunnel(opts, new CertManager(ca, { ttlMs: opts.certTtlMs }));
  }

  static defaultCaDir(): string {
    return join('/var/run/inpod', 'ca');
  }

  /**
   * Serves a pod: opens 15001/15006/15008 inside its netns. Idempotent per (uid, netns): a pod
   * already served in this netns keeps its listeners and connections, and the new fd is closed.
   * A served uid with another netns (the runtime recreated the sandbox) is switched over, as
   * ztunnel's add_workload_inner does: the new netns is served first, then the old one stops
   * listening (its open connections finish, as in removePod); the old netns, still captured,
   * then fails closed. If the new netns cannot be served, the old one stays and this throws.
   */
  async addPod(info: PodInfo, netns: Fd): Promise<void> {
    this.#seenSinceSnapshot?.add(info.uid);
    const old = this.pods.get(info.uid);
    if (old && sameNetns(old.netns, netns)) {
      netns.close();
      return;
    }
    const pod = (this.opts.podProxy ?? newPodProxy)(info, netns, {
      state: this.opts.state,
      certs: this.certs,
      pool: this.pool,
      authorizer: this.authorizer,
      policyWatch: this.policyWatch,
      observer: observers(this.telemetry, this.connections),
      log: this.log,
      trustDomain: this.opts.trustDomain,
      fastPath: this.fastPath,
      localPod: (ip) => this.#localPod(ip),
      hboneLimits: this.opts.hbone,
      native: this.native,
    });
    try {
      await pod.start();
    } catch (e) {
      if (!old) this.#failed.add(info.uid);
      throw e;
    }
    this.#failed.delete(info.uid);
    this.pods.set(info.uid, pod);
    this.telemetry.proxyStarted();
    if (old) {
      this.#stop(old);
      this.log.info({ uid: info.uid, pod: info.name, ns: info.namespace }, 'pod netns replaced: serving the new sandbox, the old one drains');
    }
  }

  /** A pod this proxy serves, by IP (through the workload the state puts there). */
  #localPod(ip: string): PodInputs | undefined {
    if (this.sameNode !== 'direct') return undefined;
    const w = this.opts.state.snapshot.byIp.get(ip);
    return w ? this.pods.get(w.uid)?.inputs : undefined;
  }

  /** Stops serving a pod (unknown uids are a no-op). */
  removePod(uid: string): void {
    this.#failed.delete(uid);
    const pod = this.pods.get(uid);
    if (!pod) return;
    this.#stop(pod);
    this.pods.delete(uid);
    // its identity's last pod on this node: its certificate is no longer refreshed (ztunnel's
    // cert_fetcher.rs clear_cert -> forget_certificate)
    if (![...this.pods.values()].some((p) => p.inputs.uri === pod.inputs.uri)) this.certs.forget(pod.identity);
    this.log.info({ uid, pod: pod.info.name, ns: pod.info.namespace }, 'pod removed');
  }

  /** Stops a pod's listeners; it counts as stopped once its connections are over too (ztunnel's proxies_stopped). */
  #stop(pod: PodProxy): void {
    pod.stop();
    void pod.drained.then(() => this.telemetry.proxyStopped());
  }

  /**
   * Keep: the agent knows the pod but could not send its netns; it stays as it is. Only part of
   * a snapshot: outside one it is a protocol error and changes nothing (statemanager.rs).
   */
  keepPod(uid: string): void {
    if (!this.#seenSinceSnapshot) throw new ZdsProtocolError('pod keep received after snapshot');
    this.#seenSinceSnapshot.add(uid);
  }

  /** A new ZDS connection starts a snapshot: remember who it names. */
  snapshotStarted(): void {
    this.#seenSinceSnapshot = new Set();
    this.#snapshotTaken = false;
  }

  /**
   * After SnapshotSent, pods the snapshot did not name are removed. A second one on the same
   * connection is a protocol error and changes nothing (statemanager.rs).
   */
  snapshotSent(): void {
    const seen = this.#seenSinceSnapshot;
    if (!seen) throw new ZdsProtocolError('pod snapshot received already');
    this.#seenSinceSnapshot = null;
    for (const uid of [...this.pods.keys()]) if (!seen.has(uid)) this.removePod(uid);
    for (const uid of [...this.#failed]) if (!seen.has(uid)) this.#failed.delete(uid);
    this.#snapshotTaken = true;
  }

  /**
   * What ZDS drives (ts/zds/client.ts): each request of the agent's connection, in order. An Add
   * without workload_info is refused as ztunnel refuses it (a protocol error; its netns is
   * closed, nothing is opened).
   */
  zdsHandler(): ZdsHandler {
    return {
      connected: () => this.snapshotStarted(),
      add: async (uid, info, netns) => {
        if (!info) {
          netns.close();
          throw new ZdsProtocolError(`workload_info is required but not present (Add for pod ${uid})`);
        }
        await this.addPod({ uid, ...info }, netns);
      },
      del: (uid) => this.removePod(uid),
      keep: (uid) => this.keepPod(uid),
      snapshotSent: () => this.snapshotSent(),
    };
  }

  /**
   * Why the proxy is not ready to take over the node's pods, or null when it is: as ztunnel's
   * statemanager.rs `ready()`, once the agent's snapshot was taken whole and every pod in it is
   * served (a pod whose listeners could not be opened keeps it not ready until an Add for it
   * succeeds or the pod is deleted). A rollout stops the old proxy only once the new one is
   * ready (deploy/ztunnel-daemonset.yaml: maxUnavailable 0), so no pod is ever left without one.
   */
  notReady(): string | null {
    if (!this.#snapshotTaken) return "waiting for the agent's snapshot (ZDS)";
    if (this.#failed.size > 0) return `pods not served (their listeners could not be opened): ${[...this.#failed].join(', ')}`;
    return null;
  }

  /**
   * Stops serving every pod. With `drain`, open connections (HBONE streams included) are left to
   * finish, and the promise resolves once they all have (then the pool and the fast path are
   * closed too); otherwise pooled tunnels are torn down at once.
   */
  async close(o: { drain?: boolean } = {}): Promise<void> {
    const pods = [...this.pods.values()];
    for (const uid of [...this.pods.keys()]) this.removePod(uid);
    if (o.drain) await Promise.all(pods.map((p) => p.drained));
    this.policyWatch.close();
    this.pool.close();
    this.native?.close();
    this.fastPath.close();
    this.certs.close();
  }
}

/**
 * The HBONE byte path: `flag` (`--byte-path`) when given, else INPOD_BYTE_PATH, else 'node'.
 * Anything else is refused (MeshError INPOD_ERR_USAGE naming where it came from). Pure but for
 * the environment.
 */
export function bytePathSetting(flag?: string, env = process.env.INPOD_BYTE_PATH): 'node' | 'native' {
  const v = flag ?? env ?? 'node';
  if (v === 'node' || v === 'native') return v;
  throw new MeshError('INPOD_ERR_USAGE', `${flag !== undefined ? `--byte-path ${flag}` : `INPOD_BYTE_PATH=${JSON.stringify(env)}`}: want node or native`);
}

function newPodProxy(info: PodInfo, netns: Fd, deps: ProxyDeps): PodProxy {
  return new PodProxy(info, netns, deps);
}

/**
 * Do two open fds name the same network namespace? (dev, inode) as ztunnel's netns id
 * (src/inpod/netns.rs): safe because both fds are open, so neither inode can be reused meanwhile.
 */
function sameNetns(a: Fd, b: Fd): boolean {
  const x = fstatSync(a.fd, { bigint: true });
  const y = fstatSync(b.fd, { bigint: true });
  return x.dev === y.dev && x.ino === y.ino;
}
