/**
 * Typed wrapper of the native addon: every failure becomes a SyscallError naming the errno and
 * the syscall; fds are objects that must be closed. Nothing here decides policy.
 */
import { closeSync, openSync } from 'node:fs';
import { SyscallError, check } from '../util/errors.js';
import { addon, type SockAddr, type SocketSpec, type SysFail, type LinkInfoRaw, type SkelHandle, type HupWatcherHandle } from './addon.js';

export type { SockAddr, SocketSpec, LinkInfoRaw } from './addon.js';
export { addon } from './addon.js';

function isFail(v: unknown): v is SysFail {
  return typeof v === 'object' && v !== null && 'errno' in v && 'syscall' in v;
}

function checkComposite<T>(v: T | SysFail, detail?: string): T {
  if (isFail(v)) throw new SyscallError(v.syscall, v.errno, detail);
  return v;
}

const finalizer = new FinalizationRegistry<number>((fd) => {
  try {
    closeSync(fd);
  } catch {
    /* already closed elsewhere */
  }
});

/** A file descriptor owned by JavaScript. Close it; closing on GC is only a fallback. */
export class Fd {
  #fd: number;
  constructor(fd: number) {
    this.#fd = fd;
    finalizer.register(this, fd, this);
  }
  get fd(): number {
    if (this.#fd < 0) throw new SyscallError('use', 9 /* EBADF */, 'fd already closed');
    return this.#fd;
  }
  get closed(): boolean {
    return this.#fd < 0;
  }
  /** Hands the raw fd to a new owner (e.g. net.Socket); this object forgets it. */
  release(): number {
    const fd = this.fd;
    finalizer.unregister(this);
    this.#fd = -1;
    return fd;
  }
  close(): void {
    if (this.#fd < 0) return;
    finalizer.unregister(this);
    closeSync(this.#fd);
    this.#fd = -1;
  }
}

/** Opens a file (a netns, a cgroup directory, a pin) read-only. */
export function openPath(path: string): Fd {
  return new Fd(openSync(path, 'r'));
}

export function withFd<T>(path: string, fn: (fd: number) => T): T {
  const f = openPath(path);
  try {
    return fn(f.fd);
  } finally {
    f.close();
  }
}

/** The netns cookie of the namespace behind `path` (SO_NETNS_COOKIE seen from inside it). */
export function netnsCookie(path: string): bigint {
  return withFd(path, (fd) => checkComposite(addon().netnsCookie(fd), path));
}

/** A TCP socket created inside the netns at `netnsPath` (null: this process's netns). */
export function socketIn(netnsPath: string | null, spec: SocketSpec): Fd {
  if (netnsPath === null) return new Fd(checkComposite(addon().socketIn(-1, spec)));
  return withFd(netnsPath, (ns) => new Fd(checkComposite(addon().socketIn(ns, spec), netnsPath)));
}

export const SOL_SOCKET = 1;
export const SOL_IP = 0;
export const SO_MARK = 36;
export const IP_TRANSPARENT = 19;

export function origDst(fd: number): SockAddr {
  return check('getsockopt(SO_ORIGINAL_DST)', addon().origDst(fd));
}
export function sockName(fd: number): SockAddr {
  return check('getsockname', addon().sockName(fd));
}
export function peerName(fd: number): SockAddr {
  return check('getpeername', addon().peerName(fd));
}
export function setMark(fd: number, mark: number): void {
  check('setsockopt(SO_MARK)', addon().setsockoptInt(fd, SOL_SOCKET, SO_MARK, mark));
}
export function getMark(fd: number): number {
  return check('getsockopt(SO_MARK)', addon().getsockoptInt(fd, SOL_SOCKET, SO_MARK));
}
export function setTransparent(fd: number, on = true): void {
  check('setsockopt(IP_TRANSPARENT)', addon().setsockoptInt(fd, SOL_IP, IP_TRANSPARENT, on ? 1 : 0));
}
export function socketCookie(fd: number): bigint {
  return check('getsockopt(SO_COOKIE)', addon().socketCookie(fd));
}

/** Bytes the TCP socket has taken for sending (acked + queued), offset by a per-connection constant. */
export function tcpWritten(fd: number): number {
  return check('getsockopt(TCP_INFO)', addon().tcpWritten(fd));
}
/** Bytes the TCP socket has received in order so far (a received FIN counts as one). */
export function tcpReceived(fd: number): number {
  return check('getsockopt(TCP_INFO)', addon().tcpReceived(fd));
}
/** Bytes received and not yet read. */
export function tcpInq(fd: number): number {
  return check('ioctl(SIOCINQ)', addon().tcpInq(fd));
}
/** Readable bytes without consuming them: null when none (EAGAIN), 0 at EOF. */
export function recvPeek(fd: number): number | null {
  const r = addon().recvPeek(fd);
  if (r === -11) return null;
  return check('recv(MSG_PEEK)', r);
}
/**
 * Reads everything the socket holds, without waiting: up to `max` bytes (`more`: there was more),
 * `eof` when the peer's FIN was reached.
 */
export function recvAll(fd: number, max: number): { data: Buffer; eof: boolean; more: boolean } {
  return check('recv', addon().recvAll(fd, max));
}
export const SO_ERROR = 4;
/** The socket's pending error (SO_ERROR, cleared by reading): 0 or an errno. */
export function sockError(fd: number): number {
  return check('getsockopt(SO_ERROR)', addon().getsockoptInt(fd, SOL_SOCKET, SO_ERROR));
}

/**
 * One thread watching many sockets for their peer's FIN or reset (EPOLLRDHUP, one-shot): data
 * arriving does not wake it. `onHup(token, revents)` runs on the JS thread.
 */
export class HupWatcher {
  #h: HupWatcherHandle | null;
  constructor(onHup: (token: number, revents: number, value?: number) => void) {
    this.#h = check('epoll_create1', addon().hupWatcher(onHup));
  }
  /** Also reports each u64 written to the BPF ring buffer `mapFd`, as onHup(token, 0, value). */
  ringbuf(mapFd: number, token: number): void {
    if (!this.#h) throw new SyscallError('use', 9, 'hup watcher closed');
    check('ring_buffer__new', addon().hupRingbuf(this.#h, mapFd, token));
  }
  /** Reports `fd` once, with `token`, when its peer half-closes or resets. */
  watch(fd: number, token: number): void {
    if (!this.#h) throw new SyscallError('use', 9, 'hup watcher closed');
    check('epoll_ctl(ADD)', addon().hupWatch(this.#h, fd, token));
  }
  /** After the FIN was reported: report `fd` once more, only on error or full hang-up. */
  rearmErrors(fd: number, token: number): void {
    if (!this.#h) throw new SyscallError('use', 9, 'hup watcher closed');
    check('epoll_ctl(MOD)', addon().hupRearm(this.#h, fd, token));
  }
  /** Forget `fd` (before it is closed); false if it was not watched. */
  unwatch(fd: number): boolean {
    if (!this.#h) return false;
    return addon().hupUnwatch(this.#h, fd) === 0;
  }
  close(): void {
    if (this.#h) addon().hupWatcherClose(this.#h);
    this.#h = null;
  }
}
export const EPOLLERR = 0x8;
export const EPOLLRDHUP = 0x2000;

/** A unix socket pair (SOCK_SEQPACKET keeps message boundaries). */
export function socketPair(type: 'seqpacket' | 'stream'): [Fd, Fd] {
  const [a, b] = check('socketpair', addon().socketPair(type));
  return [new Fd(a), new Fd(b)];
}
export function unixSocket(type: 'seqpacket' | 'stream'): Fd {
  return new Fd(check('socket(AF_UNIX)', addon().unixSocket(type)));
}
export function unixBind(fd: number, path: string): void {
  check('bind', addon().unixBind(fd, path), path);
}
export function unixConnect(fd: number, path: string): void {
  check('connect', addon().unixConnect(fd, path), path);
}
export function listen(fd: number, backlog: number): void {
  check('listen', addon().listen(fd, backlog));
}
/** Returns null when no connection is waiting (EAGAIN). */
export function accept(fd: number): Fd | null {
  const r = addon().accept(fd);
  if (r === -11) return null;
  return new Fd(check('accept4', r));
}
/** Sends one message with `fds` attached as SCM_RIGHTS (the fds stay open here). */
export function sendFds(fd: number, data: Buffer, fds: number[] = []): number {
  return check('sendmsg', addon().sendFds(fd, data, fds));
}
export interface Received {
  data: Buffer;
  fds: Fd[];
  truncated: boolean;
  ctruncated: boolean;
}
/** Receives one message and its fds; null when nothing is waiting (EAGAIN). */
export function recvFds(fd: number, maxBytes: number, maxFds: number): Received | null {
  const r = addon().recvFds(fd, maxBytes, maxFds);
  if (r === -11) return null;
  const v = check('recvmsg', r);
  return { data: v.data, fds: v.fds.map((n) => new Fd(n)), truncated: v.truncated, ctruncated: v.ctruncated };
}

export const BPF_FS_MAGIC = 0xcafe4a11;
export const CGROUP2_SUPER_MAGIC = 0x63677270;
export const NSFS_MAGIC = 0x6e736673;

/** The filesystem type of `path` (statfs f_type). */
export function statfsType(path: string): number {
  return check('statfs', addon().statfsType(path), path);
}

/* ------------------------------------------------------------------ eBPF */

/** A bpf map by fd with fixed key and value sizes. */
export class BpfMap {
  constructor(readonly name: string, readonly fd: number, readonly keySize: number, readonly valueSize: number) {}
  update(key: Buffer, value: Buffer, flags = 0): void {
    check('bpf(BPF_MAP_UPDATE_ELEM)', addon().mapUpdate(this.fd, key, value, flags), this.name);
  }
  /** The value, or null if the key is absent. */
  lookup(key: Buffer): Buffer | null {
    const r = addon().mapLookup(this.fd, key, this.valueSize);
    if (r === -2) return null;
    return check('bpf(BPF_MAP_LOOKUP_ELEM)', r, this.name);
  }
  /** Deletes the key; returns false if it was absent. */
  delete(key: Buffer): boolean {
    const r = addon().mapDelete(this.fd, key);
    if (r === -2) return false;
    check('bpf(BPF_MAP_DELETE_ELEM)', r, this.name);
    return true;
  }
  /** Sum of a per-CPU array slot (values are u64 per possible CPU). */
  sumPerCpu(index: number): bigint {
    const key = Buffer.alloc(4);
    key.writeUInt32LE(index);
    const v = this.lookup(key);
    let sum = 0n;
    if (v) for (let off = 0; off + 8 <= v.length; off += 8) sum += v.readBigUInt64LE(off);
    return sum;
  }
  keys(): Buffer[] {
    const out: Buffer[] = [];
    let cur: Buffer | null = null;
    for (;;) {
      const r: Buffer | number = addon().mapNextKey(this.fd, cur, this.keySize);
      if (r === -2) return out;
      cur = check('bpf(BPF_MAP_GET_NEXT_KEY)', r, this.name);
      out.push(cur);
    }
  }
}

/** A loaded skeleton (one bpf/*.bpf.c object) whose maps are pinned by name under pinRoot. */
export class BpfObject {
  #h: SkelHandle | null;
  private constructor(readonly name: string, h: SkelHandle) {
    this.#h = h;
  }
  /** `config`: the capture settings (.rodata); null for an object that has none (fastpath). */
  static open(name: string, pinRoot: string, config: Buffer | null): BpfObject {
    const h = addon().skelOpen(name, pinRoot);
    if (typeof h === 'number') throw new SyscallError('bpf_object__open', -h, name);
    const o = new BpfObject(name, h);
    if (config) check('skel rodata', addon().skelSetConfig(h, config), name);
    return o;
  }
  private get h(): SkelHandle {
    if (!this.#h) throw new SyscallError('use', 9, `bpf object ${this.name} destroyed`);
    return this.#h;
  }
  /** Load only the named programs (others are skipped). */
  only(progs: string[], all: string[]): void {
    for (const p of all) check('bpf_program__set_autoload', addon().skelAutoload(this.h, p, progs.includes(p)), p);
  }
  load(): void {
    const r = addon().skelLoad(this.h);
    if (r < 0) {
      const log = addon().libbpfLog().trim().split('\n').slice(-12).join('\n');
      throw new SyscallError('bpf_object__load', -r, `${this.name}${log ? `:\n${log}` : ''}`);
    }
  }
  prog(name: string): { fd: number; attachType: number } {
    return check('bpf_object__find_program_by_name', addon().skelProg(this.h, name), name);
  }
  mapFd(name: string): number {
    return check('bpf_object__find_map_by_name', addon().skelMap(this.h, name), name);
  }
  /** Closes the object's fds; pinned maps and links keep working. */
  destroy(): void {
    if (this.#h) addon().skelDestroy(this.#h);
    this.#h = null;
  }
}

export function objPin(fd: number, path: string): void {
  check('bpf(BPF_OBJ_PIN)', addon().objPin(fd, path), path);
}
/** Opens a pinned object; null if the pin does not exist. */
export function objGet(path: string): Fd | null {
  const r = addon().objGet(path);
  if (r === -2) return null;
  return new Fd(check('bpf(BPF_OBJ_GET)', r, path));
}
export function linkCreate(progFd: number, targetFd: number, attachType: number): Fd {
  return new Fd(check('bpf(BPF_LINK_CREATE)', addon().linkCreate(progFd, targetFd, attachType)));
}
/** Attaches without a link (a stream verdict onto a SOCKHASH); it lasts as long as the target. */
export function progAttach(progFd: number, targetFd: number, attachType: number): void {
  check('bpf(BPF_PROG_ATTACH)', addon().progAttach(progFd, targetFd, attachType));
}
export function linkUpdate(linkFd: number, progFd: number): void {
  check('bpf(BPF_LINK_UPDATE)', addon().linkUpdate(linkFd, progFd));
}
export function linkDetach(linkFd: number): void {
  check('bpf(BPF_LINK_DETACH)', addon().linkDetach(linkFd));
}
export function linkInfo(fd: number): LinkInfoRaw {
  return check('bpf(BPF_OBJ_GET_INFO_BY_FD)', addon().linkInfo(fd));
}
export function progId(fd: number): number {
  return check('bpf(BPF_OBJ_GET_INFO_BY_FD)', addon().progId(fd));
}
export function numPossibleCpus(): number {
  return check('libbpf_num_possible_cpus', addon().numPossibleCpus());
}

/** Like socketIn, with the netns given as an open fd (as received over ZDS). */
export function socketInNs(nsFd: number, spec: SocketSpec): Fd {
  return new Fd(checkComposite(addon().socketIn(nsFd, spec)));
}

/**
 * Calls `onReadable` on the JS thread whenever `fd` is readable or hung up (revents as poll(2)
 * gives them). The watch re-arms after `onReadable` returns, so drain the fd inside it.
 * Returns a function that stops watching (the fd itself stays open).
 */
export function watchReadable(fd: number, onReadable: (revents: number) => void): () => void {
  let stopped = false;
  const h = check('watchFd', addon().watchFd(fd, (revents) => {
    if (stopped) return;
    try {
      onReadable(revents);
    } finally {
      if (!stopped) addon().rearmWatch(h);
    }
  }));
  return () => {
    if (stopped) return;
    stopped = true;
    addon().unwatchFd(h);
  };
}
export const POLLIN = 0x1;
export const POLLERR = 0x8;
export const POLLHUP = 0x10;

/** Global addresses configured in the netns (no loopback, no IPv6 link-local). */
export function netnsAddrs(path: string): { ipv4: string[]; ipv6: string[] } {
  return withFd(path, (fd) => checkComposite(addon().netnsAddrs(fd), path));
}
/** Writes a file as seen from inside the netns (a /proc/sys/net sysctl of that netns). */
export function netnsWrite(path: string, file: string, value: string): void {
  withFd(path, (fd) => checkComposite(addon().netnsWrite(fd, file, value), `${path}: ${file}`));
}
/** `ip rule fwmark MARK lookup TABLE` + `local 0.0.0.0/0 dev lo table TABLE` in the netns (add or remove). */
export function netnsLocalRoute(path: string, mark: number, table: number, pref: number, add: boolean): void {
  withFd(path, (fd) => checkComposite(addon().netnsLocalRoute(fd, mark, table, pref, add), path));
}
