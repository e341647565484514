/**
 * Typed wrapper of the native addon: every failure becomes a SyscallError naming the errno and
 * the syscall; fds are objects that must be closed. Nothing here decides policy. Sockets and
 * namespaces are here; fds in fd.ts, eBPF in bpf.ts, the fd watcher in epoll.ts.
 */
import { SyscallError, check } from '../util/errors.js';
import { addon, type SockAddr, type SocketSpec, type SysFail } from './addon.js';
import { Fd, withFd } from './fd.js';

export type { SockAddr, SocketSpec } from './addon.js';
export { addon } from './addon.js';
export { Fd, openPath, withFd } from './fd.js';
export * from './bpf.js';
export * from './epoll.js';
export * from './memory.js';

function isFail(v: unknown): v is SysFail {
  return typeof v === 'object' && v !== null && 'errno' in v && 'syscall' in v;
}

function checkComposite<T>(v: T | SysFail, detail?: string): T {
  if (isFail(v)) throw new SyscallError(v.syscall, v.errno, detail);
  return v;
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
export const SO_MARK = 36;

export function origDst(fd: number): SockAddr {
  return check('getsockopt(SO_ORIGINAL_DST)', addon().origDst(fd));
}
/** The IPv6 twin of origDst: getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST), for a connection that is IPv6 on the wire. */
export function origDst6(fd: number): SockAddr {
  return check('getsockopt(IP6T_SO_ORIGINAL_DST)', addon().origDst6(fd));
}
export function sockName(fd: number): SockAddr {
  return check('getsockname', addon().sockName(fd));
}
export function getMark(fd: number): number {
  return check('getsockopt(SO_MARK)', addon().getsockoptInt(fd, SOL_SOCKET, SO_MARK));
}
/** A new fd (close-on-exec) for the socket behind `fd`, owned by the caller. */
export function dupFd(fd: number): number {
  return check('fcntl(F_DUPFD_CLOEXEC)', addon().dupFd(fd));
}
export function socketCookie(fd: number): bigint {
  return check('getsockopt(SO_COOKIE)', addon().socketCookie(fd));
}

/** setsockopt(fd, level, name, &int) (the fast path's tests shrink socket buffers with it). */
export function setSockOptInt(fd: number, level: number, name: number, value: number): void {
  check('setsockopt', addon().setsockoptInt(fd, level, name, value));
}
/** Bytes the TCP socket has taken for sending (acked + queued), offset by a per-connection constant. */
export function tcpWritten(fd: number): number {
  return check('getsockopt(TCP_INFO)', addon().tcpWritten(fd));
}
/** Bytes the TCP socket has received in order so far (a received FIN counts as one). */
export function tcpReceived(fd: number): number {
  return check('getsockopt(TCP_INFO)', addon().tcpReceived(fd));
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

/** Like socketIn, with the netns given as an open fd (as received over ZDS). */
export function socketInNs(nsFd: number, spec: SocketSpec): Fd {
  return new Fd(checkComposite(addon().socketIn(nsFd, spec)));
}

/* ------------------------------------------------------------------ a netns held open */
// The same calls on a netns fd the caller holds (ts/redirect/netns.ts PodNetns), so a pod's
// netns is opened once and every call reaches that namespace, whatever its path names later.

/** The netns cookie of the namespace `nsFd` refers to. */
export function netnsCookieOfFd(nsFd: number): bigint {
  return checkComposite(addon().netnsCookie(nsFd));
}
/** Global addresses configured in the netns of `nsFd` (no loopback, no IPv6 link-local). */
export function netnsAddrsOfFd(nsFd: number): { ipv4: string[]; ipv6: string[] } {
  return checkComposite(addon().netnsAddrs(nsFd));
}
/** Writes a file as seen from inside the netns of `nsFd` (a /proc/sys/net sysctl of that netns). */
export function netnsWriteOfFd(nsFd: number, file: string, value: string): void {
  checkComposite(addon().netnsWrite(nsFd, file, value), file);
}
const AF_INET = 2;
const AF_INET6 = 10;
/**
 * `ip rule fwmark MARK lookup TABLE` + `local 0.0.0.0/0 dev lo table TABLE` in the netns of `nsFd`
 * (add or remove); with `family` 6, their IPv6 twins (`ip -6 ...`, `local ::/0`).
 */
/**
 * `local ::1 dev LINK table local` for every link of the netns of `nsFd` with a global IPv6
 * address (add or remove): the kernel's answers without a socket (RST, TIME_WAIT ACK) to ::1 for
 * segments from ::1 to a pod address are routed strictly by that link, and leave by it without
 * this (addon/src/netns.cc, Loopback6OnLinks).
 */
export function netnsLoopback6OnLinksOfFd(nsFd: number, add: boolean): void {
  checkComposite(addon().netnsLoopback6OnLinks(nsFd, add));
}
export function netnsLocalRouteOfFd(nsFd: number, mark: number, table: number, pref: number, add: boolean, family: 4 | 6 = 4): void {
  checkComposite(addon().netnsLocalRoute(nsFd, mark, table, pref, add, family === 4 ? AF_INET : AF_INET6));
}

