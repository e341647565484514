/**
 * The HBONE CONNECT headers and HTTP/2 settings real tunnels carry, end to end (eBPF capture; the
 * headers do not depend on the backend), against ztunnel's:
 *  - outbound (src/proxy/outbound.rs create_hbone_request): `baggage` of the source workload
 *    (src/baggage.rs baggage_header_val), `forwarded: for="<client ip:port>"[;host=<service>]`
 *    (build_forwarded), a `traceparent` per connection whose trace id the proxy logs the
 *    connection under (src/proxy.rs TraceParent), and nothing else. The client's SETTINGS,
 *    connection window and PING (src/proxy/h2/client.rs spawn_connection, src/proxy/h2.rs
 *    do_ping_pong). Seen by an independent HBONE server (python-h2, tools/h2server.py) standing
 *    in for a peer's ztunnel.
 *  - inbound (src/proxy/inbound.rs): the client's traceparent is the trace id the destination
 *    logs (extract_traceparent), `host=` picks among the destination's own services
 *    (guess_inbound_service), the 200 carries the destination's baggage (build_response).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import http2, { type IncomingHttpHeaders } from 'node:http2';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Workload } from '../../ts/state/types.js';
import { TestMesh } from '../security/mesh.js';
import { until } from './lab.js';

const run = promisify(execFile);
const TRACE = /^00-([0-9a-f]{32})-[0-9a-f]{16}-00$/;
const MiB = 1024 * 1024;
/** SETTINGS identifiers (RFC 9113 6.5.2) as h2 reports them */
const SETTING = { enablePush: '2', maxConcurrentStreams: '3', initialWindowSize: '4', maxFrameSize: '5', maxHeaderListSize: '6' };

/** One line of tools/h2server.py: what the independent server saw on connection `conn`. */
interface Seen {
  conn: number;
  settings?: Record<string, number>;
  window?: number;
  headers?: [string, string][];
  ping?: number;
}

