/**
 * Encoders for the structs in bpf/include/types.h. The offsets are written here once and checked
 * against the addon's {sizeof, offsetof} export in test/native/structs.test.ts.
 * Addresses travel in network order, as the kernel keeps them; per-connection structs hold either
 * family in 16 bytes, IPv4 as ::ffff:a.b.c.d (bpf/include/types.h).
 */
import { isIPv4, isIPv6 } from 'node:net';
import { MeshError } from '../util/errors.js';

export const LAYOUT = {
  inpod_config: { sizeof: 16, offsetof: { proxy_mark: 0, spoof_mark: 4, outbound_port: 8, inbound_port: 10, hbone_port: 12, dns_port: 14 } },
  inpod_pod: { sizeof: 16, offsetof: { ip4: 0, probe_ip4: 4, flags: 8 } },
  inpod_pod6: { sizeof: 32, offsetof: { ip6: 0, probe_ip6: 16 } },
  inpod_port_key: { sizeof: 16, offsetof: { netns: 0, port: 8, dir: 10 } },
  inpod_cidr_key: { sizeof: 16, offsetof: { prefixlen: 0, netns: 4, addr: 12 } },
  inpod_cidr6_key: { sizeof: 28, offsetof: { prefixlen: 0, netns: 4, addr: 12 } },
  inpod_tuple: { sizeof: 48, offsetof: { netns: 0, sip: 8, dip: 24, sport: 40, dport: 42 } },
  inpod_addr: { sizeof: 20, offsetof: { ip: 0, port: 16 } },
  inpod_fp_flow: { sizeof: 40, offsetof: { peer: 0, bytes: 8, segs: 16, peer_base: 24, throttled: 32 } },
  inpod_fp_config: { sizeof: 8, offsetof: { max_inflight: 0 } },
} as const;

export const POD_DNS_CAPTURE = 0x1;
export const DIR_IN = 1;
export const DIR_OUT = 2;

export interface CaptureConfig {
  proxyMark: number;
  spoofMark: number;
  outboundPort: number;
  inboundPort: number;
  hbonePort: number;
  dnsPort: number;
}

export interface PodValue {
  ip4: string;
  probeIp4: string;
  flags: number;
}

/** Writes a dotted IPv4 address in network order. */
export function writeIp4(buf: Buffer, off: number, ip: string): void {
  if (!isIPv4(ip)) throw new MeshError('INPOD_ERR_USAGE', `"${ip}" is not an IPv4 address`);
  const parts = ip.split('.').map(Number);
  for (let i = 0; i < 4; i++) buf[off + i] = parts[i]!;
}

export function readIp4(buf: Buffer, off: number): string {
  return `${buf[off]}.${buf[off + 1]}.${buf[off + 2]}.${buf[off + 3]}`;
}

/** Writes an IPv6 address's 16 bytes. */
export function writeIp6(buf: Buffer, off: number, ip: string): void {
  if (!isIPv6(ip)) throw new MeshError('INPOD_ERR_USAGE', `"${ip}" is not an IPv6 address`);
  const [head, tail] = ip.includes('::') ? (ip.split('::') as [string, string]) : [ip, undefined];
  const words = (part: string | undefined): number[] => {
    if (!part) return [];
    const out: number[] = [];
    for (const g of part.split(':')) {
      if (g.includes('.')) {
        const [a, b, c, d] = g.split('.').map(Number) as [number, number, number, number];
        out.push((a << 8) | b, (c << 8) | d);
      } else out.push(parseInt(g, 16));
    }
    return out;
  };
  const h = words(head), t = words(tail);
  const all = tail === undefined ? h : [...h, ...new Array<number>(8 - h.length - t.length).fill(0), ...t];
  for (let i = 0; i < 8; i++) buf.writeUInt16BE(all[i]!, off + 2 * i);
}

/** Reads 16 bytes as an IPv6 address (RFC 5952 text, as the kernel prints it). */
export function readIp6(buf: Buffer, off: number): string {
  const w = Array.from({ length: 8 }, (_, i) => buf.readUInt16BE(off + 2 * i).toString(16));
  return new URL(`http://[${w.join(':')}]/`).hostname.slice(1, -1);
}

/** Writes either family in the 16-byte form of per-connection state: IPv4 as ::ffff:a.b.c.d. */
export function writeIp(buf: Buffer, off: number, ip: string): void {
  if (isIPv4(ip)) {
    buf.fill(0, off, off + 10);
    buf.writeUInt16BE(0xffff, off + 10);
    writeIp4(buf, off + 12, ip);
  } else writeIp6(buf, off, ip);
}

