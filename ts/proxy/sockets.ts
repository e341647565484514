/**
 * Sockets inside a pod's network namespace, handed to Node: the addon creates the socket in the
 * netns (with SO_MARK / IP_TRANSPARENT / bind as asked), Node drives it from then on.
 */
import net, { isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import { origDst, origDst6, setSockOptInt, SOL_SOCKET, socketInNs, sockName, type SockAddr } from '../native/index.js';
import { MARKS } from '../istio.js';
import { MeshError, SyscallError } from '../util/errors.js';
import { canonicalIp, peerOf, socketAddr } from '../util/sockaddr.js';

/**
 * A listening socket on `port` inside the netns behind `nsFd`, for one of a pod's proxy listeners
 * (15001, 15006, 15008). Dual-stack by default, as ztunnel binds its in-pod listeners to `[::]`
 * (src/config.rs bind_wildcard with IPV6_ENABLED, the default): one IPv6 socket with
 * IPV6_V6ONLY off takes both families, IPv4 peers seen as `::ffff:a.b.c.d` (the proxy reads every
 * socket address through canonicalIp, util/sockaddr.ts). The eBPF backend assigns one listener
 * per netns to both families' SYNs, so it must be this one socket, not two. On a kernel without
 * IPv6 (socket(AF_INET6) refused with EAFNOSUPPORT) it is IPv4 alone on 0.0.0.0, as ztunnel with
 * IPV6_ENABLED=false. `host` binds one address instead (its family).
 *
 * SO_REUSEPORT, as ztunnel's in-pod socket factory (src/inpod/config.rs, INPOD_PORT_REUSE, on by
 * default): while a proxy rolls, the new proxy's listeners join the old one's on the same ports
 * and both accept; when the old one closes its listeners, the kernel moves their queued
 * connections to the new ones (tcp_migrate_req, which enrollment turns on in the pod's netns)
 * instead of resetting them. Only sockets of the same owner (uid) and the same bound address can
 * join: an app running as another user cannot take the proxy's connections. Returns the fd,
 * owned by the caller.
 */
export function podListenerFd(nsFd: number, port: number, host?: string): number {
  const spec = { listen: 511, reuseAddr: true, reusePort: true };
  if (host !== undefined) return socketInNs(nsFd, { ...spec, family: isIP(host) === 6 ? 6 : 4, bind: { ip: host, port } }).release();
  try {
    return socketInNs(nsFd, { ...spec, family: 6, v6only: false, bind: { ip: '::', port } }).release();
  } catch (e) {
    if ((e as SyscallError).code !== 'EAFNOSUPPORT') throw e;
    return socketInNs(nsFd, { ...spec, family: 4, bind: { ip: '0.0.0.0', port } }).release();
  }
}

/**
 * ztunnel's TCP keepalive (src/config.rs SocketConfig defaults: KEEPALIVE_TIME 180 s,
 * KEEPALIVE_INTERVAL 180 s, KEEPALIVE_RETRIES 9, on): a connection whose peer vanished without a
 * FIN or RST is found and closed after 180 s + 9 x 180 s of silence instead of never. ztunnel
 * applies it to every socket it connects (src/proxy.rs DefaultSocketFactory::setup_socket) and to
 * every connection its outbound and plaintext-inbound listeners accept (src/socket.rs
 * Listener::accept, set_socket_options in outbound.rs and inbound_passthrough.rs), not to 15008's.
 */
export const TCP_KEEPALIVE = Object.freeze({ timeS: 180, intervalS: 180, retries: 9 });
const SO_KEEPALIVE = 9;
const IPPROTO_TCP = 6;
const TCP_KEEPIDLE = 4;
const TCP_KEEPINTVL = 5;
const TCP_KEEPCNT = 6;
const KEEPALIVE_SPEC = Object.freeze({ idleS: TCP_KEEPALIVE.timeS, intervalS: TCP_KEEPALIVE.intervalS, count: TCP_KEEPALIVE.retries });

/**
 * Turns ztunnel's keepalive on for `fd`. On a listening socket it holds for every connection the
 * kernel accepts there (an accepted socket is cloned from its listener, keepalive timer included).
 */
export function setTcpKeepalive(fd: number): void {
  setSockOptInt(fd, SOL_SOCKET, SO_KEEPALIVE, 1);
  setSockOptInt(fd, IPPROTO_TCP, TCP_KEEPIDLE, TCP_KEEPALIVE.timeS);
  setSockOptInt(fd, IPPROTO_TCP, TCP_KEEPINTVL, TCP_KEEPALIVE.intervalS);
  setSockOptInt(fd, IPPROTO_TCP, TCP_KEEPCNT, TCP_KEEPALIVE.retries);
}

/**
 * A listening server on `port` inside the netns behind `nsFd` (a podListenerFd: dual-stack unless
 * `host` is given), for the
 * captured listeners (15001, 15006): its connections get ztunnel's TCP keepalive. With `paused`,
 * accepted sockets are not read until the handler resumes them (or hands them to the kernel
 * fast path, which needs sockets no userspace read has touched).
 */
export function listenIn(nsFd: number, port: number, onConn: (s: net.Socket) => void, host?: string, paused = false): Promise<net.Server> {
  const fd = podListenerFd(nsFd, port, host);
  setTcpKeepalive(fd);
  // Nagle off everywhere on the data path: with it, small writes wait for the peer's delayed
  // ACK (~40 ms), which showed as a 38 ms p99 in the benchmark.
  const server = net.createServer({ allowHalfOpen: true, noDelay: true, pauseOnConnect: paused }, onConn);
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ fd }, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}

