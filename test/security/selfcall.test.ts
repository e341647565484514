/**
 * Attempts to turn the proxy against itself, under both capture backends: CONNECTs and plain
 * connections aimed at its own ports, a connection to its outbound listener that capture never
 * recorded (no original destination), a CONNECT to a closed port (answered at once, not after a
 * timeout), and two pods of one service account sharing a pooled HBONE connection.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BackendName } from '../../ts/redirect/backend.js';
import { TestMesh } from './mesh.js';
import { until } from '../netns/lab.js';
import http2 from 'node:http2';
import tls from 'node:tls';
import { BpfMap, pinnedMapSpec } from '../../ts/native/index.js';
import { encodeTuple } from '../../ts/native/structs.js';

describe.each(['ebpf', 'iptables'] as BackendName[])('the proxy never connects to itself, %s backend', (backend) => {
  let m: TestMesh;
  let server: { ip: string };

  /** The status the server answers a CONNECT to `authority` with (an HTTP/2 client with a mesh certificate), and how long it took. */
  const connect = async (authority: string): Promise<{ status: number | string; ms: number }> => {
    const c = await m.cert('default', 'sleep');
    const sock = tls.connect({ socket: await m.fromNode(server.ip, 15008), cert: c.chainPem, key: c.keyPem, ca: c.rootPem, ALPNProtocols: ['h2'], checkServerIdentity: () => undefined });
    const session = http2.connect(`https://${server.ip}:15008`, { createConnection: () => sock });
    session.on('error', () => {});
    try {
      const t0 = Date.now();
      const req = session.request({ ':method': 'CONNECT', ':authority': authority });
      const status = await new Promise<number | string>((resolve) => {
        req.once('response', (h) => resolve(Number(h[':status'])));
        req.once('error', (e: Error) => resolve(e.message));
        req.once('close', () => resolve(`closed (rst ${req.rstCode})`));
      });
      return { status, ms: Date.now() - t0 };
    } finally {
      session.destroy();
    }
  };

  beforeAll(async () => {
    m = await TestMesh.create(backend, [
      { name: 'client', namespace: 'default', serviceAccount: 'sleep' },
      { name: 'client2', namespace: 'default', serviceAccount: 'sleep' },
      { name: 'server', namespace: 'shop', serviceAccount: 'web' },
      { name: 'outside', namespace: 'default', serviceAccount: 'default', mesh: false },
    ]);
    server = m.pods.server!;
    await m.sh.server!.listen({ port: 8080, tag: 'app' });
  });

  afterAll(async () => {
    await m?.close();
  });

  it.each([15001, 15006, 15008, 15053, 15020])('CONNECT to the pod\'s own port %i is answered 503 and opens nothing', async (port) => {
    const fds = TestMesh.fds();
    const r = await connect(`${server.ip}:${port}`);
    expect(r.status).toBe(503);
    await until('the proxy\'s file descriptors to settle', () => TestMesh.fds() <= fds + 2, { timeoutMs: 5000 });
    expect(m.crashes).toEqual([]);
  });

  it('a plain connection from outside the mesh to the pod\'s 15001 is refused, never looped back into the proxy', async () => {
    const logs = m.records.length;
    const fds = TestMesh.fds();
    const r = await m.sh.outside!.connect({ host: server.ip, port: 15001, send: 'loop?', timeoutMs: 3000 });
    // the reset can land before the client's send (EPIPE), during it (ECONNRESET) or before the
    // socket reports itself connected (ENOTCONN, seen once under load): each is a refusal
    expect(r.ok ? r.reply : r.error).toMatch(/^$|ECONNRESET|ECONNREFUSED|EPIPE|ENOTCONN/);
    // refused as a self call, or (eBPF: the socket's own port is 15001, so the outbound rule
    // answers SO_ORIGINAL_DST) for want of a recorded destination: never relayed
    expect(m.logs(logs, (l) => l.code === 'INPOD_ERR_SELF_CALL' || l.code === 'INPOD_ERR_ORIGINAL_DST')).toHaveLength(1);
    expect(m.logs(logs, (l) => l.msg === 'connection complete')).toEqual([]);
    await until('the proxy\'s file descriptors to settle', () => TestMesh.fds() <= fds + 2, { timeoutMs: 5000 });
  });

  it('a connection to the outbound listener that capture never recorded is refused and logged, not sent to the listener itself', async () => {
    const logs = m.records.length;
    const fds = TestMesh.fds();
    // mark 0x539: connect4 / ISTIO_OUTPUT leave it alone, so nothing records where it was going
    const r = await m.sh.client!.connect({ host: '127.0.0.1', port: 15001, send: 'where?', mark: 0x539, timeoutMs: 3000 });
    expect(r.ok ? r.reply : r.error).toMatch(/^$|ECONNRESET|EPIPE/);
    const refused = m.logs(logs, (l) => l.code === 'INPOD_ERR_ORIGINAL_DST' || l.code === 'INPOD_ERR_SELF_CALL');
    expect(refused).toHaveLength(1);
    expect(refused[0]).toMatchObject({ scope: 'access', msg: 'connection failed', direction: 'outbound', 'dst.addr': '127.0.0.1:15001' }); // ztunnel's log_early_deny
    await until('the proxy\'s file descriptors to settle', () => TestMesh.fds() <= fds + 2, { timeoutMs: 5000 });
    expect(m.crashes).toEqual([]);
  });

  it('CONNECT to a port where the app does not listen is answered 503 within a second', async () => {
    const r = await connect(`${server.ip}:8099`);
    expect(r.status).toBe(503);
    expect(r.ms).toBeLessThan(1000);
  });

  it('two pods of one service account each arrive with their own IP (the HBONE pool is keyed by the source pod)', async () => {
    for (const name of ['client', 'client2', 'client', 'client2']) {
      const r = await m.sh[name]!.connect({ host: server.ip, port: 8080, send: name, timeoutMs: 5000 });
      expect(r.ok && r.reply).toBe(`app:${name}`);
      if (r.ok) await m.sh[name]!.close(r.connId);
      const acc = await m.sh.server!.accepted((await m.sh.server!.listenerByTag('app')).id);
      expect(acc.at(-1)!.peer.host).toBe(m.pods[name]!.ip);
    }
  });
});

