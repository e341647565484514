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
export interface SocketSpec {
  family: 4 | 6;
  mark?: number;
  transparent?: boolean;
  reuseAddr?: boolean;
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

export interface NativeAddon {
  layout(): Record<string, StructLayout> & { constants: Record<string, number> };
  skelOpen(name: string, pinRoot: string): SkelHandle | number;
  skelSetConfig(h: SkelHandle, cfg: Buffer): number;
  skelAutoload(h: SkelHandle, prog: string, on: boolean): number;
  skelLoad(h: SkelHandle): number;
  skelProg(h: SkelHandle, prog: string): { fd: number; attachType: number } | number;
  skelMap(h: SkelHandle, map: string): number;
  skelDestroy(h: SkelHandle): void;
  libbpfLog(): string;
  objPin(fd: number, path: string): number;
  objGet(path: string): number;
  linkCreate(progFd: number, targetFd: number, attachType: number): number;
  progAttach(progFd: number, targetFd: number, attachType: number): number;
  linkUpdate(linkFd: number, progFd: number): number;
  linkDetach(linkFd: number): number;
  linkInfo(fd: number): LinkInfoRaw | number;
  progId(fd: number): number;
  mapUpdate(fd: number, key: Buffer, value: Buffer, flags: number): number;
  mapLookup(fd: number, key: Buffer, valueSize: number): Buffer | number;
  mapDelete(fd: number, key: Buffer): number;
  mapNextKey(fd: number, key: Buffer | null, keySize: number): Buffer | number;
  numPossibleCpus(): number;
  probeProgType(type: number): number;
  probeHelper(progType: number, helper: number): number;
  netnsCookie(nsFd: number): bigint | SysFail;
  socketIn(nsFd: number, spec: SocketSpec): number | SysFail;
  origDst(fd: number): SockAddr | number;
  sockName(fd: number): SockAddr | number;
  peerName(fd: number): SockAddr | number;
  setsockoptInt(fd: number, level: number, name: number, value: number): number;
  getsockoptInt(fd: number, level: number, name: number): number;
  socketCookie(fd: number): bigint | number;
  tcpWritten(fd: number): number;
  tcpInq(fd: number): number;
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
  netnsAddrs(nsFd: number): { ipv4: string[]; ipv6: string[] } | SysFail;
  netnsWrite(nsFd: number, path: string, value: string): number | SysFail;
  netnsLocalRoute(nsFd: number, mark: number, table: number, pref: number, add: boolean): number | SysFail;
  watchFd(fd: number, cb: (revents: number) => void): WatchHandle | number;
  rearmWatch(h: WatchHandle): void;
  unwatchFd(h: WatchHandle): void;
  hupWatcher(cb: (token: number, revents: number, value?: number) => void): HupWatcherHandle | number;
  hupRingbuf(h: HupWatcherHandle, mapFd: number, token: number): number;
  hupWatch(h: HupWatcherHandle, fd: number, token: number): number;
  hupRearm(h: HupWatcherHandle, fd: number, token: number): number;
  hupUnwatch(h: HupWatcherHandle, fd: number): number;
  hupWatcherClose(h: HupWatcherHandle): void;
}
export interface HupWatcherHandle {
  epfd: number;
  stopFd: number;
}
export interface WatchHandle {
  stopFd: number;
  rearmFd: number;
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
