/**
 * The agent side of ZDS: listens on a SOCK_SEQPACKET socket for proxies and keeps every one that
 * connects, as istio-cni's ztunnelserver.go connMgr: during a proxy rollout the old and the new
 * proxy are both connected. After a proxy's ZdsHello (any version: istio-cni's handleConn logs
 * it and goes on) it gets the snapshot: Add with the netns fd
 * for every enrolled pod, Keep for a pod whose netns cannot be opened right now, then
 * SnapshotSent. The fd sent is the pod's held netns when the caller holds one (the agent does:
 * istio-cni's sendSnapshot sends the cached netns fd likewise), else its path opened for the send.
 * Then, as pods come and go: Add goes to the newest proxy (LatestConn: the one that stays; an
 * Add sent while its snapshot is still going out waits behind it), Del to every proxy (PodDeleted:
 * an older proxy may still serve the pod). Requests on one connection go one at a time, each
 * waiting for its Ack (5 s by default); an Ack carrying an error rejects the caller with a
 * MeshError naming the pod. The socket path is taken over atomically from an earlier agent and
 * removed at close only if it is still this agent's (ts/util/sockpath.ts).
 */
import { accept, listen, openPath, unixBind, unixSocket, watchReadable, type Fd } from '../native/index.js';
import type { PodNetns } from '../redirect/netns.js';
import { MeshError } from '../util/errors.js';
import { logger, type Logger } from '../util/log.js';
import { SocketPath } from '../util/sockpath.js';
import { ZdsConn, type ZdsMessage } from './conn.js';
import { ZDS_VERSION, decodeAck, decodeHello, encodeRequest, type WorkloadInfo, type WorkloadRequest } from './messages.js';

export const DEFAULT_ZDS_SOCKET = '/var/run/ztunnel/ztunnel.sock';

export interface ZdsPod {
  uid: string;
  info: WorkloadInfo;
  /** the pod's netns path: opened for each send when `netns` is not given; names it in logs */
  netnsPath: string;
  /** the pod's netns, held open by the caller: its fd is what is sent (never closed here) */
  netns?: PodNetns;
}

export interface ZdsServerOptions {
  path?: string;
  /** the pods to snapshot when a proxy connects */
  pods: () => ZdsPod[] | Promise<ZdsPod[]>;
  ackTimeoutMs?: number;
  log?: Logger;
  /** told each time a proxy has received the whole snapshot */
  onReady?: () => void;
}

interface Pending {
  resolve: (error: string) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

/** One connected proxy: its requests go one at a time (ZDS pairs each Ack with the request before it). */
class ProxyConn {
  helloSeen = false;
  pending: Pending | null = null;
  #chain: Promise<unknown> = Promise.resolve();
  conn!: ZdsConn;

  constructor(readonly n: number) {}

  serialize<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.#chain.then(fn, fn);
    this.#chain = p.catch(() => {});
    return p;
  }
}

export class ZdsServer {
  readonly path: string;
  readonly #opts: ZdsServerOptions;
  readonly #log: Logger;
  #listener?: Fd;
  #socket?: SocketPath;
  #stopWatch?: () => void;
  /** connected proxies, oldest first */
  #conns: ProxyConn[] = [];
  #accepted = 0;

  constructor(opts: ZdsServerOptions) {
    this.#opts = opts;
    this.path = opts.path ?? DEFAULT_ZDS_SOCKET;
    this.#log = opts.log ?? logger('zds-server');
  }

  /** Is a proxy there to take Adds (connected and past its hello; its snapshot may be under way)? */
  get ready(): boolean {
    return this.#newest() !== undefined;
  }

  /** Proxies connected and past their hello. */
  get connections(): number {
    return this.#conns.filter((pc) => pc.helloSeen && !pc.conn.closed).length;
  }

