/**
 * One ZDS connection: a SOCK_SEQPACKET unix socket carrying one protobuf message per packet,
 * with the netns fd as SCM_RIGHTS on Add. Received messages are checked for truncation (data or
 * control) before anyone decodes them: a truncated one reaches the owner as `unreadable` (its fds
 * already closed), for it to answer as its protocol says, then close.
 */
import { EPOLLERR, EPOLLHUP, Fd, recvFds, sendFds, watchReadable, type Received } from '../native/index.js';
import { MeshError } from '../util/errors.js';
import { MAX_MESSAGE } from './messages.js';

export interface ZdsMessage {
  data: Buffer;
  fds: Fd[];
  /** why the message cannot be read (truncated data or control); its data is partial, its fds closed */
  unreadable?: string;
}

export class ZdsConn {
  #stop: () => void;
  #closed = false;
  readonly #onClose: (why: Error | null) => void;

  constructor(readonly sock: Fd, onMessage: (m: ZdsMessage) => void, onClose: (why: Error | null) => void) {
    this.#onClose = onClose;
    this.#stop = watchReadable(sock.fd, (events) => {
      for (;;) {
        if (this.#closed) return;
        let m: Received | null;
        try {
          m = recvFds(sock.fd, MAX_MESSAGE + 1, 2);
        } catch (e) {
          this.close(e as Error);
          return;
        }
        if (m === null) {
          if (events & (EPOLLHUP | EPOLLERR)) this.close(null);
          return;
        }
        if (m.data.length === 0 && m.fds.length === 0) {
          this.close(null); // orderly shutdown by the peer
          return;
        }
        if (m.truncated || m.ctruncated || m.data.length > MAX_MESSAGE) {
          for (const f of m.fds) f.close();
          onMessage({ data: m.data, fds: [], unreadable: `ZDS message over ${MAX_MESSAGE} bytes or with more than one fd: truncated (data=${m.truncated}, control=${m.ctruncated})` });
          continue;
        }
        onMessage({ data: m.data, fds: m.fds });
      }
    });
  }

  get closed(): boolean {
    return this.#closed;
  }

  send(data: Buffer, fds: number[] = []): void {
    if (this.#closed) throw new MeshError('INPOD_ERR_ZDS', 'ZDS connection is closed', { retryable: true });
    if (data.length > MAX_MESSAGE) throw new MeshError('INPOD_ERR_ZDS', `ZDS message of ${data.length} bytes exceeds ${MAX_MESSAGE}`);
    sendFds(this.sock.fd, data, fds);
  }

  /** Closes the socket; `why` (null: orderly) goes to onClose once. */
  close(why: Error | null = null): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#stop();
    this.sock.close();
    this.#onClose(why);
  }
}
