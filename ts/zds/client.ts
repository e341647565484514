/**
 * The proxy side of ZDS: connects to the agent (retrying with backoff while it is absent), says
 * ZdsHello, and hands each request to the handler, one at a time, answering each with an Ack, as
 * ztunnel's src/inpod/workloadmanager.rs `process` does:
 * - handled: an empty Ack;
 * - the handler failed (a pod could not be served): an Ack with the error ("nack"); the
 *   connection goes on;
 * - unreadable (truncated, not a WorkloadRequest, no payload, an Add without exactly one fd, an
 *   fd on anything else; protocol.rs `get_workload_data`): a nack, its fds closed, then the
 *   connection ends and the proxy connects again;
 * - a protocol error (the handler throws ZdsProtocolError: Keep after SnapshotSent, a second
 *   SnapshotSent, Add without workload_info; statemanager.rs `process_msg`): a nack, then the
 *   connection ends and the proxy stops talking ZDS for good: `onFatal` is told (ztunnel exits 1,
 *   app.rs, so that its restart backs off instead of spamming an incompatible agent).
 * The handler sees `connected()` before each snapshot.
 */
import { unixConnect, unixSocket } from '../native/index.js';
import { MeshError } from '../util/errors.js';
import { logger, type Logger } from '../util/log.js';
import type { Fd } from '../native/index.js';
import { ZdsConn, type ZdsMessage } from './conn.js';
import { ZdsDecodeError, ZdsProtocolError, decodeRequest, encodeAck, encodeHello, type WorkloadInfo, type WorkloadRequest } from './messages.js';

export interface ZdsHandler {
  connected(): void;
  /** `info` undefined: the Add had no workload_info; ztunnel's answer is a ZdsProtocolError */
  add(uid: string, info: WorkloadInfo | undefined, netns: Fd): Promise<void>;
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
  /** the agent broke the protocol (ZdsProtocolError): the client has stopped for good */
  onFatal?: (e: ZdsProtocolError) => void;
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

  /** stopped: by stop(), or for good after a protocol error of the agent */
  get stopped(): boolean {
    return this.#stopped;
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
    let req: WorkloadRequest | undefined;
    let unreadable = m.unreadable;
    if (!unreadable) {
      try {
        req = decodeRequest(m.data);
        const wantFds = req.kind === 'add' ? 1 : 0;
        if (m.fds.length !== wantFds) throw new ZdsDecodeError(`${req.kind} came with ${m.fds.length} fd(s), expected ${wantFds}`);
      } catch (e) {
        unreadable = (e as Error).message;
      }
    }
    if (unreadable) for (const f of m.fds) f.close();
    const h = this.#opts.handler;
    // one at a time, in order; the agent waits for each Ack anyway
    this.#queue = this.#queue.then(async () => {
      if (conn.closed) {
        for (const f of m.fds) if (!f.closed) f.close(); // the agent resends it in its next snapshot
        return;
      }
      if (unreadable || !req) {
        this.#nackAndEnd(conn, `failure to read message : ${unreadable}`, new MeshError('INPOD_ERR_ZDS', unreadable ?? 'unreadable message'));
        return;
      }
      const r = req;
      try {
        if (r.kind === 'add') await h.add(r.uid, r.info, m.fds[0]!);
        else if (r.kind === 'del') await h.del(r.uid);
        else if (r.kind === 'keep') await h.keep(r.uid);
        else await h.snapshotSent();
      } catch (e) {
        if (r.kind === 'add' && !m.fds[0]!.closed) m.fds[0]!.close();
        if (e instanceof ZdsProtocolError) {
          this.#stopped = true; // as ztunnel: no reconnect after a protocol error
          this.#nackAndEnd(conn, `failure to process message : ${e.message}`, e);
          this.#opts.onFatal?.(e);
          return;
        }
        const what = r.kind === 'add' ? 'failure to start proxy' : 'failure to process message';
        if (!conn.closed) conn.send(encodeAck(`${what} : ${(e as Error).message || String(e)}`));
        return;
      }
      if (!conn.closed) conn.send(encodeAck());
    });
  }

  /** Answers with an error Ack, then ends the connection (reconnecting unless stopped). */
  #nackAndEnd(conn: ZdsConn, nack: string, why: Error): void {
    try {
      if (!conn.closed) conn.send(encodeAck(nack.length > 900 ? `${nack.slice(0, 900)}...` : nack));
    } catch {
      // the agent is gone already: nothing to tell it
    }
    conn.close(why);
  }

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#conn?.close();
  }
}