  /**
   * Listens on the path, taking it over from an earlier agent's socket (atomically), without
   * accepting yet: a proxy that connects now waits in the backlog until start(). An agent
   * taking over from another does this first (ts/agent/handover.ts). Idempotent.
   */
  listen(): void {
    if (this.#listener) return;
    const l = unixSocket('seqpacket');
    try {
      this.#socket = SocketPath.takeSync(this.path, 'INPOD_ERR_ZDS', (tmp) => {
        unixBind(l.fd, tmp);
        listen(l.fd, 8);
      });
    } catch (e) {
      l.close();
      throw e;
    }
    this.#listener = l;
  }

  /** Listens (see listen()) and serves the proxies that connect. */
  start(): void {
    this.listen();
    const l = this.#listener!;
    this.#stopWatch ??= watchReadable(l.fd, () => {
      for (let c = accept(l.fd); c; c = accept(l.fd)) this.#adopt(c);
    });
  }

  #newest(): ProxyConn | undefined {
    return [...this.#conns].reverse().find((pc) => pc.helloSeen && !pc.conn.closed);
  }

  #adopt(sock: Fd): void {
    const pc = new ProxyConn(++this.#accepted);
    pc.conn = new ZdsConn(sock, (m) => this.#onMessage(pc, m), (why) => this.#onClose(pc, why));
    this.#conns.push(pc);
    this.#log.info({ proxy: pc.n, connected: this.#conns.length }, 'proxy connected');
  }

  #onClose(pc: ProxyConn, why: Error | null): void {
    this.#conns = this.#conns.filter((x) => x !== pc);
    const fields = { proxy: pc.n, connected: this.#conns.length };
    if (why) this.#log.warn({ ...fields, err: why.message }, 'proxy connection closed');
    else this.#log.info(fields, 'proxy disconnected');
    if (pc.pending) {
      clearTimeout(pc.pending.timer);
      pc.pending.reject(new MeshError('INPOD_ERR_ZDS', 'the proxy disconnected before acknowledging', { retryable: true }));
      pc.pending = null;
    }
  }

  #onMessage(pc: ProxyConn, m: ZdsMessage): void {
    const fail = (why: string): void => {
      for (const f of m.fds) f.close();
      pc.conn.close(new MeshError('INPOD_ERR_ZDS', why));
    };
    if (m.unreadable) return fail(m.unreadable);
    if (m.fds.length) return fail(`the proxy sent ${m.fds.length} fd(s); it never should`);
    if (!pc.helloSeen) {
      let hello;
      try {
        hello = decodeHello(m.data);
      } catch (e) {
        return fail((e as Error).message);
      }
      // as istio-cni: the version is logged, never refused (a newer proxy may still speak V1)
      if (hello.version === ZDS_VERSION) this.#log.info({ proxy: pc.n, version: hello.version }, 'proxy said hello');
      else this.#log.warn({ proxy: pc.n, version: hello.version, speaks: ZDS_VERSION }, 'proxy said hello with a ZDS version this agent does not know; going on as istio-cni does');
      pc.helloSeen = true;
      void pc.serialize(() => this.#sendSnapshot(pc)).catch((e: Error) => this.#log.warn({ proxy: pc.n, err: e.message }, 'snapshot failed'));
      return;
    }
    const p = pc.pending;
    if (!p) return fail('unexpected message from the proxy (no request outstanding)');
    pc.pending = null;
    clearTimeout(p.timer);
    try {
      p.resolve(decodeAck(m.data));
    } catch (e) {
      p.reject(e as Error);
      pc.conn.close(e as Error);
    }
  }

  async #sendSnapshot(pc: ProxyConn): Promise<void> {
    const pods = await this.#opts.pods();
    for (const pod of pods) {
      let ns: NetnsFd | null;
      try {
        ns = netnsFd(pod);
      } catch {
        ns = null;
      }
      try {
        if (ns) await this.#request(pc, { kind: 'add', uid: pod.uid, info: pod.info }, ns.fd, pod.uid);
        else await this.#request(pc, { kind: 'keep', uid: pod.uid }, undefined, pod.uid);
      } catch (e) {
        this.#log.warn({ proxy: pc.n, uid: pod.uid, err: (e as Error).message }, 'snapshot entry refused');
        if (pc.conn.closed) throw e;
      } finally {
        ns?.done();
      }
    }
    await this.#request(pc, { kind: 'snapshotSent' });
    this.#log.info({ proxy: pc.n, pods: pods.length }, 'snapshot sent');
    this.#opts.onReady?.();
  }

  /**
   * Sends Add to the newest proxy and waits for its Ack. Rejects (retryable) if no proxy is
   * connected, or if that proxy goes away before it answers.
   */
  addPod(pod: ZdsPod): Promise<void> {
    const pc = this.#newest();
    if (!pc) {
      return Promise.reject(new MeshError('INPOD_ERR_ZDS', `no proxy is connected on ${this.path} to take pod ${pod.uid}; is the inpod ztunnel DaemonSet running on this node?`, { retryable: true }));
    }
    return pc.serialize(async () => {
      const ns = netnsFd(pod);
      try {
        await this.#request(pc, { kind: 'add', uid: pod.uid, info: pod.info }, ns.fd, pod.uid);
      } finally {
        ns.done();
      }
    });
  }

  /**
   * Sends Del to every connected proxy and waits for their Acks. A proxy that goes away
   * meanwhile serves nothing any more and is not waited for; without a proxy there is nothing
   * to tell. Rejects with the first refusal or timeout of a proxy still connected.
   */
  async removePod(uid: string): Promise<void> {
    const all = this.#conns.filter((pc) => pc.helloSeen && !pc.conn.closed);
    const results = await Promise.allSettled(all.map((pc) => pc.serialize(async () => {
      if (!pc.conn.closed) await this.#request(pc, { kind: 'del', uid }, undefined, uid);
    })));
    const failed = results.findIndex((r, i) => r.status === 'rejected' && !all[i]!.conn.closed);
    if (failed >= 0) throw (results[failed] as PromiseRejectedResult).reason;
  }

  #request(pc: ProxyConn, req: WorkloadRequest, fd?: number, uid?: string): Promise<void> {
    const timeoutMs = this.#opts.ackTimeoutMs ?? 5000;
    return new Promise<void>((resolve, reject) => {
      if (pc.conn.closed) return reject(new MeshError('INPOD_ERR_ZDS', `the proxy disconnected before ${req.kind}${uid ? ` for pod ${uid}` : ''} was sent`, { retryable: true }));
      const timer = setTimeout(() => {
        pc.pending = null;
        reject(new MeshError('INPOD_ERR_ZDS', `the proxy did not acknowledge ${req.kind}${uid ? ` for pod ${uid}` : ''} within ${timeoutMs} ms`, { retryable: true }));
      }, timeoutMs);
      pc.pending = {
        timer,
        resolve: (error) => (error ? reject(new MeshError('INPOD_ERR_ZDS', `the proxy refused ${req.kind}${uid ? ` for pod ${uid}` : ''}: ${error}`)) : resolve()),
        reject,
      };
      try {
        pc.conn.send(encodeRequest(req), fd === undefined ? [] : [fd]);
      } catch (e) {
        clearTimeout(timer);
        pc.pending = null;
        reject(e);
      }
    });
  }

  /**
   * Stops listening and closes every proxy connection (each proxy reconnects, to whoever
   * listens on the path then). The path is removed only if it still names this server's socket.
   */
  close(): void {
    this.#stopWatch?.();
    for (const pc of [...this.#conns]) pc.conn.close();
    this.#listener?.close();
    this.#socket?.release();
  }
}

interface NetnsFd {
  readonly fd: number;
  /** closes the fd if it was opened for this send; a held netns stays open */
  done(): void;
}

/**
 * The fd to send for `pod`: its held netns, or its path opened now. A held netns closed meanwhile
 * (the pod released while a snapshot was going out) throws (PodNetns.fd), so it is neither sent
 * by its stale number nor replaced by whatever its path names now: the snapshot sends Keep for it.
 */
function netnsFd(pod: ZdsPod): NetnsFd {
  if (pod.netns) return { fd: pod.netns.fd, done: () => {} };
  const f = openPath(pod.netnsPath);
  return { fd: f.fd, done: () => f.close() };
}
