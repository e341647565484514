/**
 * The HBONE CONNECT headers real tunnels carry, end to end (eBPF capture; the headers do not
 * depend on the backend), against ztunnel's:
 *  - outbound (src/proxy/outbound.rs create_hbone_request): `baggage` of the source workload
 *    (src/baggage.rs), `forwarded: for="<client ip:port>"[;host=<service>]` (build_forwarded), a
 *    `traceparent` per connection whose trace id the proxy logs the connection under (src/proxy.rs
 *    TraceParent). Seen by an HBONE server of the test's own standing in for a peer's ztunnel.
 *  - inbound (src/proxy/inbound.rs): the client's traceparent is the trace id the destination
 *    logs (extract_traceparent), `host=` picks among the destination's own services
 *    (guess_inbound_service), the 200 carries the destination's baggage (build_response).
 */
import http2, { type IncomingHttpHeaders, type Settings } from 'node:http2';
import tls from 'node:tls';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openPath, type Fd } from '../../ts/native/index.js';
import { createHboneServer } from '../../ts/proxy/hbone/server.js';
import { podListenerFd } from '../../ts/proxy/sockets.js';
import type { Workload } from '../../ts/state/types.js';
import { TestMesh } from '../security/mesh.js';
import { until } from './lab.js';

const TRACE = /^00-([0-9a-f]{32})-[0-9a-f]{16}-00$/;

describe('HBONE CONNECT headers on real tunnels', () => {
  let m: TestMesh;
  let fakeNs: Fd;
  let fake: http2.Http2SecureServer;
  let vip: string;
  /** what the stand-in peer received: one entry per CONNECT */
  const seen: { headers: IncomingHttpHeaders; clientSettings: Settings }[] = [];
  const who = { clusterId: 'Kubernetes', workloadType: 'deployment', canonicalRevision: 'v1' };

  beforeAll(async () => {
    m = await TestMesh.create('ebpf', [
      { name: 'client', namespace: 'default', serviceAccount: 'sleep' },
      { name: 'server', namespace: 'shop', serviceAccount: 'web' },
      { name: 'fake', namespace: 'shop', serviceAccount: 'fake', mesh: false },
    ]);
    // the state as istiod would describe these pods; "fake" is an HBONE workload served by the
    // test's own server, behind a service VIP; "server" belongs to two services
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
      services: [...s.services, { name: 'fake', namespace: 'shop', hostname: 'fake.shop.svc.cluster.local', vips: [vip], ports: { 80: 8080 }, subjectAltNames: [] }],
    });
    const cert = await m.cert('shop', 'fake');
    fake = createHboneServer({
      cert: cert.chainPem, key: cert.keyPem, ca: cert.rootPem, trustDomain: 'cluster.local', log: pino({ level: 'silent' }),
      onStream: async ({ stream, headers }) => {
        seen.push({ headers, clientSettings: stream.session?.remoteSettings ?? {} });
        stream.respond({ ':status': 200 });
        stream.on('data', (d: Buffer) => stream.write(d)); // echo, and end when the client ends
        stream.on('end', () => stream.end());
      },
    });
    fakeNs = openPath(m.pods.fake!.netnsPath);
    const fd = podListenerFd(fakeNs.fd, 15008);
    await new Promise<void>((resolve) => fake.listen({ fd }, resolve));
    await m.sh.server!.listen({ port: 8080, tag: 'app' });
  });

  afterAll(async () => {
    fake?.close();
    fakeNs?.close();
    await m?.close();
  });

  /** The access-log line of the connection logged under trace id `id` in `direction`. */
  const logged = (direction: 'inbound' | 'outbound', id: string) => m.records.find((l) => (l[direction] as { id?: string } | undefined)?.id === id);

  it('to a workload: forwarded names the client ip:port, baggage the source workload, and the traceparent is the one the outbound log line carries', async () => {
    const r = await m.sh.client!.connect({ host: m.pods.fake!.ip, port: 8080, send: 'hello', timeoutMs: 5000 });
    expect(r.ok && r.reply).toBe('hello');
    if (!r.ok) return;
    const got = seen.at(-1)!;
    expect(got.headers[':method']).toBe('CONNECT');
    expect(got.headers[':authority']).toBe(`${m.pods.fake!.ip}:8080`);
    expect(got.headers.forwarded).toBe(`for="${m.pods.client!.ip}:${r.sockname.port}"`);
    expect(got.headers.baggage).toBe('k8s.cluster.name=Kubernetes,k8s.namespace.name=default,k8s.deployment.name=sleep,service.name=sleep,service.version=v1');
    const trace = TRACE.exec(String(got.headers.traceparent));
    expect(trace, String(got.headers.traceparent)).not.toBeNull();
    // the client proxy's settings, as the peer's HTTP/2 stack decoded them
    expect(got.clientSettings).toMatchObject({ enablePush: false, initialWindowSize: 4 * 1024 * 1024, maxFrameSize: 1024 * 1024, maxHeaderListSize: 16 * 1024 });
    await m.sh.client!.close(r.connId);
    await until('the outbound access-log line under that trace id', () => logged('outbound', trace![1]!), { timeoutMs: 5000 });
  });

  it('to a service VIP: forwarded adds host=<the service hostname>, and every connection gets its own trace', async () => {
    const before = seen.length;
    for (let i = 0; i < 2; i++) {
      const r = await m.sh.client!.connect({ host: vip, port: 80, send: 'via-vip', timeoutMs: 5000 });
      expect(r.ok && r.reply).toBe('via-vip');
      if (r.ok) {
        expect(seen.at(-1)!.headers.forwarded).toBe(`for="${m.pods.client!.ip}:${r.sockname.port}";host=fake.shop.svc.cluster.local`);
        await m.sh.client!.close(r.connId);
      }
    }
    const traces = seen.slice(before).map((s) => s.headers.traceparent);
    expect(new Set(traces).size).toBe(2);
  });

  it('between two proxies: the destination logs the connection under the trace id the source sent', async () => {
    const from = m.records.length;
    const r = await m.sh.client!.connect({ host: m.pods.server!.ip, port: 8080, send: 'x', timeoutMs: 5000 });
    expect(r.ok).toBe(true);
    if (r.ok) await m.sh.client!.close(r.connId);
    // the only inbound HBONE connection since `from` is this one (the stand-in peer logs nothing)
    await until("the destination's access-log line", () => m.logs(from, (l) => Boolean(l.inbound)).length > 0, { timeoutMs: 5000 });
    const id = (m.logs(from, (l) => Boolean(l.inbound))[0]!.inbound as { id: string }).id;
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
});
