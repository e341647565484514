/**
 * The proxy end to end on one host, under both backends: pods as network namespaces, the
 * proxy serving them in this process (which joins the lab cgroup, as the proxy sits in the
 * node's root cgroup in production), real TLS and HTTP/2.
 */
import { execFile, spawn } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import v8 from 'node:v8';
import vm from 'node:vm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BackendName } from '../../ts/redirect/backend.js';
import { parseLocalConfig } from '../../ts/state/localconfig.js';
import { StateStore } from '../../ts/state/store.js';
import type { Ztunnel } from '../../ts/proxy/ztunnel.js';
import { type Lab, type LabPod, type PodShell, until } from './lab.js';
import { Rig } from './rig.js';

const run = promisify(execFile);
v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

describe.each((process.env.INPOD_BACKENDS?.split(',') ?? ['ebpf', 'iptables']) as BackendName[])('proxy end to end, %s backend', (name) => {
  let rig: Rig;
  let lab: Lab;
  let dir: string;
  let zt: Ztunnel;
  let client: LabPod, server: LabPod, server2: LabPod, outside: LabPod;
  let sh: Record<'client' | 'server' | 'server2' | 'outside' | 'node', PodShell>;
  let vip: string;
  let state: StateStore;
  let records: Record<string, unknown>[] = [];
  /** ztunnel's access-log line of a connection that ended (ts/telemetry/accesslog.ts) */
  const complete = (l: Record<string, unknown>): boolean => l.scope === 'access' && l.msg === 'connection complete';
  const from = (l: Record<string, unknown>, ip: string): boolean => String(l['src.addr']).startsWith(`${ip}:`);
  const SLEEP = 'spiffe://cluster.local/ns/default/sa/sleep';
  const WEB = 'spiffe://cluster.local/ns/shop/sa/web';

  beforeAll(async () => {
    rig = await Rig.create({ tag: 'px', backend: name });
    ({ lab, dir, records } = rig);
    [client, server, server2, outside] = await Promise.all(['client', 'server', 'server2', 'outside'].map((n) => lab.addPod(n)));
    vip = `10.96.${lab.node.subnet.split('.')[2]}.10`;
    state = new StateStore();
    state.set(parseLocalConfig(`
workloads:
  - {uid: u-client, name: client, workloadName: client, namespace: default, serviceAccount: sleep, workloadIps: ["${client.ip}"], protocol: HBONE}
  - {uid: u-server, name: server, workloadName: server, namespace: shop, serviceAccount: web, workloadIps: ["${server.ip}"], protocol: HBONE,
     services: {"shop/web.shop.svc.cluster.local": {}}}
  - {uid: u-server2, name: server2, workloadName: server2, namespace: shop, serviceAccount: web, workloadIps: ["${server2.ip}"], protocol: HBONE,
     services: {"shop/web.shop.svc.cluster.local": {}}}
services:
  - {name: web, namespace: shop, hostname: web.shop.svc.cluster.local, vips: ["/${vip}"], ports: {80: 8080}}
`));
    zt = await rig.serve(state, { fastPath: 'on' });
    await rig.servePod(client, { uid: 'u-client', name: 'client', namespace: 'default', serviceAccount: 'sleep' });
    await rig.servePod(server, { uid: 'u-server', name: 'server', namespace: 'shop', serviceAccount: 'web' });
    await rig.servePod(server2, { uid: 'u-server2', name: 'server2', namespace: 'shop', serviceAccount: 'web' });
    sh = {
      client: await lab.shell(client.netnsPath, { inCgroup: true }),
      server: await lab.shell(server.netnsPath, { inCgroup: true }),
      server2: await lab.shell(server2.netnsPath, { inCgroup: true }),
      outside: await lab.shell(outside.netnsPath, { inCgroup: true }),
      node: await lab.shell(lab.nodeNetnsPath, { inCgroup: false }),
    };
    await sh.server.listen({ port: 8080, tag: 'server' });
    await sh.server.listen({ port: 9000, tag: 'echo', echo: true });
    await sh.server2.listen({ port: 8080, tag: 'server2' });
    await sh.outside.listen({ port: 80, tag: 'outside' });
  });

  afterAll(async () => {
    await rig?.destroy();
  });

  it('carries pod to pod over HBONE mTLS: the app answers and sees the client IP; the wire shows only TLS to 15008', async () => {
    const pcap = join(dir, 'hbone.pcap');
    const br = lab.node.bridge;
    const tshark = spawn('nsenter', [`--net=${lab.nodeNetnsPath}`, 'tshark', '-q', '-i', br, '-f', 'tcp', '-w', pcap], { stdio: 'ignore' });
    const count = async (filter: string): Promise<number> => {
      // a capture still being written may end in half a packet: tshark then reads what is whole and exits non-zero
      const out = await run('tshark', ['-r', pcap, '-Y', filter, '-T', 'fields', '-e', 'frame.number']).catch((e: { stdout?: string }) => ({ stdout: e.stdout ?? '' }));
      return out.stdout.trim().split('\n').filter(Boolean).length;
    };
    // A marker SYN from the node to a closed port of the outside pod, sent again until the capture
    // file shows it: everything sent before the last marker seen is in the file, in order.
    const markers = async (): Promise<number> => count(`ip.src == ${lab.node.gateway} && tcp.dstport == 9 && tcp.flags.syn == 1 && tcp.flags.ack == 0`);
    const mark = async (what: string): Promise<void> => {
      const seen = existsSync(pcap) ? await markers() : 0;
      await until(what, async () => {
        await sh.node.connect({ host: outside.ip, port: 9, timeoutMs: 1000 });
        return existsSync(pcap) && (await markers()) > seen;
      }, { timeoutMs: 20_000 });
    };
    await mark('tshark to capture on the bridge');
    const secret = `SECRET-${lab.prefix}-PAYLOAD`;
    const r = await sh.client.connect({ host: server.ip, port: 8080, send: secret, timeoutMs: 5000 });
    expect(r.ok && r.reply).toBe(`server:${secret}`);
    if (r.ok) await sh.client.close(r.connId);
    await mark('the capture to hold every packet of the connection');
    tshark.kill('SIGINT');
    await new Promise((res) => tshark.once('exit', res));
    const acc = await sh.server.accepted((await sh.server.listenerByTag('server')).id);
    expect(acc.at(-1)!.peer.host).toBe(client.ip);
    expect(await count(`ip.src == ${client.ip} && tcp.dstport == 15008 && tls.handshake.type == 1`)).toBeGreaterThan(0);
    expect(await count('tls.record.version == 0x0303 && tls.app_data')).toBeGreaterThan(0);
    expect(await count(`frame contains "${secret}"`)).toBe(0);
    expect(await count(`tcp.dstport == 8080`)).toBe(0);
    await until('the outbound HBONE access-log line', () => records.some((l) => complete(l) && l.transport === 'hbone' && l.direction === 'outbound'));
    const line = records.find((l) => complete(l) && l.transport === 'hbone' && l.direction === 'outbound');
    expect(line).toMatchObject({ level: 30, 'src.identity': SLEEP, 'dst.identity': WEB, 'dst.addr': `${server.ip}:15008`, 'dst.hbone_addr': `${server.ip}:8080`,
      bytes_sent: secret.length, bytes_recv: `server:${secret}`.length });
    expect(line).not.toHaveProperty('error');
  });

  it('an app port nothing listens on: the client is reset, and both ends report a failed connection (CONNECT answered 503)', async () => {
    const before = records.length;
    const r = await sh.client.connect({ host: server.ip, port: 8181, send: 'x', timeoutMs: 5000 });
    // accepted by the client's proxy (the app it asked for is captured), then reset: never an
    // answer (the reset reaches the client's read, or its write or even its send if it lands first)
    expect(r.ok ? r.reply : `error:${r.error}`).toMatch(/^error:(ECONNRESET|EPIPE)$/);
    // the destination's proxy could not reach the app (inbound), the source's CONNECT was refused (outbound)
    const failed = (dir: string): Record<string, unknown> | undefined => records.slice(before).find((l) => complete(l) && l.direction === dir && l['dst.hbone_addr'] === `${server.ip}:8181` && l.response_flags === 'CONNECT');
    await until('both access-log lines of the failed connection', () => !!failed('inbound') && !!failed('outbound'), { context: () => JSON.stringify(records.slice(before)) });
    expect(String(failed('inbound')!.error)).toMatch(/unreachable/);
    expect(String(failed('outbound')!.error)).toMatch(/answered 503/);
  });

  it('passes traffic to a destination outside the mesh through as plain TCP', async () => {
    const r = await sh.client.connect({ host: outside.ip, port: 80, send: 'hi', timeoutMs: 5000 });
    expect(r.ok && r.reply).toBe('outside:hi');
    if (r.ok) await sh.client.close(r.connId);
    const acc = await sh.outside.accepted((await sh.outside.listenerByTag('outside')).id);
    expect(acc.at(-1)!.peer.host).toBe(client.ip);
  });

  it('lets a client outside the mesh reach the pod through 15006, keeping its IP', async () => {
    const r = await sh.outside.connect({ host: server.ip, port: 8080, send: 'plain', timeoutMs: 5000 });
    expect(r.ok && r.reply).toBe('server:plain');
    if (r.ok) await sh.outside.close(r.connId);
    const acc = await sh.server.accepted((await sh.server.listenerByTag('server')).id);
    expect(acc.at(-1)!.peer.host).toBe(outside.ip);
    // the access-log line is written when the proxy sees the connection end
    await until('the plaintext access-log line of the outside client', () => records.some((l) => complete(l) && l.transport === 'plaintext' && from(l, outside.ip)));
  });

  it('splices passthrough and plaintext inbound in the kernel; metrics and the access log count the spliced bytes exactly', async () => {
    const reg = zt.telemetry!.registry;
    const sum = async (name: string, labels: Record<string, string>): Promise<number> => {
      const m = (await reg.getMetricsAsJSON()).find((x) => x.name === name);
      return (m?.values ?? []).filter((v) => Object.entries(labels).every(([k, val]) => v.labels[k] === val)).reduce((a, v) => a + v.value, 0);
    };
    const cases: { from: 'client' | 'outside'; to: LabPod; port: number; tag: string; transport: string; labels: Record<string, string> }[] = [
      { from: 'client' as const, to: outside, port: 80, tag: 'outside', transport: 'passthrough', labels: { reporter: 'source', source_workload: 'client', connection_security_policy: 'unknown' } },
      { from: 'outside' as const, to: server, port: 8080, tag: 'server', transport: 'plaintext', labels: { reporter: 'destination', destination_workload: 'server', connection_security_policy: 'unknown' } },
    ];
    for (const c of cases) {
      const payload = `${c.transport}-`.padEnd(1000, 'x');
      const before = {
        req: await sum('istio_tcp_received_bytes_total', c.labels),
        resp: await sum('istio_tcp_sent_bytes_total', c.labels),
        kernel: zt.fastPath.counters().bytes,
        logs: records.length,
      };
      const r = await sh[c.from].connect({ host: c.to.ip, port: c.port, send: payload, timeoutMs: 5000 });
      expect(r.ok && r.reply).toBe(`${c.tag}:${payload}`);
      if (r.ok) await sh[c.from].close(r.connId);
      let line: Record<string, unknown> | undefined;
      await until(`the ${c.transport} access-log line`, () => !!(line = records.slice(before.logs).find((l) => complete(l) && l.transport === c.transport)));
      const replyLen = c.tag.length + 1 + payload.length;
      // the reporting side's view (as ztunnel logs it): outbound sent the request, inbound sent the response
      const [sent, recv] = c.labels.reporter === 'source' ? [payload.length, replyLen] : [replyLen, payload.length];
      expect(line).toMatchObject({ level: 30, path: 'kernel', bytes_sent: sent, bytes_recv: recv, kernel_bytes: payload.length + replyLen });
      expect(line).not.toHaveProperty('error');
      expect(await sum('istio_tcp_received_bytes_total', c.labels) - before.req).toBe(payload.length);
      expect(await sum('istio_tcp_sent_bytes_total', c.labels) - before.resp).toBe(replyLen);
      expect(zt.fastPath.counters().bytes - before.kernel).toBe(payload.length + replyLen);
    }
    expect(zt.fastPath.counters().drops).toBe(0);
    // closed connections leave the maps: once no spliced connection is open, they are empty
    await until('the spliced connections to end', () => zt.fastPath.activeConnections === 0);
    expect(zt.fastPath.mapEntries()).toEqual({ srcs: 0, dsts: 0, flows: 0 });
  });

  it('delivers between two pods of this node directly when asked: checked with the client identity, spliced, reported by both sides', async () => {
    zt.sameNode = 'direct';
    const saved = state.snapshot.state;
    try {
      const logs = records.length;
      const r = await sh.client.connect({ host: server.ip, port: 8080, send: 'same-node', timeoutMs: 5000 });
      expect(r.ok && r.reply).toBe('server:same-node');
      if (r.ok) await sh.client.close(r.connId);
      const acc = await sh.server.accepted((await sh.server.listenerByTag('server')).id);
      expect(acc.at(-1)!.peer.host).toBe(client.ip); // the app still sees the client
      let local: Record<string, unknown>[] = [];
      await until('both access-log lines of the same-node connection', () => (local = records.slice(logs).filter((l) => complete(l) && l.transport === 'local')).length >= 2);
      const ids = { 'src.addr': expect.stringMatching(new RegExp(`^${client.ip.replace(/\./g, '\\.')}:\\d+$`)), 'src.identity': SLEEP, 'dst.addr': `${server.ip}:8080`, 'dst.identity': WEB };
      expect(local.find((l) => l.direction === 'outbound')).toMatchObject({ ...ids, pod: 'default/client', path: 'kernel', bytes_sent: 9, bytes_recv: 16, kernel_bytes: 25 });
      expect(local.find((l) => l.direction === 'inbound')).toMatchObject({ ...ids, pod: 'shop/server', path: 'kernel', bytes_sent: 16, bytes_recv: 9 });
      // no HBONE for it: no access-log line of that connection says hbone
      expect(records.slice(logs).filter((l) => complete(l) && l.transport === 'hbone')).toEqual([]);

      // the destination's policy applies with the client's identity: a DENY for it resets the client
      state.set({ ...saved, policies: [{ apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', metadata: { name: 'no-sleep', namespace: 'shop' },
        spec: { action: 'DENY', rules: [{ from: [{ source: { principals: ['cluster.local/ns/default/sa/sleep'] } }] }] } }] });
      const denied = await sh.client.connect({ host: server.ip, port: 8080, send: 'x', timeoutMs: 5000 });
      expect(denied.ok ? denied.reply : denied.error).toMatch(/^(error:)?ECONNRESET|^$/);
      const deny = (): Record<string, unknown>[] => records.slice(logs).filter((l) => complete(l) && l.transport === 'local' && l.response_flags === 'DENY');
      await until('the DENY access-log lines', () => deny().length >= 2);
      expect(deny().map((l) => l.direction).sort()).toEqual(['inbound', 'outbound']);
    } finally {
      state.set(saved);
      zt.sameNode = 'hbone';
    }
  });

  it('balances a service VIP across its two endpoints', async () => {
    const seen = new Set<string>();
    for (let i = 0; i < 24 && seen.size < 2; i++) {
      const r = await sh.client.connect({ host: vip, port: 80, send: 'x', timeoutMs: 5000 });
      if (r.ok) seen.add(r.reply!.split(':')[0]!);
    }
    expect([...seen].sort()).toEqual(['server', 'server2']);
  });

  it('carries 1,000 concurrent connections with every byte intact, and memory returns near baseline', async () => {
    gc();
    const before = process.memoryUsage().heapUsed;
    const res = await sh.client.load({ host: server.ip, port: 9000, count: 1000, size: 16 * 1024, timeoutMs: 60_000 });
    expect(res).toMatchObject({ ok: 1000, bad: 0, errors: {} });
    // at most 100 streams per pooled HTTP/2 connection, so a burst this size needs several
    expect(zt.pool.maxStreamsSeen).toBeLessThanOrEqual(100);
    expect(zt.pool.maxStreamsSeen).toBeGreaterThan(1);
    expect(zt.pool.size).toBeGreaterThanOrEqual(2);
    // what the connections held is released as their close events run: wait for that, not a time
    await until('the heap to return within 32 MiB of where it was', () => {
      gc();
      return process.memoryUsage().heapUsed - before < 32 * 1024 * 1024;
    }, { timeoutMs: 10_000, intervalMs: 250 });
  }, 120_000);

  it('refuses a peer whose identity is not the expected one, naming both identities', async () => {
    const saved = state.snapshot.state;
    state.set({ ...saved, workloads: saved.workloads.map((w) => (w.name === 'server2' ? { ...w, serviceAccount: 'impostor' } : w)) });
    try {
      const r = await sh.client.connect({ host: server2.ip, port: 8080, send: 'x', timeoutMs: 5000 });
      expect(r.ok ? r.reply : r.error).toMatch(/^(error:)?ECONNRESET|^$/);
      await until('the TLS_FAILURE access-log line', () => records.some((l) => complete(l) && l.response_flags === 'TLS_FAILURE'));
      const line = records.findLast((l) => complete(l) && l.response_flags === 'TLS_FAILURE');
      expect(line?.error).toMatch(/presented spiffe:\/\/cluster.local\/ns\/shop\/sa\/web, expected spiffe:\/\/cluster.local\/ns\/shop\/sa\/impostor/);
    } finally {
      state.set(saved);
    }
  });

  it("interoperates with an independent HTTP/2 client (python h2 over ssl), which reads ztunnel's SETTINGS and connection window (src/proxy/h2/server.rs serve_connection)", async () => {
    const certs = zt.certs;
    const id = await certs.get({ trustDomain: 'cluster.local', namespace: 'default', serviceAccount: 'sleep' });
    writeFileSync(join(dir, 'c.pem'), id.chainPem);
    writeFileSync(join(dir, 'k.pem'), id.keyPem);
    writeFileSync(join(dir, 'root.pem'), certs.rootPem);
    const { stdout } = await run('nsenter', [`--net=${lab.nodeNetnsPath}`, '/usr/bin/python3', join(__dirname, 'tools', 'h2client.py'),
      server.ip, '15008', `${server.ip}:8080`, `${server2.ip}:8080`, join(dir, 'c.pem'), join(dir, 'k.pem'), join(dir, 'root.pem')]);
    expect(JSON.parse(stdout)).toEqual({
      connect: { status: 200, data: 'server:h2-ping' },
      get: { status: 400 },
      mismatch: { status: 400 },
      noCert: 'handshake failed',
      otherCa: 'handshake failed',
      // MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE; the
      // connection window raised from 65,535 to 16 MiB
      wire: { settings: { 3: 200, 4: 4 * 1024 * 1024, 5: 1024 * 1024, 6: 65536 }, connectionWindowUpdates: [16 * 1024 * 1024 - 65535] },
    });
  });
});