describe('HBONE CONNECT headers and HTTP/2 settings on real tunnels', () => {
  let m: TestMesh;
  let peer: ChildProcess | undefined;
  let vip: string;
  /** every line the independent server printed */
  const seen: Seen[] = [];
  const connects = (): (Seen & { headers: [string, string][] })[] => seen.filter((l): l is Seen & { headers: [string, string][] } => Boolean(l.headers));
  /** The peer's CONNECT number `n` (0-based), once its line is in: the peer's stdout is a pipe that may bring it after the reply. */
  const reported = async (n: number): Promise<Seen & { headers: [string, string][] }> => {
    await until('the HBONE peer reporting the CONNECT', () => connects().length > n, { timeoutMs: 5000 });
    return connects()[n]!;
  };
  const headerMap = (l: { headers: [string, string][] }): Record<string, string> => Object.fromEntries(l.headers);
  const who = { clusterId: 'Kubernetes', workloadType: 'deployment', canonicalRevision: 'v1' };

  beforeAll(async () => {
    m = await TestMesh.create('ebpf', [
      { name: 'client', namespace: 'default', serviceAccount: 'sleep' },
      { name: 'server', namespace: 'shop', serviceAccount: 'web' },
      { name: 'fake', namespace: 'shop', serviceAccount: 'fake', mesh: false },
    ]);
    // the state as istiod would describe these pods; "fake" is an HBONE workload served by the
    // independent server, behind a service VIP; "server" belongs to two services
    vip = `10.96.${m.lab.node.subnet.split('.')[2]}.20`;
    const s = m.state.snapshot.state;
    const extra: Partial<Record<string, Partial<Workload>>> = {
      client: { ...who, workloadName: 'sleep', canonicalName: 'sleep' },
      server: { ...who, workloadName: 'web', canonicalName: 'web', services: { 'shop/a.shop.svc.cluster.local': { 8080: 8080 }, 'shop/b.shop.svc.cluster.local': { 8080: 8080 } } },
    };
    m.state.set({
      ...s,
      workloads: [
        ...s.workloads.map((w) => ({ ...w, ...extra[w.name] })),
        {
          uid: 'u-fake', name: 'fake', namespace: 'shop', serviceAccount: 'fake', trustDomain: 'cluster.local', workloadIps: [m.pods.fake!.ip],
          protocol: 'HBONE', node: '', network: '', labels: {}, healthy: true, services: { 'shop/fake.shop.svc.cluster.local': { 80: 8080 } },
        },
      ],
      services: [
        ...s.services,
        { name: 'fake', namespace: 'shop', hostname: 'fake.shop.svc.cluster.local', vips: [{ network: '', address: vip }], ports: { 80: 8080 }, subjectAltNames: [] },
        ...['a', 'b'].map((n) => ({ name: n, namespace: 'shop', hostname: `${n}.shop.svc.cluster.local`, vips: [], ports: { 8080: 8080 }, subjectAltNames: [] })),
      ],
    });
    const cert = await m.cert('shop', 'fake');
    const files = { cert: join(m.dir, 'fake.pem'), key: join(m.dir, 'fake.key'), root: join(m.dir, 'root.pem') };
    writeFileSync(files.cert, cert.chainPem);
    writeFileSync(files.key, cert.keyPem);
    writeFileSync(files.root, cert.rootPem);
    peer = spawn('nsenter', [`--net=${m.pods.fake!.netnsPath}`, '/usr/bin/python3', '-u', join(__dirname, 'tools', 'h2server.py'), '15008', files.cert, files.key, files.root], { stdio: 'pipe' });
    let stderr = '';
    peer.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const ready = new Promise<void>((resolve, reject) => {
      createInterface({ input: peer!.stdout! }).on('line', (line) => {
        const l = JSON.parse(line) as Seen & { ready?: boolean };
        if (l.ready) resolve();
        else seen.push(l);
      });
      peer!.once('exit', (code) => reject(new Error(`h2server.py exited (${code}): ${stderr}`)));
    });
    await ready;
    await m.sh.server!.listen({ port: 8080, tag: 'app' });
  });

  afterAll(async () => {
    if (peer && peer.exitCode === null) {
      const gone = new Promise((resolve) => peer!.once('exit', resolve));
      peer.kill('SIGKILL');
      await gone;
    }
    await m?.close();
  });

  /** Whether the "connection complete" access-log line of the connection traced `id` was written in `direction`. */
  const logged = (direction: 'inbound' | 'outbound', id: string): boolean =>
    m.records.some((l) => l.msg === 'connection complete' && (l[direction] as { id?: string } | undefined)?.id === id);

  it("to a workload: the CONNECT carries exactly ztunnel's headers (forwarded the client's ip:port, baggage the source workload, a traceparent the outbound log line carries), on a connection with ztunnel's client SETTINGS and window", async () => {
    const n = connects().length;
    const r = await m.sh.client!.connect({ host: m.pods.fake!.ip, port: 8080, send: 'hello', timeoutMs: 5000 });
    expect(r.ok && r.reply).toBe('hello');
    if (!r.ok) return;
    const got = await reported(n);
    const h = headerMap(got);
    expect(Object.keys(h).sort()).toEqual([':authority', ':method', 'baggage', 'forwarded', 'traceparent']);
    expect(h[':method']).toBe('CONNECT');
    expect(h[':authority']).toBe(`${m.pods.fake!.ip}:8080`);
    expect(h.forwarded).toBe(`for="${m.pods.client!.ip}:${r.sockname.port}"`);
    expect(h.baggage).toBe('k8s.cluster.name=Kubernetes,k8s.namespace.name=default,k8s.deployment.name=sleep,service.name=sleep,service.version=v1');
    const trace = TRACE.exec(h.traceparent!);
    expect(trace, h.traceparent).not.toBeNull();
    // the client proxy's SETTINGS and connection window as python-h2 decoded them (client.rs
    // spawn_connection: no push, 4 MiB stream window, 1 MiB frames, 16 KiB header list; the
    // connection window raised from 65,535 to 16 MiB)
    const onConn = seen.filter((l) => l.conn === got.conn);
    expect(onConn.find((l) => l.settings)?.settings).toEqual({
      [SETTING.enablePush]: 0, [SETTING.initialWindowSize]: 4 * MiB, [SETTING.maxFrameSize]: MiB, [SETTING.maxHeaderListSize]: 16 * 1024,
    });
    expect(onConn.filter((l) => l.window !== undefined).map((l) => l.window)[0]).toBe(16 * MiB - 65_535);
    await m.sh.client!.close(r.connId);
    await until('the outbound access-log line under that trace id', () => logged('outbound', trace![1]!), { timeoutMs: 5000 });
  });

  it('to a service VIP: forwarded adds host=<the service hostname>, and every connection gets its own trace', async () => {
    const before = connects().length;
    for (let i = 0; i < 2; i++) {
      const n = connects().length;
      const r = await m.sh.client!.connect({ host: vip, port: 80, send: 'via-vip', timeoutMs: 5000 });
      expect(r.ok && r.reply).toBe('via-vip');
      if (r.ok) {
        expect(headerMap(await reported(n)).forwarded).toBe(`for="${m.pods.client!.ip}:${r.sockname.port}";host=fake.shop.svc.cluster.local`);
        await m.sh.client!.close(r.connId);
      }
    }
    const traces = connects().slice(before).map((l) => headerMap(l).traceparent);
    expect(traces).toHaveLength(2);
    expect(new Set(traces).size).toBe(2);
  });

  it('between two proxies: the destination logs the connection under the trace id the source sent', async () => {
    const from = m.records.length;
    const r = await m.sh.client!.connect({ host: m.pods.server!.ip, port: 8080, send: 'x', timeoutMs: 5000 });
    expect(r.ok).toBe(true);
    if (r.ok) await m.sh.client!.close(r.connId);
    // the only inbound HBONE connection since `from` is this one (the stand-in peer logs nothing)
    const inbound = (l: Record<string, unknown>): boolean => l.msg === 'connection complete' && Boolean(l.inbound);
    await until("the destination's access-log line", () => m.logs(from, inbound).length > 0, { timeoutMs: 5000 });
    const id = (m.logs(from, inbound)[0]!.inbound as { id: string }).id;
    expect(id).toMatch(/^[0-9a-f]{32}$/);
    await until("the source's access-log line under the same trace id", () => logged('outbound', id), { timeoutMs: 5000 });
  });

  it("a CONNECT with the client's traceparent and forwarded host: logged under its trace id, the named service counted only if it is the destination's own, the 200 carries the destination's baggage", async () => {
    const c = await m.cert('default', 'sleep');
    const connect = async (traceparent: string, host: string): Promise<IncomingHttpHeaders> => {
      const sock = tls.connect({ socket: await m.fromNode(m.pods.server!.ip, 15008), cert: c.chainPem, key: c.keyPem, ca: c.rootPem, ALPNProtocols: ['h2'], checkServerIdentity: () => undefined });
      const session = http2.connect(`https://${m.pods.server!.ip}:15008`, { createConnection: () => sock });
      session.on('error', () => {});
      try {
        const stream = session.request({ ':method': 'CONNECT', ':authority': `${m.pods.server!.ip}:8080`, traceparent, forwarded: `for="192.0.2.1:4000";host=${host}` });
        const res = await new Promise<IncomingHttpHeaders>((resolve, reject) => {
          stream.once('response', resolve);
          stream.once('error', reject);
        });
        stream.close();
        return res;
      } finally {
        session.close();
      }
    };
    const metric = async (): Promise<string> => m.zt.telemetry.registry.metrics();
    const mine = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
    const res = await connect(mine, 'b.shop.svc.cluster.local');
    expect(res[':status']).toBe(200);
    expect(res.baggage).toBe('k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.deployment.name=web,service.name=web,service.version=v1');
    await until('the inbound access-log line under the client trace id', () => logged('inbound', '4bf92f3577b34da6a3ce929d0e0e4736'), { timeoutMs: 5000 });
    expect(await metric()).toMatch(/istio_tcp_connections_closed_total\{[^}]*destination_service="b\.shop\.svc\.cluster\.local"/);
    // a service the destination is not part of is not believed
    await connect('00-11111111111111111111111111111111-2222222222222222-00', 'evil.other.svc.cluster.local');
    await until('the second inbound line', () => logged('inbound', '11111111111111111111111111111111'), { timeoutMs: 5000 });
    expect(await metric()).not.toMatch(/evil\.other/);
  });

  it("keeps the pooled connection alive with ztunnel's PING: the first 10 s after the connection started (src/proxy/h2.rs do_ping_pong), answered, the connection kept, with TCP keepalive under it", async () => {
    const conn = connects()[0]!.conn;
    await until('a PING from the client proxy on its pooled connection', () => seen.some((l) => l.conn === conn && l.ping !== undefined), { timeoutMs: 25_000 });
    const first = seen.find((l) => l.conn === conn && l.ping !== undefined)!.ping!;
    // do_ping_pong sleeps PING_INTERVAL (10 s) before its first PING; timers never fire early
    expect(first).toBeGreaterThanOrEqual(9.5);
    // answered (h2 acks it): the same connection still carries a new tunnel
    const n = connects().length;
    const r = await m.sh.client!.connect({ host: m.pods.fake!.ip, port: 8080, send: 'after-ping', timeoutMs: 5000 });
    expect(r.ok && r.reply).toBe('after-ping');
    if (r.ok) await m.sh.client!.close(r.connId);
    expect((await reported(n)).conn).toBe(conn);
    // and TCP keepalive under it, as ztunnel's socket factory sets it (src/proxy.rs setup_socket:
    // 180 s; the kernel's default is off, 2 hours when on): the kernel shows the timer armed
    const { stdout } = await run('nsenter', [`--net=${m.pods.client!.netnsPath}`, 'ss', '-tnoH', 'state', 'established', 'dst', `${m.pods.fake!.ip}:15008`]);
    expect(stdout).toMatch(/timer:\(keepalive,[0-2]min\d+sec/);
  }, 40_000);
});
