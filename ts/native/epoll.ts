/**
 * The one fd watcher (addon/src/epoll.cc): an epoll instance on its own thread, reporting
 * events on the JS thread with the token each fd was registered under. Two uses, one design:
 * watchReadable (ZDS's SOCK_SEQPACKET sockets, which Node cannot wrap: EPOLLIN one-shot,
 * re-armed once the callback has drained the fd) on one watcher shared by the process, and
 * HupWatcher (the fast path's spliced sockets, which Node does not read: EPOLLRDHUP one-shot).
 */
import { SyscallError, check } from '../util/errors.js';
import { addon, type EpollHandle } from './addon.js';

export const EPOLLIN = 0x1;
export const EPOLLERR = 0x8;
export const EPOLLHUP = 0x10;
export const EPOLLRDHUP = 0x2000;
export const EPOLLONESHOT = 1 << 30;
const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_DEL = 2;
const EPOLL_CTL_MOD = 3;

/**
 * Fds watched by one thread. `onEvent(token, events)` runs on the JS thread, for an fd's events
 * (EPOLL* bits; EPOLLERR and EPOLLHUP are always reported) or, with events 0 and a value, for
 * a ring buffer sample. An event can arrive after its fd was removed: handlers look the token up.
 * The thread does not keep the process alive unless keepAlive(true).
 */
export class Epoll {
  #h: EpollHandle | null;
  constructor(onEvent: (token: number, events: number, value?: number) => void) {
    this.#h = check('epoll_create1', addon().epollNew(onEvent));
  }
  get #handle(): EpollHandle {
    if (!this.#h) throw new SyscallError('use', 9 /* EBADF */, 'epoll watcher closed');
    return this.#h;
  }
  /** Starts watching `fd` for `events`, reported with `token` (an integer below 2^53 - 2). */
  add(fd: number, events: number, token: number): void {
    check('epoll_ctl(ADD)', addon().epollCtl(this.#handle, EPOLL_CTL_ADD, fd, events, token));
  }
  /** Changes what `fd` is watched for (and re-arms a one-shot watch). */
  modify(fd: number, events: number, token: number): void {
    check('epoll_ctl(MOD)', addon().epollCtl(this.#handle, EPOLL_CTL_MOD, fd, events, token));
  }
  /** Forgets `fd` (call before closing it); false if it was not watched or the watcher is closed. */
  remove(fd: number): boolean {
    if (!this.#h) return false;
    return addon().epollCtl(this.#h, EPOLL_CTL_DEL, fd, 0, 0) === 0;
  }
  /** Also reports each u64 written to the BPF ring buffer `mapFd`, as onEvent(token, 0, value). Once. */
  ringbuf(mapFd: number, token: number): void {
    check('ring_buffer__new', addon().epollRingbuf(this.#handle, mapFd, token));
  }
  /** Whether the watcher keeps the process alive (as a listening socket does). */
  keepAlive(on: boolean): void {
    if (this.#h) addon().epollRef(this.#h, on);
  }
  /** Stops the thread; the watched fds stay open. Idempotent. */
  close(): void {
    if (this.#h) addon().epollClose(this.#h);
    this.#h = null;
  }
}

/**
 * One thread watching many sockets for their peer's FIN or reset (EPOLLRDHUP, one-shot): data
 * arriving does not wake it. `onHup(token, events)` runs on the JS thread.
 */
export class HupWatcher extends Epoll {
  /** Reports `fd` once, with `token`, when its peer half-closes or resets. */
  watch(fd: number, token: number): void {
    this.add(fd, EPOLLRDHUP | EPOLLONESHOT, token);
  }
  /** After the FIN was reported: report `fd` once more, only on error or full hang-up. */
  rearmErrors(fd: number, token: number): void {
    this.modify(fd, EPOLLONESHOT, token);
  }
  /** Forget `fd` (before it is closed); false if it was not watched. */
  unwatch(fd: number): boolean {
    return this.remove(fd);
  }
}

/** The watcher behind watchReadable: created by the first watch, closed when the last one stops. */
interface Readable {
  ep: Epoll;
  handlers: Map<number, (events: number) => void>;
  next: number;
}
let readable: Readable | undefined;

function acquire(): Readable {
  if (!readable) {
    const handlers = new Map<number, (events: number) => void>();
    readable = { ep: new Epoll((token, events) => handlers.get(token)?.(events)), handlers, next: 1 };
    readable.ep.keepAlive(true); // as a listening socket would
  }
  return readable;
}

function release(w: Readable, token: number): void {
  w.handlers.delete(token);
  if (w.handlers.size > 0) return;
  w.ep.close();
  if (readable === w) readable = undefined;
}

/**
 * Calls `onReadable(events)` on the JS thread whenever `fd` is readable or hung up (EPOLL*
 * bits). The watch re-arms after `onReadable` returns, so drain the fd inside it. All watches
 * share one thread, which keeps the process alive while any fd is watched and exits when none
 * is. Returns a function that stops watching (idempotent): call it before closing the fd,
 * which stays open.
 */
export function watchReadable(fd: number, onReadable: (events: number) => void): () => void {
  const w = acquire();
  const token = w.next++;
  let stopped = false;
  const stop = (): void => {
    if (stopped) return;
    stopped = true;
    w.ep.remove(fd);
    release(w, token);
  };
  w.handlers.set(token, (events) => {
    if (stopped) return;
    try {
      onReadable(events);
    } finally {
      if (!stopped) rearm(w.ep, fd, token, stop);
    }
  });
  try {
    w.ep.add(fd, EPOLLIN | EPOLLONESHOT, token);
  } catch (e) {
    release(w, token);
    throw e;
  }
  return stop;
}

/** Re-arms a one-shot read watch; an fd the callback closed without stopping ends its watch. */
function rearm(ep: Epoll, fd: number, token: number, stop: () => void): void {
  try {
    ep.modify(fd, EPOLLIN | EPOLLONESHOT, token);
  } catch (e) {
    const code = (e as SyscallError).code;
    if (code !== 'EBADF' && code !== 'ENOENT') throw e;
    stop();
  }
}