export interface ConnectOptions {
  /** SO_MARK (default: the proxy's own, so capture lets the socket through) */
  mark?: number;
  /** bind to this (foreign) address with IP_TRANSPARENT / IPV6_TRANSPARENT: the app sees the client's IP (of `to`'s family) */
  transparentFrom?: string;
  timeoutMs?: number;
  /** do not read from the socket until it is resumed (see listenIn) */
  paused?: boolean;
}

/**
 * Connects from inside the netns behind `nsFd`, with ztunnel's TCP keepalive; resolves once
 * connected. The socket is of `to`'s family (canonical: an IPv4-mapped `to` is IPv4); a
 * `transparentFrom` of the other family cannot be (a client of one family reaching an app over
 * the other): refused with INPOD_ERR_UPSTREAM_CONNECT before any socket is made.
 */
export function connectIn(nsFd: number, to: SockAddr, o: ConnectOptions = {}): Promise<net.Socket> {
  to = { ip: canonicalIp(to.ip), port: to.port };
  let fd: number;
  try {
    fd = newUpstream(nsFd, to, o, false);
  } catch (e) {
    return Promise.reject(e);
  }
  // pauseOnCreate: Node's own option behind pauseOnConnect; without it Node starts reading at once
  const s = new net.Socket({ fd, allowHalfOpen: true, ...(o.paused ? { pauseOnCreate: true } : {}) } as net.SocketConstructorOpts);
  if (o.transparentFrom !== undefined) s.once('close', holdUpstream(fd));
  if (o.paused) s.pause();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      const e = Object.assign(new Error(`connect ETIMEDOUT ${socketAddr(to)}`), { code: 'ETIMEDOUT' });
      s.destroy(e);
    }, o.timeoutMs ?? 10_000);
    s.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    s.connect({ host: to.ip, port: to.port }, () => {
      clearTimeout(timer);
      s.removeAllListeners('error');
      resolve(s);
    });
  });
}

/**
 * The socket connectIn makes, with its connect() to `to` started (non-blocking: the native byte
 * path's engine sees it finish, hbone/native.ts). Throws what newUpstream throws.
 */
export function upstreamFd(nsFd: number, to: SockAddr, o: ConnectOptions): number {
  return newUpstream(nsFd, { ip: canonicalIp(to.ip), port: to.port }, o, true);
}

