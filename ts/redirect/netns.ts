/**
 * A pod's network namespace, opened once and held (PodNetns), and the facts about it read from
 * outside it. The fd names the namespace for as long as it is held, whatever later happens to its
 * path (paths are reused, a held namespace outlives its bind mount), as istio-cni's open netns
 * (cni/pkg/nodeagent/netns_linux.go OpenNetns, kept per pod in pod_cache.go) and ztunnel's
 * InpodNetns (src/inpod/netns.rs) do. The backends, these helpers and ZDS take the held netns.
 */
import { existsSync } from 'node:fs';
import { MeshError } from '../util/errors.js';
import { ROUTE_TABLE } from '../istio.js';
import { ipText } from '../util/sockaddr.js';
import { Fd, NSFS_MAGIC, netnsAddrsOfFd, netnsCookieOfFd, netnsLocalRouteOfFd, netnsLoopback6OnLinksOfFd, netnsWriteOfFd, openPath, statfsType } from '../native/index.js';

/** A network namespace held open. */
export interface PodNetns {
  /** The path it was opened from (CNI_NETNS, /proc/<pid>/ns/net): for records and messages only. */
  readonly path: string;
  /** SO_NETNS_COOKIE: its identity, unique within a boot. */
  readonly cookie: bigint;
  /** The open fd; throws once closed, so a closed netns is never used by its stale number. */
  readonly fd: number;
  readonly closed: boolean;
  /** Idempotent. */
  close(): void;
}

/** A netns as a caller names it: held open, or a path that is opened once for the call. */
export type NetnsRef = PodNetns | string;

class HeldNetns implements PodNetns {
  readonly #f: Fd;
  constructor(readonly path: string, f: Fd, readonly cookie: bigint) {
    this.#f = f;
  }
  get fd(): number {
    return this.#f.fd;
  }
  get closed(): boolean {
    return this.#f.closed;
  }
  close(): void {
    this.#f.close();
  }
}

/**
 * Opens the netns at `path` (one open) and reads its cookie from the fd. Throws MeshError
 * INPOD_ERR_NETNS, naming the path, if it does not exist or is not a network namespace. The type
 * is checked before opening (a FIFO would block the open) and again through the fd (setns on it
 * fails unless it is a netns), so a path swapped in between is refused too.
 */
export function openNetns(path: string): PodNetns {
  if (!existsSync(path)) {
    throw new MeshError('INPOD_ERR_NETNS', `network namespace ${path} does not exist: is the pod still running? ` +
      'pass the path the runtime gave (CNI_NETNS), e.g. /run/netns/<name> or /proc/<pid>/ns/net');
  }
  const notNetns = (): MeshError => new MeshError('INPOD_ERR_NETNS', `${path} is not a network namespace (not an nsfs file); ` +
    'pass a path like /run/netns/<name> or /proc/<pid>/ns/net');
  const unreadable = (e: unknown): MeshError => new MeshError('INPOD_ERR_NETNS', `cannot read ${path}: ${(e as Error).message}`, { cause: e });
  let type: number;
  try {
    type = statfsType(path);
  } catch (e) {
    throw unreadable(e);
  }
  if (type !== NSFS_MAGIC) throw notNetns();
  let f: Fd;
  try {
    f = openPath(path);
  } catch (e) {
    throw unreadable(e);
  }
  try {
    return new HeldNetns(path, f, netnsCookieOfFd(f.fd));
  } catch {
    f.close();
    throw notNetns();
  }
}

/** Runs `fn` with the netns `ref` names: the held one as is, or the path opened for the call and closed after. */
export async function withNetns<T>(ref: NetnsRef, fn: (ns: PodNetns) => T | Promise<T>): Promise<T> {
  if (typeof ref !== 'string') return fn(ref);
  const ns = openNetns(ref);
  try {
    return await fn(ns);
  } finally {
    ns.close();
  }
}

/**
 * A path naming the held netns for a child process (`nsenter --net=...`): the magic link of this
 * process's fd, which reaches the namespace the fd holds even if its own path is gone or reused.
 */
export function netnsProcPath(ns: PodNetns): string {
  return `/proc/${process.pid}/fd/${ns.fd}`;
}

/**
 * The pod's addresses, IPv4 first, then IPv6: `given` (PodSettings.podIps) or what the netns has
 * (global addresses; no loopback, no IPv6 link-local). A pod with IPv6 addresses is refused unless
 * `ipv6` (BackendOptions.ipv6): while the proxy listens on IPv4 only, capturing the pod's IPv6
 * would refuse all of it, and not capturing it would let it bypass the proxy. A pod needs an
 * address of either family (an IPv6-only pod has no IPv4).
 */
