/**
 * The proxy side of ZDS: connects to the agent (retrying with backoff while it is absent), says
 * ZdsHello, and hands each request to the handler, answering with an Ack (carrying the
 * handler's error message when it failed). Exactly one fd must come with Add and none with
 * anything else; anything malformed closes its fds and resets the connection, which then
 * reconnects. The handler sees `connected()` before each snapshot.
 */
import { unixConnect, unixSocket } from '../native/index.js';
import { MeshError } from '../util/errors.js';
import { logger, type Logger } from '../util/log.js';
import type { Fd } from '../native/index.js';
import { ZdsConn, type ZdsMessage } from './conn.js';
import { ZdsDecodeError, decodeRequest, encodeAck, encodeHello, type WorkloadInfo } from './messages.js';

export interface ZdsHandler {
  connected(): void;
  add(uid: string, info: WorkloadInfo, netns: Fd): Promise<void>;
  del(uid: string): Promise<void> | void;
  keep(uid: string): Promise<void> | void;
  snapshotSent(): Promise<void> | void;
}

export interface ZdsClientOptions {
  path: string;
  handler: ZdsHandler;
  log?: Logger;
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** test hook: the hello version to announce */
  version?: number;
}

export class ZdsClient {
  readonly #opts: ZdsClientOptions;
  readonly #log: Logger;
  #conn: ZdsConn | null = null;
  #stopped = false;
  #timer?: NodeJS.Timeout;
  #backoff: number;
  #queue: Promise<unknown> = Promise.resolve();
  /** Errors that reset a connection (for tests and logs). */
  readonly errors: Error[] = [];
  #onConnected: (() => void)[] = [];

  constructor(opts: ZdsClientOptions) {
    this.#opts = opts;
    this.#log = opts.log ?? logger('zds-client');
    this.#backoff = opts.minBackoffMs ?? 100;
  }

  get connected(): boolean {
    return !!this.#conn && !this.#conn.closed;
  }

  start(): void {
    this.#stopped = false;
    this.#dial();
  }

  /** Resolves once connected (now or later). */
  waitConnected(): Promise<void> {
    if (this.connected) return Promise.resolve();
    return new Promise((r) => this.#onConnected.push(r));
  }

  #dial(): void {
    if (this.#stopped) return;
    const sock = unixSocket('seqpacket');
    try {
      unixConnect(sock.fd, this.#opts.path);
    } catch (e) {
      sock.close();
      this.#log.debug({ err: (e as Error).message, retryInMs: this.#backoff }, 'agent not reachable yet');
      this.#timer = setTimeout(() => this.#dial(), this.#backoff);
      this.#backoff = Math.min(this.#backoff * 2, this.#opts.maxBackoffMs ?? 5000);
      return;
    }
    this.#backoff = this.#opts.minBackoffMs ?? 100;
    const conn: ZdsConn = new ZdsConn(sock, (m) => this.#onMessage(conn, m), (why) => this.#onClose(conn, why));
    this.#conn = conn;
    this.#opts.handler.connected();
    conn.send(encodeHello(this.#opts.version));
    this.#log.info({ path: this.#opts.path }, 'connected to the agent');
    for (const r of this.#onConnected.splice(0)) r();
  }

  #onClose(conn: ZdsConn, why: Error | null): void {
    if (conn !== this.#conn) return;
    this.#conn = null;
    if (why) {
      this.errors.push(why);
      this.#log.warn({ err: why.message }, 'agent connection reset');
    }
    if (!this.#stopped) this.#timer = setTimeout(() => this.#dial(), this.#backoff);
  }

  #onMessage(conn: ZdsConn, m: ZdsMessage): void {
    let req;
    try {
      req = decodeRequest(m.data);
      const wantFds = req.kind === 'add' ? 1 : 0;
      if (m.fds.length !== wantFds) {
        throw new ZdsDecodeError(`${req.kind} came with ${m.fds.length} fd(s), expected ${wantFds}`);
      }
    } catch (e) {
      for (const f of m.fds) f.close();
      conn.close(e instanceof ZdsDecodeError ? new MeshError('INPOD_ERR_ZDS', e.message) : (e as Error));
      return;
    }
    const r = req;
    const h = this.#opts.handler;
    // one at a time, in order; the agent waits for each Ack anyway
    this.#queue = this.#queue.then(async () => {
      let error = '';
      try {
        if (r.kind === 'add') await h.add(r.uid, r.info, m.fds[0]!);
        else if (r.kind === 'del') await h.del(r.uid);
        else if (r.kind === 'keep') await h.keep(r.uid);
        else await h.snapshotSent();
      } catch (e) {
        error = (e as Error).message || String(e);
        if (r.kind === 'add' && !m.fds[0]!.closed) m.fds[0]!.close();
      }
      if (!conn.closed) conn.send(encodeAck(error));
    });
  }

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#conn?.close();
  }
}
