/** The native module's raw interface (addon/src/*.cc): -errno or {errno, syscall} on failure. */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MeshError } from '../util/errors.js';

export interface SysFail {
  errno: number;
  syscall: string;
}
export interface SockAddr {
  ip: string;
  port: number;
}
/** glibc's mallinfo2(), bytes */
export interface MallocInfo {
  /** the main arena's heap (sbrk) */
  arena: number;
  /** in mmapped chunks (large allocations) */
  hblkhd: number;
  /** in use */
  uordblks: number;
  /** free inside the arenas: what malloc_trim can give back, page by page */
  fordblks: number;
  /** free at the top of the main heap */
  keepcost: number;
}
export interface SocketSpec {
  family: 4 | 6;
  mark?: number;
  transparent?: boolean;
  reuseAddr?: boolean;
  /** SO_REUSEPORT: listeners of the same owner on one address share it (and hand over on close) */
  reusePort?: boolean;
  /** IPV6_V6ONLY (family 6): false = dual-stack, IPv4 peers seen as ::ffff:a.b.c.d; unset: the netns's default */
  v6only?: boolean;
  /** TCP_NODELAY (Nagle off) */
  noDelay?: boolean;
  /** SO_KEEPALIVE on, with TCP_KEEPIDLE, TCP_KEEPINTVL and TCP_KEEPCNT set (in the same call) */
  keepalive?: { idleS: number; intervalS: number; count: number };
  bind?: SockAddr;
  listen?: number;
  connect?: SockAddr;
}
export interface StructLayout {
  sizeof: number;
  offsetof: Record<string, number>;
}
export interface LinkInfoRaw {
  id: number;
  progId: number;
  type: number;
  attachType?: number;
  netnsIno?: number;
  cgroupId?: bigint;
}
export interface RecvResult {
  data: Buffer;
  fds: number[];
  truncated: boolean;
  ctruncated: boolean;
}
export type SkelHandle = { readonly __skel: unique symbol };
export type EpollHandle = { readonly __epoll: unique symbol };
export type HboneEngineHandle = { readonly __hboneEngine: unique symbol };
/** An SSL_CTX (addon/src/hbone_tls.cc); connections keep their own reference to it. */
export type HboneTlsContextHandle = { readonly __hboneTls: unique symbol };
/** The native HBONE engine's per-connection settings: ts/proxy/hbone/limits.ts HboneLimits. */
export interface HboneSettings {
  streamWindowSize: number;
  connectionWindowSize: number;
  maxFrameSize: number;
  maxHeaderListSize: number;
  maxConcurrentStreams: number;
  pingIntervalMs: number;
  pingTimeoutMs: number;
  handshakeTimeoutMs: number;
  idleTimeoutMs: number;
  resetBurst: number;
  resetPerSecond: number;
}
/** An event of the native HBONE engine (ts/native/hbone.ts documents each). */
export type HboneEvent =
  | { kind: 'handshake'; conn: number; listener?: number; uris: string[]; remote: SockAddr; local: SockAddr }
  | { kind: 'ready'; conn: number }
  | { kind: 'connClosed'; conn: number; error: string }
  | { kind: 'request'; conn: number; tunnel: number; headers: string[] }
  | { kind: 'response'; tunnel: number; status: number; headers: string[] }
  | { kind: 'closed'; tunnel: number; sent: number; received: number; error: string }
  | { kind: 'listenerClosed'; listener: number };
/** A map as its skeleton declares it (libbpf, after open). */
export interface SkelMapRaw {
  name: string;
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  /** pinned by name (LIBBPF_PIN_BY_NAME) under the pin root when loaded */
  pinned: boolean;
}
/** A program as its skeleton declares it. */
export interface SkelProgRaw {
  name: string;
  type: number;
  /** the expected attach type (enum bpf_attach_type) */
  attachType: number;
}
/** A map as the kernel holds it (BPF_OBJ_GET_INFO_BY_FD). */
export interface MapInfoRaw {
  id: number;
  name: string;
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
}