export async function podAddresses(ns: PodNetns, given: string[] | undefined, ipv6: boolean): Promise<string[]> {
  const a = given?.length
    ? { ipv4: given.filter((ip) => !ip.includes(':')), ipv6: given.filter((ip) => ip.includes(':')) }
    : netnsAddrsOfFd(ns.fd);
  if (a.ipv6.length > 0 && !ipv6) {
    throw new MeshError('INPOD_ERR_NETNS', `${ns.path} has IPv6 addresses (${a.ipv6.join(', ')}) and IPv6 capture is off ` +
      'until the proxy listens on IPv6; inpod refuses rather than let IPv6 bypass the proxy: give the pod IPv4 only, ' +
      'leave it out of the mesh, or enable IPv6 capture (BackendOptions.ipv6)');
  }
  if (a.ipv4.length === 0 && a.ipv6.length === 0) {
    throw new MeshError('INPOD_ERR_NETNS', `${ns.path} has no IPv4 or IPv6 address yet: enroll after the CNI plugins ` +
      'configured the pod network (inpod-cni must be last in the chain)');
  }
  return [...a.ipv4, ...a.ipv6.map((ip) => ipText(ip))];
}

/**
 * The in-netns routing that lets the proxy's transparent upstream (bound to the client's IP,
 * marked 0x539 and re-marked `spoofMark` by connect4/6) get the app's replies back: the app's
 * accepted socket inherits the SYN's mark (tcp_fwmark_accept, which IPv6 connections follow too),
 * and that mark routes locally. fwmark_reflect does the same for what the kernel answers without
 * a socket (the RST of a closed port, ICMP errors): without it that reply takes the main table to
 * the client's real address and the proxy waits for its connect timeout. Only locally sent,
 * marked packets carry a mark here (a packet entering over the veth has none), so nothing else
 * changes for the pod. With `ipv6` (the pod has IPv6 addresses) the same for IPv6: the rule and
 * `local ::/0` route of `ip -6`, net.ipv6.fwmark_reflect, and `local ::1` on each link with a pod
 * IPv6 address: eBPF capture sends the pod's connections to [::1]:15001 from the pod's IPv6, and
 * the kernel routes its socketless answers (RST, TIME_WAIT ACK) to ::1 strictly by the link of
 * the pod address, out of the pod, where they are dropped; the proxy's side then never learns a
 * connection was reset and blocks the next one on that port (issue 18: stalled connections under
 * connection churn). No iptables involved. Idempotent;
 * `false` removes exactly this (the IPv6 part whatever `ipv6` says, tolerating a netns without IPv6).
 */
export async function transparentReturnRouting(ns: PodNetns, on: boolean, mark: number, table = ROUTE_TABLE, ipv6 = false): Promise<void> {
  try {
    netnsWriteOfFd(ns.fd, '/proc/sys/net/ipv4/tcp_fwmark_accept', on ? '1' : '0');
    netnsWriteOfFd(ns.fd, '/proc/sys/net/ipv4/fwmark_reflect', on ? '1' : '0');
    netnsLocalRouteOfFd(ns.fd, mark, table, 32763, on);
    if (on && ipv6) {
      netnsWriteOfFd(ns.fd, '/proc/sys/net/ipv6/fwmark_reflect', '1');
      netnsLocalRouteOfFd(ns.fd, mark, table, 32763, true, 6);
      netnsLoopback6OnLinksOfFd(ns.fd, true);
    }
  } catch (e) {
    throw new MeshError('INPOD_ERR_NETNS', `setting up return routing in ${ns.path} failed: ${(e as Error).message}`, { cause: e });
  }
  if (!on) {
    try {
      netnsWriteOfFd(ns.fd, '/proc/sys/net/ipv6/fwmark_reflect', '0');
      netnsLocalRouteOfFd(ns.fd, mark, table, 32763, false, 6);
      netnsLoopback6OnLinksOfFd(ns.fd, false);
    } catch {
      /* a netns without IPv6 has none of it */
    }
  }
}

/**
 * Lets the proxy roll without resetting a connection (both backends): with
 * net.ipv4.tcp_migrate_req, a listener that closes hands the connections queued on it (handshake
 * done, or under way) to another listener of its SO_REUSEPORT group, the next proxy's, instead
 * of resetting them (see podListenerFd in ts/proxy/sockets.ts). Set here, by enrollment, because
 * the proxy cannot: its /proc/sys is read-only in an unprivileged container. Idempotent; `false`
 * puts the kernel's default back.
 */
export function listenerHandover(ns: PodNetns, on: boolean): void {
  try {
    netnsWriteOfFd(ns.fd, '/proc/sys/net/ipv4/tcp_migrate_req', on ? '1' : '0');
  } catch (e) {
    throw new MeshError('INPOD_ERR_NETNS', `setting net.ipv4.tcp_migrate_req in ${ns.path} failed (Linux 5.14 or newer has it): ${(e as Error).message}`, { cause: e });
  }
}
