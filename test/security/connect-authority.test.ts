/**
 * A peer holding a valid mesh certificate spells the CONNECT's :authority every way it can think
 * of at a pod's 15008 (from the node netns, outside the mesh), hoping one spelling reaches
 * something other than that pod's own app: another pod, the node, loopback, a port it was not
 * given. ztunnel parses the authority as Rust's SocketAddr (src/proxy/inbound.rs
 * `build_inbound_request`: an unparsable one is 400) and makes it canonical (an IPv4-mapped IPv6
 * address is the IPv4 one), then admits only this pod's address (`validate_destination`), and
 * connects to the pod's own address at that port. Runs on both byte paths (make test runs it again
 * with INPOD_BYTE_PATH=native): on the native one the engine reads the header block and hands the
 * authority over.
 */
import http2 from 'node:http2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { until } from '../netns/lab.js';
import { TestMesh, connectStatus } from './mesh.js';

/** `s` as its UTF-8 bytes on the wire (Node's client sends a header value's characters as Latin-1). */
const utf8 = (s: string): string => Buffer.from(s).toString('latin1');

describe("a CONNECT's :authority, in any spelling, reaches only the pod's own app on the pod's own address", () => {
  let m: TestMesh;
  let ip: string, other: string;
  let session: http2.ClientHttp2Session;

  const connect = (authority: string, headers: Record<string, string | string[]> = {}): Promise<number | string> => connectStatus(session, authority, headers);
  const accepted = async (pod: string) => m.sh[pod]!.accepted((await m.sh[pod]!.listenerByTag(pod)).id);

  beforeAll(async () => {
    m = await TestMesh.create('ebpf', [
      { name: 'server', namespace: 'shop', serviceAccount: 'web' },
      { name: 'other', namespace: 'shop', serviceAccount: 'other' },
    ]);
    [ip, other] = [m.pods.server!.ip, m.pods.other!.ip];
    for (const p of ['server', 'other']) await m.sh[p]!.listen({ port: 8080, tag: p });
    session = await m.hboneSession(ip, 'default', 'attacker');
    await new Promise((r) => session.once('connect', r));
  }, 60_000);
  afterAll(async () => {
    session?.destroy();
    await m?.close();
  });

  it('only ip:port and its IPv4-mapped IPv6 spellings are admitted; every other spelling is 400, and nothing but the pod\'s app on its own address is reached', async () => {
    const spellings: [string, number | 'reset'][] = [
      [`${ip}:8080`, 200],
      [`[::ffff:${ip}]:8080`, 200], // canonical: the IPv4 address (ztunnel's to_canonical)
      [`[::FFFF:${ip}]:8080`, 200],
      [`[0:0:0:0:0:ffff:${ip}]:8080`, 200],
      [`${ip}:08080`, 200], // a port with a leading zero is the same port (Rust's u16 parse)
      // another pod, the node, loopback, any address: not this connection's destination
      [`${other}:8080`, 400],
      [`[::ffff:${other}]:8080`, 400],
      [`${m.lab.node.gateway}:8080`, 400],
      ['127.0.0.1:8080', 400],
      ['[::ffff:127.0.0.1]:8080', 400],
      ['0.0.0.0:8080', 400],
      ['[::1]:8080', 400],
      ['[::]:8080', 400],
      // not a SocketAddr
      [`[${ip}]:8080`, 400],
      [`0${ip}:8080`, 400], // an octet with a leading zero (octal in inet_aton)
      [`${ip.split('.').slice(0, 2).join('.')}.${Number(ip.split('.')[2]) * 256 + Number(ip.split('.')[3])}:8080`, 400], // a.b.c16 (inet_aton)
      [`${ip.split('.').reduce((n, o) => n * 256 + Number(o), 0)}:8080`, 400], // one 32-bit number
      [`${ip}.:8080`, 400],
      [`${ip}`, 400],
      [`${ip}:`, 400],
      [':8080', 400],
      [`${ip}:0`, 400],
      [`${ip}:65536`, 400],
      [`${ip}:73616`, 400], // 8080 + 65536: a port that wraps to 8080 in 16 bits
      [`${ip}:-8080`, 400],
      [`${ip}:+8080`, 400],
      [`${ip}:0x1f90`, 400],
      [`${ip}:8080:8080`, 400],
      [`user@${ip}:8080`, 400],
      [`[fe80::1%25eth0]:8080`, 400],
      [`localhost:8080`, 400],
      // not even an HTTP/2 authority: the stream is reset before the proxy's code sees it
      [` ${ip}:8080`, 'reset'],
      [`${ip}:8080 `, 'reset'],
      [`${ip}:8080/`, 'reset'],
      [`http://${ip}:8080`, 'reset'],
      [utf8(`${ip}:٨٠٨٠`), 'reset'], // Arabic-Indic digits
      [utf8(`１${ip.slice(1)}:8080`), 'reset'], // a fullwidth digit
      ['', 'reset'],
    ];
    const [serverBefore, otherBefore] = [(await accepted('server')).length, (await accepted('other')).length];
    const got: [string, number | string][] = [];
    for (const [a] of spellings) got.push([a, await connect(a)]);
    expect(got).toEqual(spellings);
    // each admitted spelling reached the server's app, on the server's own address, and only it
    const admitted = spellings.filter(([, s]) => s === 200).length;
    // (a 200 follows the kernel's handshake, not the app's accept(): wait for the accepts)
    let acc = await accepted('server');
    await until('the server app to accept the admitted tunnels', async () => (acc = await accepted('server')).length - serverBefore >= admitted, { timeoutMs: 5000 });
    expect(acc.length - serverBefore).toBe(admitted);
    for (const a of acc.slice(serverBefore)) expect(a.sockname).toEqual({ host: ip, port: 8080 });
    expect((await accepted('other')).length).toBe(otherBefore);
    expect(m.crashes).toEqual([]);
  });

  it('garbage, doubled or huge values in the headers the proxy reads (traceparent, forwarded, baggage) neither stop a valid CONNECT nor reach anything else', async () => {
    const junk: Record<string, string | string[]>[] = [
      { traceparent: 'garbage' },
      { traceparent: '00-' + 'z'.repeat(32) + '-' + '0'.repeat(16) + '-01' },
      { traceparent: '00-00000000000000000000000000000000-0000000000000000-01' }, // all-zero ids (W3C: invalid)
      { traceparent: ['00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01', '00-0af7651916cd43dd8448eb211c80319d-b7ad6b7169203331-01'] },
      { traceparent: 'ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra' },
      { forwarded: 'host=' },
      { forwarded: 'for=;host="' },
      { forwarded: ['host=web.shop.svc.cluster.local', 'host=other.shop.svc.cluster.local'] },
      { forwarded: 'host="' + 'a'.repeat(4000) + '"' },
      { forwarded: 'proto=https;host=kubernetes.default.svc.cluster.local;by=x;for="[::1]:1"' },
      { forwarded: ';;;;,,,,===' },
      { baggage: 'k8s.namespace.name=' + 'x'.repeat(4000) },
      { baggage: ['a=b', 'c'] },
      { 'x-forwarded-network': utf8('ネットワーク') },
    ];
    const before = (await accepted('server')).length;
    const got: [string, number | string][] = [];
    for (const h of junk) got.push([JSON.stringify(h).slice(0, 80), await connect(`${ip}:8080`, h)]);
    expect(got).toEqual(junk.map((h) => [JSON.stringify(h).slice(0, 80), 200]));
    let acc = await accepted('server');
    await until('the server app to accept every tunnel', async () => (acc = await accepted('server')).length - before >= junk.length, { timeoutMs: 5000 });
    expect(acc.length - before).toBe(junk.length);
    for (const a of acc.slice(before)) expect(a.sockname).toEqual({ host: ip, port: 8080 });
    expect(m.crashes).toEqual([]);
  });
});
