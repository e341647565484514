/**
 * An address as Rust's SocketAddr prints it, so that what inpod writes where ztunnel writes a
 * SocketAddr (the access log's src.addr, the HBONE `forwarded: for="..."` and :authority) reads
 * the same: `ip:port`, `[ipv6]:port`, an IPv4-mapped IPv6 address as IPv4 (ztunnel's
 * to_canonical). Pure.
 */
export function socketAddr(a: { ip: string; port: number }): string {
  const ip = /^::ffff:\d+\.\d+\.\d+\.\d+$/i.test(a.ip) ? a.ip.slice(7) : a.ip;
  return ip.includes(':') ? `[${ip}]:${a.port}` : `${ip}:${a.port}`;
}