export interface NativeAddon {
  layout(): Record<string, StructLayout> & { constants: Record<string, number> };
  /** the skeletons compiled in (one per bpf/*.bpf.c) */
  readonly skeletons: string[];
  skelOpen(name: string, pinRoot: string | null): SkelHandle | number;
  skelMaps(h: SkelHandle): SkelMapRaw[];
  skelProgs(h: SkelHandle): SkelProgRaw[];
  skelSetConfig(h: SkelHandle, cfg: Buffer): number;
  skelLoad(h: SkelHandle): number;
  skelProg(h: SkelHandle, prog: string): { fd: number; attachType: number } | number;
  /** a new fd for the loaded map, owned by the caller */
  skelMap(h: SkelHandle, map: string): number;
  skelDestroy(h: SkelHandle): void;
  libbpfLog(): string;
  objPin(fd: number, path: string): number;
  objGet(path: string): number;
  linkCreate(progFd: number, targetFd: number, attachType: number): number;
  progAttach(progFd: number, targetFd: number, attachType: number): number;
  linkUpdate(linkFd: number, progFd: number): number;
  linkInfo(fd: number): LinkInfoRaw | number;
  mapInfo(fd: number): MapInfoRaw | number;
  mapUpdate(fd: number, key: Buffer, value: Buffer, flags: number): number;
  mapLookup(fd: number, key: Buffer, valueSize: number): Buffer | number;
  mapDelete(fd: number, key: Buffer): number;
  mapNextKey(fd: number, key: Buffer | null, keySize: number): Buffer | number;
  /** one BPF_PROG_TEST_RUN; ctx and data come back as the run left them */
  progTestRun(progFd: number, ctx: Buffer | null, data: Buffer | null): { retval: number; ctx: Buffer | null; data: Buffer | null } | number;
  numPossibleCpus(): number;
  probeProgType(type: number): number;
  probeHelper(progType: number, helper: number): number;
  netnsCookie(nsFd: number): bigint | SysFail;
  socketIn(nsFd: number, spec: SocketSpec): number | SysFail;
  origDst(fd: number): SockAddr | number;
  origDst6(fd: number): SockAddr | number;
  sockName(fd: number): SockAddr | number;
  setsockoptInt(fd: number, level: number, name: number, value: number): number;
  getsockoptInt(fd: number, level: number, name: number): number;
  socketCookie(fd: number): bigint | number;
  dupFd(fd: number): number;
  tcpWritten(fd: number): number;
  tcpReceived(fd: number): number;
  recvPeek(fd: number): number;
  recvAll(fd: number, max: number): { data: Buffer; eof: boolean; more: boolean } | number;
  unixSocket(type: 'seqpacket' | 'stream'): number;
  socketPair(type: 'seqpacket' | 'stream'): [number, number] | number;
  unixBind(fd: number, path: string): number;
  unixConnect(fd: number, path: string): number;
  listen(fd: number, backlog: number): number;
  accept(fd: number): number;
  sendFds(fd: number, data: Buffer, fds: number[]): number;
  recvFds(fd: number, maxBytes: number, maxFds: number): RecvResult | number;
  statfsType(path: string): number;
  mallocTrim(pad: number): number;
  mallinfo(): MallocInfo;
  netnsAddrs(nsFd: number): { ipv4: string[]; ipv6: string[] } | SysFail;
  netnsWrite(nsFd: number, path: string, value: string): number | SysFail;
  netnsLocalRoute(nsFd: number, mark: number, table: number, pref: number, add: boolean, family: number): number | SysFail;
  netnsLoopback6OnLinks(nsFd: number, add: boolean): number | SysFail;
  epollNew(cb: (token: number, events: number, value?: number) => void): EpollHandle | number;
  epollCtl(h: EpollHandle, op: number, fd: number, events: number, token: number): number;
  epollRingbuf(h: EpollHandle, mapFd: number, token: number): number;
  epollRef(h: EpollHandle, on: boolean): void;
  epollClose(h: EpollHandle): void;
  /** cb is called with a batch (an array) of events, in order */
  hboneEngineNew(cb: (events: HboneEvent[]) => void): HboneEngineHandle | number;
  hboneEngineRef(h: HboneEngineHandle, on: boolean): void;
  hboneEngineClose(h: HboneEngineHandle, wait: boolean): void;
  /** throws an Error naming what OpenSSL refused */
  hboneTlsContext(o: { certPem: string; keyPem: string; rootPem: string; server: boolean }): HboneTlsContextHandle;
  hboneClient(h: HboneEngineHandle, connId: number, fd: number, ctx: HboneTlsContextHandle, s: HboneSettings): void;
  hboneListen(h: HboneEngineHandle, listenerId: number, fd: number, ctx: HboneTlsContextHandle, s: HboneSettings): void;
  hboneListenerContext(h: HboneEngineHandle, listenerId: number, ctx: HboneTlsContextHandle): void;
  hboneUnlisten(h: HboneEngineHandle, listenerId: number): void;
  hboneVerdict(h: HboneEngineHandle, connId: number, ok: boolean): void;
  hboneOpen(h: HboneEngineHandle, connId: number, tunnelId: number, headers: string[]): void;
  hboneRespond(h: HboneEngineHandle, tunnelId: number, status: number, headers: string[], fd: number, connecting: boolean): void;
  hboneRelay(h: HboneEngineHandle, tunnelId: number, fd: number): void;
  hboneReset(h: HboneEngineHandle, tunnelId: number): void;
  hboneConnClose(h: HboneEngineHandle, connId: number, graceful: boolean): void;
  hboneStats(h: HboneEngineHandle): { conns: number; streams: number; bufferedBytes: number };
}

/** Finds the built addon from ts/native (tests) or dist/native (installed). */
function addonPath(): string {
  const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
  const candidates = [
    process.env.INPOD_ADDON,
    join(root, 'addon', 'build', 'Release', 'inpod_native.node'),
  ].filter((p): p is string => !!p);
  const found = candidates.find((p) => existsSync(p));
  if (!found) {
    throw new MeshError('INPOD_ERR_ADDON', `native addon not built (looked in ${candidates.join(', ')}); run "make build"`);
  }
  return found;
}

let cached: NativeAddon | undefined;

/** The native module, loaded once. */
export function addon(): NativeAddon {
  cached ??= createRequire(import.meta.url)(addonPath()) as NativeAddon;
  return cached;
}
