/**
 * The agent side of ZDS: listens on a SOCK_SEQPACKET socket for the proxy, one connection at a
 * time (a newer connection replaces the older, as when the proxy is upgraded). After the
 * proxy's ZdsHello it sends the snapshot: Add with the netns fd for every enrolled pod, Keep for
 * a pod whose netns cannot be opened right now, then SnapshotSent. The fd sent is the pod's held
 * netns when the caller holds one (the agent does: istio-cni's ztunnelserver.go sendSnapshot sends
 * the cached netns fd likewise), else its path opened for the send. Then Add/Del as pods come and
 * go. Requests go one at a time; each waits for its Ack (5 s by default); an Ack carrying an
 * error rejects the caller with a MeshError naming the pod.
 */
import { chmodSync, existsSync, lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import { accept, listen, openPath, unixBind, unixSocket, watchReadable, type Fd } from '../native/index.js';
import type { PodNetns } from '../redirect/netns.js';
import { MeshError } from '../util/errors.js';
import { logger, type Logger } from '../util/log.js';
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
  /** told when a proxy has received the whole snapshot */
  onReady?: () => void;
}

interface Pending {
  resolve: (error: string) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class ZdsServer {
  readonly path: string;
  readonly #opts: ZdsServerOptions;
  readonly #log: Logger;
  #listener?: Fd;
  #stopWatch?: () => void;
  #conn: ZdsConn | null = null;
  #helloSeen = false;
  #ready = false;
  #pending: Pending | null = null;
  #chain: Promise<unknown> = Promise.resolve();

  constructor(opts: ZdsServerOptions) {
    this.#opts = opts;
    this.path = opts.path ?? DEFAULT_ZDS_SOCKET;
    this.#log = opts.log ?? logger('zds-server');
  }

  /** Is a proxy connected and past its snapshot? */
  get ready(): boolean {
    return this.#ready && !!this.#conn && !this.#conn.closed;
  }

  start(): void {
    mkdirSync(dirname(this.path), { recursive: true, mode: 0o750 });
    if (existsSync(this.path)) {
      if (!lstatSync(this.path).isSocket()) {
        throw new MeshError('INPOD_ERR_ZDS', `${this.path} exists and is not a socket; remove it or pass another --zds path`);
      }
      unlinkSync(this.path); // stale socket from an earlier agent
    }
    const l = unixSocket('seqpacket');
    unixBind(l.fd, this.path);
    chmodSync(this.path, 0o600);
    listen(l.fd, 8);
    this.#listener = l;
    this.#stopWatch = watchReadable(l.fd, () => {
      for (let c = accept(l.fd); c; c = accept(l.fd)) this.#adopt(c);
    });
  }

  #adopt(sock: Fd): void {
    if (this.#conn) {
      this.#log.info('a new proxy connected; replacing the previous connection');
      this.#conn.close(new MeshError('INPOD_ERR_ZDS', 'replaced by a newer proxy connection'));
    }
    this.#helloSeen = false;
    this.#ready = false;
    const conn: ZdsConn = new ZdsConn(sock, (m) => this.#onMessage(conn, m), (why) => this.#onClose(conn, why));
    this.#conn = conn;
  }

  #onClose(conn: ZdsConn, why: Error | null): void {
    if (conn !== this.#conn) return;
    this.#conn = null;
    this.#ready = false;
    if (why) this.#log.warn({ err: why.message }, 'proxy connection closed');
    else this.#log.info('proxy disconnected');
    if (this.#pending) {
      clearTimeout(this.#pending.timer);
      this.#pending.reject(new MeshError('INPOD_ERR_ZDS', 'the proxy disconnected before acknowledging', { retryable: true }));
      this.#pending = null;
    }
  }

  #onMessage(conn: ZdsConn, m: ZdsMessage): void {
    const fail = (why: string): void => {
      for (const f of m.fds) f.close();
      conn.close(new MeshError('INPOD_ERR_ZDS', why));
    };
    if (m.fds.length) return fail(`the proxy sent ${m.fds.length} fd(s); it never should`);
    if (!this.#helloSeen) {
      let hello;
      try {
        hello = decodeHello(m.data);
      } catch (e) {
        return fail((e as Error).message);
      }
      if (hello.version !== ZDS_VERSION) return fail(`unsupported ZDS version ${hello.version} (this agent speaks ${ZDS_VERSION})`);
      this.#helloSeen = true;
      void this.#serialize(() => this.#sendSnapshot(conn)).catch((e: Error) => this.#log.warn({ err: e.message }, 'snapshot failed'));
      return;
    }
    const p = this.#pending;
    if (!p) return fail('unexpected message from the proxy (no request outstanding)');
    this.#pending = null;
    clearTimeout(p.timer);
    try {
      p.resolve(decodeAck(m.data));
    } catch (e) {
      p.reject(e as Error);
      conn.close(e as Error);
    }
  }

  async #sendSnapshot(conn: ZdsConn): Promise<void> {
    const pods = await this.#opts.pods();
    for (const pod of pods) {
      let ns: NetnsFd | null;
      try {
        ns = netnsFd(pod);
      } catch {
        ns = null;
      }
      try {
        if (ns) await this.#request(conn, { kind: 'add', uid: pod.uid, info: pod.info }, ns.fd, pod.uid);
        else await this.#request(conn, { kind: 'keep', uid: pod.uid }, undefined, pod.uid);
      } catch (e) {
        this.#log.warn({ uid: pod.uid, err: (e as Error).message }, 'snapshot entry refused');
        if (conn.closed) throw e;
      } finally {
        ns?.done();
      }
    }
    await this.#request(conn, { kind: 'snapshotSent' });
    this.#ready = true;
    this.#log.info({ pods: pods.length }, 'snapshot sent');
    this.#opts.onReady?.();
  }

  /** Sends Add for a pod and waits for the proxy's Ack. Rejects if no proxy is connected. */
  addPod(pod: ZdsPod): Promise<void> {
    return this.#serialize(async () => {
      const conn = this.#readyConn(pod.uid);
      const ns = netnsFd(pod);
      try {
        await this.#request(conn, { kind: 'add', uid: pod.uid, info: pod.info }, ns.fd, pod.uid);
      } finally {
        ns.done();
      }
    });
  }

  /** Sends Del and waits for the Ack. Without a proxy there is nothing to tell: resolves. */
  removePod(uid: string): Promise<void> {
    return this.#serialize(async () => {
      if (!this.ready) return;
      await this.#request(this.#conn!, { kind: 'del', uid }, undefined, uid);
    });
  }

  #readyConn(uid: string): ZdsConn {
    if (!this.ready) {
      throw new MeshError('INPOD_ERR_ZDS', `no proxy is connected on ${this.path} to take pod ${uid}; is the inpod ztunnel DaemonSet running on this node?`, { retryable: true });
    }
    return this.#conn!;
  }

  #serialize<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.#chain.then(fn, fn);
    this.#chain = p.catch(() => {});
    return p;
  }

  #request(conn: ZdsConn, req: WorkloadRequest, fd?: number, uid?: string): Promise<void> {
    const timeoutMs = this.#opts.ackTimeoutMs ?? 5000;
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending = null;
        reject(new MeshError('INPOD_ERR_ZDS', `the proxy did not acknowledge ${req.kind}${uid ? ` for pod ${uid}` : ''} within ${timeoutMs} ms`, { retryable: true }));
      }, timeoutMs);
      this.#pending = {
        timer,
        resolve: (error) => (error ? reject(new MeshError('INPOD_ERR_ZDS', `the proxy refused ${req.kind}${uid ? ` for pod ${uid}` : ''}: ${error}`)) : resolve()),
        reject,
      };
      try {
        conn.send(encodeRequest(req), fd === undefined ? [] : [fd]);
      } catch (e) {
        clearTimeout(timer);
        this.#pending = null;
        reject(e);
      }
    });
  }

  close(): void {
    this.#stopWatch?.();
    this.#conn?.close();
    this.#listener?.close();
    if (existsSync(this.path)) unlinkSync(this.path);
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