/** Reads the 16-byte form: an IPv4-mapped address as plain IPv4. */
export function readIp(buf: Buffer, off: number): string {
  const mapped = buf.subarray(off, off + 10).every((b) => b === 0) && buf.readUInt16BE(off + 10) === 0xffff;
  return mapped ? readIp4(buf, off + 12) : readIp6(buf, off);
}

export function encodeConfig(c: CaptureConfig): Buffer {
  const o = LAYOUT.inpod_config.offsetof;
  const b = Buffer.alloc(LAYOUT.inpod_config.sizeof);
  b.writeUInt32LE(c.proxyMark, o.proxy_mark);
  b.writeUInt32LE(c.spoofMark, o.spoof_mark);
  b.writeUInt16LE(c.outboundPort, o.outbound_port);
  b.writeUInt16LE(c.inboundPort, o.inbound_port);
  b.writeUInt16LE(c.hbonePort, o.hbone_port);
  b.writeUInt16LE(c.dnsPort, o.dns_port);
  return b;
}

export function encodeU64(v: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(v);
  return b;
}

export function decodeU64(b: Buffer): bigint {
  return b.readBigUInt64LE(0);
}

export function encodeIp4Key(ip: string): Buffer {
  const b = Buffer.alloc(4);
  writeIp4(b, 0, ip);
  return b;
}

export function encodeIp6Key(ip: string): Buffer {
  const b = Buffer.alloc(16);
  writeIp6(b, 0, ip);
  return b;
}

export interface Pod6Value {
  ip6: string;
  probeIp6: string;
}

export function encodePod6(p: Pod6Value): Buffer {
  const o = LAYOUT.inpod_pod6.offsetof;
  const b = Buffer.alloc(LAYOUT.inpod_pod6.sizeof);
  writeIp6(b, o.ip6, p.ip6);
  writeIp6(b, o.probe_ip6, p.probeIp6);
  return b;
}

export function decodePod6(b: Buffer): Pod6Value {
  const o = LAYOUT.inpod_pod6.offsetof;
  return { ip6: readIp6(b, o.ip6), probeIp6: readIp6(b, o.probe_ip6) };
}

export function encodePod(p: PodValue): Buffer {
  const o = LAYOUT.inpod_pod.offsetof;
  const b = Buffer.alloc(LAYOUT.inpod_pod.sizeof);
  writeIp4(b, o.ip4, p.ip4);
  writeIp4(b, o.probe_ip4, p.probeIp4);
  b.writeUInt32LE(p.flags, o.flags);
  return b;
}

export function decodePod(b: Buffer): PodValue {
  const o = LAYOUT.inpod_pod.offsetof;
  return { ip4: readIp4(b, o.ip4), probeIp4: readIp4(b, o.probe_ip4), flags: b.readUInt32LE(o.flags) };
}

export function encodePortKey(netns: bigint, port: number, dir: number): Buffer {
  const o = LAYOUT.inpod_port_key.offsetof;
  const b = Buffer.alloc(LAYOUT.inpod_port_key.sizeof);
  b.writeBigUInt64LE(netns, o.netns);
  b.writeUInt16LE(port, o.port);
  b.writeUInt8(dir, o.dir);
  return b;
}

export function decodePortKey(b: Buffer): { netns: bigint; port: number; dir: number } {
  const o = LAYOUT.inpod_port_key.offsetof;
  return { netns: b.readBigUInt64LE(o.netns), port: b.readUInt16LE(o.port), dir: b.readUInt8(o.dir) };
}

/** LPM key: the 64 netns-cookie bits always match, then the CIDR's own prefix. */
export function encodeCidrKey(netns: bigint, cidr: string): Buffer {
  const [ip, lenText] = cidr.split('/');
  const len = lenText === undefined ? 32 : Number(lenText);
  if (!ip || !Number.isInteger(len) || len < 0 || len > 32) {
    throw new MeshError('INPOD_ERR_USAGE', `"${cidr}" is not an IPv4 CIDR like 10.0.0.0/8`);
  }
  const o = LAYOUT.inpod_cidr_key.offsetof;
  const b = Buffer.alloc(LAYOUT.inpod_cidr_key.sizeof);
  b.writeUInt32LE(64 + len, o.prefixlen);
  b.writeBigUInt64LE(netns, o.netns);
  writeIp4(b, o.addr, ip);
  return b;
}

export function decodeCidrKey(b: Buffer): { netns: bigint; cidr: string } {
  const o = LAYOUT.inpod_cidr_key.offsetof;
  return { netns: b.readBigUInt64LE(o.netns), cidr: `${readIp4(b, o.addr)}/${b.readUInt32LE(o.prefixlen) - 64}` };
}