/**
 * One native call: the socket in the netns, its mark, Nagle off (see listenIn), keepalive and
 * the transparent bind, and with `connect` its connect() to `to` (canonical) started. Throws
 * MeshError INPOD_ERR_UPSTREAM_CONNECT for a client and a destination of different IP families,
 * a SyscallError for a socket or connect() the kernel refused at once.
 */
function newUpstream(nsFd: number, to: SockAddr, o: ConnectOptions, connect: boolean): number {
  const family = isIP(to.ip) === 6 ? 6 : 4;
  const from = o.transparentFrom === undefined ? undefined : canonicalIp(o.transparentFrom);
  if (from !== undefined && isIP(from) !== family) {
    throw new MeshError('INPOD_ERR_UPSTREAM_CONNECT', `cannot connect to ${socketAddr(to)} from ${from}: ` +
      'the client\'s address and the destination are of different IP families');
  }
  return socketInNs(nsFd, {
    family,
    mark: o.mark ?? MARKS.proxy,
    noDelay: true,
    keepalive: KEEPALIVE_SPEC,
    ...(from ? { transparent: true, bind: { ip: from, port: 0 } } : {}),
    ...(connect ? { connect: to } : {}),
  }).release();
}

/** "ip:port" of the proxy's live transparent upstream sockets (bound before connect, so known at once). */
const transparentUpstreams = new Set<string>();

/**
 * Counts `fd` (a transparent upstream: connectIn's, or one the native engine owns) as the proxy's
 * own until the returned function is called (isOwnUpstream).
 */
export function holdUpstream(fd: number): () => void {
  const key = socketAddr(sockName(fd));
  transparentUpstreams.add(key);
  return () => void transparentUpstreams.delete(key);
}

/**
 * Is a connection arriving on the inbound listener from `ip:port` the proxy's own transparent
 * upstream? Capture never sends it there, unless its per-connection state could not be recorded
 * (a full eBPF map fails closed by capturing it): then admitting it would connect again, from
 * the same client address, in a loop.
 */
export function isOwnUpstream(ip: string, port: number): boolean {
  return transparentUpstreams.has(socketAddr({ ip, port }));
}

/** The fd under a connected Node socket. */
export function fdOf(s: net.Socket): number {
  const fd = (s as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new SyscallError('fd', 9, 'socket has no fd');
  return fd;
}

/**
 * The destination a captured connection was meant for: SO_ORIGINAL_DST for a connection that is
 * IPv4 on the wire (an IPv4-mapped peer of a dual-stack listener included), its IPv6 twin
 * IP6T_SO_ORIGINAL_DST for a native IPv6 one, as ztunnel reads both (src/socket.rs
 * orig_dst_addr); answered by conntrack (iptables REDIRECT) or by the eBPF getsockopt program.
 * The answer comes back canonical. There is no fallback: a connection with no recorded
 * destination would otherwise be taken for one to the listener itself (getsockname), and the
 * proxy would connect to itself. `peer`: the socket's peer, when the caller has read it already.
 * Throws MeshError INPOD_ERR_ORIGINAL_DST.
 */
export function originalDestination(s: net.Socket, peer: SockAddr = peerOf(s)): SockAddr {
  try {
    const fd = fdOf(s);
    const a = isIP(peer.ip) === 6 ? origDst6(fd) : origDst(fd);
    return { ip: canonicalIp(a.ip), port: a.port };
  } catch (e) {
    throw new MeshError('INPOD_ERR_ORIGINAL_DST', `no original destination for the connection from ${socketAddr(peer)} ` +
      `(${(e as Error).message}); it did not come through capture (is the pod enrolled?), so it is refused`, { cause: e });
  }
}

/**
 * The addresses of the netns this process runs in (the node's, for a proxy on the host
 * network), re-read at most every 10 s.
 */
export const nodeAddresses = ((): (() => ReadonlySet<string>) => {
  let cached: { at: number; ips: Set<string> } | undefined;
  return () => {
    if (!cached || Date.now() - cached.at > 10_000) {
      cached = { at: Date.now(), ips: new Set(Object.values(networkInterfaces()).flat().map((i) => canonicalIp(i!.address))) };
    }
    return cached.ips;
  };
})();