describe('the proxy when eBPF capture cannot record its own upstream (a full map), ebpf backend', () => {
  let m: TestMesh;
  let own: BpfMap;

  beforeAll(async () => {
    m = await TestMesh.create('ebpf', [
      { name: 'server', namespace: 'shop', serviceAccount: 'web' },
      { name: 'outside', namespace: 'default', serviceAccount: 'default', mesh: false },
    ]);
    await m.sh.server!.listen({ port: 8080, tag: 'app' });
    own = BpfMap.pinned(`/sys/fs/bpf/${m.lab.prefix}inpod/inpod_own_conn`, pinnedMapSpec('inpod_own_conn'))!;
  });

  afterAll(async () => {
    own?.close();
    await m?.close();
  });

  it('fills the map so its transparent upstream is captured back into it: refused once, no loop, and served again once there is room', async () => {
    // entries of a netns that does not exist, until the kernel says the map is full
    const keys: Buffer[] = [];
    for (;;) {
      const n = keys.length;
      const key = encodeTuple({ netns: 1n, sip: `10.${(n >> 16) & 255}.${(n >> 8) & 255}.${n & 255}`, dip: '10.0.0.1', sport: 1, dport: 1 });
      try {
        own.update(key, Buffer.from([1]));
      } catch (e) {
        expect((e as { code?: string }).code).toBe('E2BIG');
        break;
      }
      keys.push(key);
    }
    try {
      const logs = m.records.length;
      const fds = TestMesh.fds();
      const r = await m.sh.outside!.connect({ host: m.pods.server!.ip, port: 8080, send: 'full', timeoutMs: 3000 });
      expect(r.ok ? r.reply : r.error).toMatch(/^$|ECONNRESET|EPIPE/);
      expect(m.logs(logs, (l) => l.code === 'INPOD_ERR_SELF_CALL')).toHaveLength(1);
      await until('the proxy\'s file descriptors to settle', () => TestMesh.fds() <= fds + 2, { timeoutMs: 5000 });
      expect(m.crashes).toEqual([]);
    } finally {
      for (const k of keys) own.delete(k);
    }
    const r = await m.sh.outside!.connect({ host: m.pods.server!.ip, port: 8080, send: 'room', timeoutMs: 3000 });
    expect(r.ok && r.reply).toBe('app:room');
  }, 60_000);
});