/** LPM key of inpod_cidr6_excl: the 64 netns-cookie bits, then the IPv6 CIDR's own prefix. */
export function encodeCidr6Key(netns: bigint, cidr: string): Buffer {
  const [ip, lenText] = cidr.split('/');
  const len = lenText === undefined ? 128 : Number(lenText);
  if (!ip || !isIPv6(ip) || !Number.isInteger(len) || len < 0 || len > 128) {
    throw new MeshError('INPOD_ERR_USAGE', `"${cidr}" is not an IPv6 CIDR like fd00::/8`);
  }
  const o = LAYOUT.inpod_cidr6_key.offsetof;
  const b = Buffer.alloc(LAYOUT.inpod_cidr6_key.sizeof);
  b.writeUInt32LE(64 + len, o.prefixlen);
  b.writeBigUInt64LE(netns, o.netns);
  writeIp6(b, o.addr, ip);
  return b;
}

export function decodeCidr6Key(b: Buffer): { netns: bigint; cidr: string } {
  const o = LAYOUT.inpod_cidr6_key.offsetof;
  return { netns: b.readBigUInt64LE(o.netns), cidr: `${readIp6(b, o.addr)}/${b.readUInt32LE(o.prefixlen) - 64}` };
}

export function encodeTuple(t: { netns: bigint; sip: string; dip: string; sport: number; dport: number }): Buffer {
  const o = LAYOUT.inpod_tuple.offsetof;
  const b = Buffer.alloc(LAYOUT.inpod_tuple.sizeof);
  b.writeBigUInt64LE(t.netns, o.netns);
  writeIp(b, o.sip, t.sip);
  writeIp(b, o.dip, t.dip);
  b.writeUInt16LE(t.sport, o.sport);
  b.writeUInt16LE(t.dport, o.dport);
  return b;
}

export function decodeTuple(b: Buffer): { netns: bigint; sip: string; dip: string; sport: number; dport: number } {
  const o = LAYOUT.inpod_tuple.offsetof;
  return {
    netns: b.readBigUInt64LE(o.netns),
    sip: readIp(b, o.sip),
    dip: readIp(b, o.dip),
    sport: b.readUInt16LE(o.sport),
    dport: b.readUInt16LE(o.dport),
  };
}

export function encodeAddr(a: { ip: string; port: number }): Buffer {
  const o = LAYOUT.inpod_addr.offsetof;
  const b = Buffer.alloc(LAYOUT.inpod_addr.sizeof);
  writeIp(b, o.ip, a.ip);
  b.writeUInt16BE(a.port, o.port);
  return b;
}

export function decodeAddr(b: Buffer): { ip: string; port: number } {
  const o = LAYOUT.inpod_addr.offsetof;
  return { ip: readIp(b, o.ip), port: b.readUInt16BE(o.port) };
}

export interface FpFlow {
  peer: bigint;
  bytes: number;
  segs: number;
  /** the peer's tcpWritten() when the flow began */
  peerBase: number;
  /** non-zero once the program found the peer behind and stopped redirecting */
  throttled: number;
}

export function encodeFpFlow(f: FpFlow): Buffer {
  const o = LAYOUT.inpod_fp_flow.offsetof;
  const b = Buffer.alloc(LAYOUT.inpod_fp_flow.sizeof);
  b.writeBigUInt64LE(f.peer, o.peer);
  b.writeBigUInt64LE(BigInt(f.bytes), o.bytes);
  b.writeBigUInt64LE(BigInt(f.segs), o.segs);
  b.writeBigUInt64LE(BigInt(f.peerBase), o.peer_base);
  b.writeUInt32LE(f.throttled, o.throttled);
  return b;
}

export function decodeFpFlow(b: Buffer): FpFlow {
  const o = LAYOUT.inpod_fp_flow.offsetof;
  return {
    peer: b.readBigUInt64LE(o.peer),
    bytes: Number(b.readBigUInt64LE(o.bytes)),
    segs: Number(b.readBigUInt64LE(o.segs)),
    peerBase: Number(b.readBigUInt64LE(o.peer_base)),
    throttled: b.readUInt32LE(o.throttled),
  };
}

/** The fast path's load-time settings (struct inpod_fp_config, its program's .rodata). */
export interface FpConfig {
  /** redirected bytes not yet taken by the peer's socket past which a flow is handed back */
  maxInflight: number;
}

export function encodeFpConfig(c: FpConfig): Buffer {
  const b = Buffer.alloc(LAYOUT.inpod_fp_config.sizeof);
  b.writeBigUInt64LE(BigInt(c.maxInflight), LAYOUT.inpod_fp_config.offsetof.max_inflight);
  return b;
}
