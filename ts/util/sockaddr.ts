/**
 * Addresses as the proxy compares and reports them. The pod listeners are dual-stack (an IPv6
 * socket that also takes IPv4), so the kernel hands IPv4 peers over as IPv4-mapped IPv6
 * (`::ffff:10.0.0.1`): every address read off a socket goes through canonicalIp first, as ztunnel
 * passes every accepted address through to_canonical (src/socket.rs). Pure.
 */
import { isIP } from 'node:net';
import type net from 'node:net';

/**
 * `ip` as the address it stands for: an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, any case,
 * or its hex form `::ffff:0a00:0001`) as IPv4; IPv6 as ipText writes it; anything else unchanged
 * (not an address: callers refuse it).
 */
export function canonicalIp(ip: string): string {
  if (isIP(ip) !== 6) return ip;
  // the form the kernel writes for an IPv4 peer of a dual-stack socket (every IPv4 connection a
  // pod listener accepts) without parsing it: a valid IPv6 address that is `::ffff:` then no
  // other group but a dotted tail is exactly a mapped one, its tail already canonical (isIP
  // refuses leading zeros)
  const head = ip.slice(0, 7);
  if ((head === '::ffff:' || head.toLowerCase() === '::ffff:') && ip.indexOf(':', 7) < 0 && ip.indexOf('.', 7) > 0) return ip.slice(7);
  const bytes = ipv6Bytes(ip);
  if (isMapped(bytes)) return bytes.subarray(12).join('.');
  return formatIpv6(bytes);
}

/**
 * `ip` written as Rust's IpAddr prints it, nothing else changed: IPv6 lowercase and shortest
 * (RFC 5952), an IPv4-mapped one as `::ffff:a.b.c.d` (it stays IPv6, as in ztunnel's state, where
 * a canonical connection address never equals it); IPv4 and non-addresses unchanged.
 */
export function ipText(ip: string): string {
  return isIP(ip) === 6 ? formatIpv6(ipv6Bytes(ip)) : ip;
}

function isMapped(b: Uint8Array): boolean {
  return b.subarray(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff;
}

/** The 16 bytes of an IPv6 address `isIP` accepts (an embedded IPv4 tail included). */
export function ipv6Bytes(ip: string): Buffer {
  let s = ip.toLowerCase();
  const tail: number[] = [];
  const v4 = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(s);
  if (v4) {
    tail.push(...v4.slice(1).map(Number));
    s = s.slice(0, v4.index) + '0:0';
  }
  const [head, rest] = s.split('::') as [string, string | undefined];
  const parts = (x: string): number[] => (x === '' ? [] : x.split(':').map((h) => parseInt(h, 16)));
  const hi = parts(head);
  const lo = rest === undefined ? [] : parts(rest);
  const groups = [...hi, ...new Array<number>(8 - hi.length - lo.length).fill(0), ...lo];
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(g, i * 2));
  if (tail.length === 4) out.set(tail, 12);
  return out;
}

/**
 * 16 bytes as Rust's Ipv6Addr prints them: RFC 5952 (lowercase, leading zeros dropped, the first
 * longest run of two or more zero groups as `::`), an IPv4-mapped address as `::ffff:a.b.c.d`.
 */
export function formatIpv6(b: Uint8Array): string {
  if (isMapped(b)) return `::ffff:${Array.from(b.subarray(12)).join('.')}`;
  const g = Array.from({ length: 8 }, (_, i) => (b[i * 2]! << 8) | b[i * 2 + 1]!);
  let best = -1, bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) { best = i; bestLen = j - i; }
    i = j;
  }
  const hex = (xs: number[]): string => xs.map((x) => x.toString(16)).join(':');
  return best < 0 ? hex(g) : `${hex(g.slice(0, best))}::${hex(g.slice(best + bestLen))}`;
}

/**
 * An address as Rust's SocketAddr prints it, so that what inpod writes where ztunnel writes a
 * SocketAddr (the access log's src.addr, the HBONE `forwarded: for="..."` and :authority) reads
 * the same: `ip:port`, `[ipv6]:port`, an IPv4-mapped IPv6 address as IPv4 (canonicalIp).
 */
export function socketAddr(a: { ip: string; port: number }): string {
  const ip = canonicalIp(a.ip);
  return ip.includes(':') ? `[${ip}]:${a.port}` : `${ip}:${a.port}`;
}

/**
 * `ip:port` or `[ipv6]:port` (what socketAddr writes) as an address, or null when it is not one
 * (a bare IPv6 without brackets, a port outside 1-65535, a zone id). The address comes back
 * canonical.
 */
export function parseSocketAddr(s: string): { ip: string; port: number } | null {
  const m = /^\[([0-9a-fA-F:.]+)\]:(\d{1,5})$/.exec(s) ?? /^(\d+\.\d+\.\d+\.\d+):(\d{1,5})$/.exec(s);
  if (!m) return null;
  const port = Number(m[2]);
  const fam = isIP(m[1]!);
  if (fam === 0 || (fam === 4) !== !s.startsWith('[') || port < 1 || port > 65535) return null;
  return { ip: canonicalIp(m[1]!), port };
}

/** The peer of an accepted or connected socket, canonical (canonicalIp). */
export function peerOf(s: net.Socket): { ip: string; port: number } {
  return { ip: canonicalIp(s.remoteAddress ?? ''), port: s.remotePort ?? 0 };
}

/** The local end of a socket, canonical (canonicalIp). */
export function localOf(s: net.Socket): { ip: string; port: number } {
  return { ip: canonicalIp(s.localAddress ?? ''), port: s.localPort ?? 0 };
}
