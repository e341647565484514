/**
 * A small mesh for the attacker suite: a Lab node, pods enrolled under one backend, the proxy
 * serving them in this process (which joins the lab cgroup, as the proxy sits in the node's root
 * cgroup in production), socket daemons in the pods, and an attacker's view from the node netns
 * (not enrolled: what any host or pod outside the mesh can send). `close()` removes everything.
 */
import { readdirSync } from 'node:fs';
import http2 from 'node:http2';
import tls from 'node:tls';
import { join } from 'node:path';
import type net from 'node:net';
import type { BackendName, RedirectBackend } from '../../ts/redirect/backend.js';
import { openPath, type Fd } from '../../ts/native/index.js';
import { parseLocalConfig } from '../../ts/state/localconfig.js';
import { StateStore } from '../../ts/state/store.js';
import type { Ztunnel, ZtunnelOptions } from '../../ts/proxy/ztunnel.js';
import { connectIn } from '../../ts/proxy/sockets.js';
import { LocalCa, type IssuedCert } from '../../ts/identity/ca.js';
import type { Lab, LabPod, PodShell } from '../netns/lab.js';
import { Rig } from '../netns/rig.js';

export interface MeshPodSpec {
  name: string;
  namespace: string;
  serviceAccount: string;
  /** enrolled and served by the proxy (default true) */
  mesh?: boolean;
}

export class TestMesh {
  readonly pods: Record<string, LabPod> = {};
  readonly sh: Record<string, PodShell> = {};
  /** uncaught exceptions and unhandled rejections seen while the mesh ran (the proxy must cause none) */
  readonly crashes: Error[] = [];
  zt!: Ztunnel;
  state!: StateStore;
  #nodeNs?: Fd;
  readonly #onCrash = (e: unknown): void => void this.crashes.push(e instanceof Error ? e : new Error(String(e)));

  private constructor(readonly rig: Rig, readonly backendName: BackendName) {}

  get lab(): Lab {
    return this.rig.lab;
  }
  get dir(): string {
    return this.rig.dir;
  }
  get backend(): RedirectBackend {
    return this.rig.backend;
  }
  /** the proxy's log lines, debug and up */
  get records(): Record<string, unknown>[] {
    return this.rig.records;
  }

  /** `node.isHost`: the node netns is the host's (BackendOptions.hostNetns), so its own sockets are kubelet's */
  static async create(backendName: BackendName, specs: MeshPodSpec[], opts: Partial<ZtunnelOptions> = {}, node: { isHost?: boolean } = {}): Promise<TestMesh> {
    const m = new TestMesh(await Rig.create({ tag: 'sec', backend: backendName, hostNetns: node.isHost }), backendName);
    process.on('uncaughtException', m.#onCrash);
    process.on('unhandledRejection', m.#onCrash);
    try {
      await m.#start(specs, opts);
    } catch (e) {
      await m.close();
      throw e;
    }
    return m;
  }

  async #start(specs: MeshPodSpec[], opts: Partial<ZtunnelOptions>): Promise<void> {
    const pods = await Promise.all(specs.map((s) => this.lab.addPod(s.name)));
    specs.forEach((s, i) => (this.pods[s.name] = pods[i]!));
    const ws = specs.filter((s) => s.mesh !== false).map((s) =>
      `  - {uid: u-${s.name}, name: ${s.name}, namespace: ${s.namespace}, serviceAccount: ${s.serviceAccount}, workloadIps: ["${this.pods[s.name]!.ip}"], protocol: HBONE}`);
    this.state = new StateStore();
    this.state.set(parseLocalConfig(`workloads:\n${ws.join('\n')}\n`));
    this.zt = await this.rig.serve(this.state, { level: 'debug', ...opts });
    for (const s of specs) {
      if (s.mesh === false) continue;
      await this.rig.servePod(this.pods[s.name]!, { uid: `u-${s.name}`, name: s.name, namespace: s.namespace, serviceAccount: s.serviceAccount });
    }
    for (const s of specs) this.sh[s.name] = await this.lab.shell(this.pods[s.name]!.netnsPath, { inCgroup: true });
  }

  /** A certificate for any identity, from the mesh's own CA (what a workload of the mesh holds). */
  async cert(namespace: string, serviceAccount: string, trustDomain = 'cluster.local'): Promise<IssuedCert & { rootPem: string }> {
    const ca = await LocalCa.open(join(this.dir, 'ca'), trustDomain);
    return { ...(await ca.issue({ trustDomain, namespace, serviceAccount }, 3600_000)), rootPem: ca.rootPem };
  }

  /** A TCP connection from the node netns (outside the mesh) to `ip:port`. */
  fromNode(ip: string, port: number): Promise<net.Socket> {
    this.#nodeNs ??= openPath(this.lab.nodeNetnsPath);
    return connectIn(this.#nodeNs.fd, { ip, port }, { mark: 0, timeoutMs: 5000 });
  }

  /** An HTTP/2 session over mTLS from the node netns to `ip`:15008, with `namespace/serviceAccount`'s mesh certificate. */
  async hboneSession(ip: string, namespace: string, serviceAccount: string): Promise<http2.ClientHttp2Session> {
    const c = await this.cert(namespace, serviceAccount);
    const sock = tls.connect({ socket: await this.fromNode(ip, 15008), cert: c.chainPem, key: c.keyPem, ca: c.rootPem, ALPNProtocols: ['h2'], checkServerIdentity: () => undefined });
    const session = http2.connect(`https://${ip}:15008`, { createConnection: () => sock });
    session.on('error', () => {});
    return session;
  }

  /** Access-log lines (and other records) logged since index `from` that match `pred`. */
  logs(from: number, pred: (l: Record<string, unknown>) => boolean): Record<string, unknown>[] {
    return this.records.slice(from).filter(pred);
  }

  /** Open file descriptors of this process (the proxy's). */
  static fds(): number {
    return readdirSync('/proc/self/fd').length;
  }

  async close(): Promise<void> {
    process.off('uncaughtException', this.#onCrash);
    process.off('unhandledRejection', this.#onCrash);
    this.#nodeNs?.close();
    await this.rig.destroy();
  }
}

/**
 * The status a CONNECT to `authority` (with `headers`) on `session` is answered with (the stream
 * then closed), 'reset' for a stream reset PROTOCOL_ERROR (a malformed request: RFC 9113 8.1.1;
 * nghttp2, as ztunnel's h2, resets it), or how else its stream ended.
 */
export function connectStatus(session: http2.ClientHttp2Session, authority: string, headers: Record<string, string | string[]> = {}): Promise<number | string> {
  const req = session.request({ ':method': 'CONNECT', ':authority': authority, ...headers });
  return new Promise<number | string>((resolve) => {
    req.once('response', (h) => {
      resolve(Number(h[':status']));
      req.close();
    });
    req.once('error', (e: Error) => resolve(req.rstCode === http2.constants.NGHTTP2_PROTOCOL_ERROR ? 'reset' : e.message));
    req.once('close', () => resolve(`closed (rst ${req.rstCode})`));
  });
}
