/**
 * The proxy over IPv6 end to end (issue 18, the proxy's part): dual-stack pods (the lab's IPv4
 * from CNI plus fd00:200::/64), the proxy serving them in this process. Capture is stood in for
 * by Istio's in-pod rules for both families, set by this test (cni/pkg/iptables: REDIRECT of the
 * app's outbound TCP to 15001 and of inbound TCP but 15008 to 15006, the proxy's mark 0x539
 * skipped, the 0x111 connmark and table 133 return path of its transparent upstream), so the
 * proxy's IPv6 paths are tested whatever the capture backends do:
 *  - HBONE over IPv6 pod to pod (:authority `[addr]:port` and `forwarded: for="[addr]:port"` as
 *    ztunnel's outbound.rs writes them, seen by an independent HBONE server), the app reached
 *    transparently from the client's IPv6 address;
 *  - a dual-stack Service's IPv6 VIP to the endpoint's IPv6 address;
 *  - passthrough and plaintext inbound over IPv6 spliced by the kernel fast path;
 *  - the access log and metrics with IPv6 addresses written as Rust's SocketAddr (`[addr]:port`);
 *  - the same listeners carrying IPv4 at the same time.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalCa } from '../../ts/identity/ca.js';
import { openPath } from '../../ts/native/index.js';
import { Ztunnel } from '../../ts/proxy/ztunnel.js';
import { parseLocalConfig } from '../../ts/state/localconfig.js';
import { StateStore } from '../../ts/state/store.js';
import { Lab, type LabPod, type PodShell, until } from './lab.js';

const run = promisify(execFile);
const SLEEP = 'spiffe://cluster.local/ns/default/sa/sleep';
const WEB = 'spiffe://cluster.local/ns/shop/sa/web';
/** the pods' IPv6 addresses (each lab is its own L2 segment, so they never meet another run's) */
const V6 = { client: 'fd00:200::a', server: 'fd00:200::b', fake: 'fd00:200::c', outside: 'fd00:200::d' } as const;
const VIP6 = 'fd00:200::96:10';
type Name = keyof typeof V6;

/** Istio's in-pod rules for one family (iptables or ip6tables), as capture would set them. */
async function captureRules(netnsPath: string, family: 4 | 6, subnets: string[]): Promise<void> {
  const ipt = family === 4 ? 'iptables' : 'ip6tables';
  const inNs = (...argv: string[]) => run('nsenter', [`--net=${netnsPath}`, ...argv]);
  for (const subnet of subnets) {
    await inNs(ipt, '-t', 'nat', '-A', 'OUTPUT', '-p', 'tcp', '-d', subnet, '-m', 'mark', '!', '--mark', '0x539/0xfff', '-j', 'REDIRECT', '--to-ports', '15001');
  }
  await inNs(ipt, '-t', 'nat', '-A', 'PREROUTING', '-p', 'tcp', '-i', 'eth0', '!', '--dport', '15008', '-j', 'REDIRECT', '--to-ports', '15006');
  await inNs(ipt, '-t', 'mangle', '-A', 'PREROUTING', '-m', 'mark', '--mark', '0x539/0xfff', '-j', 'CONNMARK', '--set-xmark', '0x111/0xfff');
  await inNs(ipt, '-t', 'mangle', '-A', 'OUTPUT', '-m', 'connmark', '--mark', '0x111/0xfff', '-j', 'CONNMARK', '--restore-mark');
  await inNs('ip', `-${family}`, 'rule', 'add', 'fwmark', '0x111/0xfff', 'pref', '32764', 'lookup', '133');
  await inNs('ip', `-${family}`, 'route', 'add', 'local', family === 4 ? '0.0.0.0/0' : '::/0', 'dev', 'lo', 'table', '133');
}

describe('the proxy over IPv6 and dual-stack pods', () => {
  let lab: Lab;
  let dir: string;
  let zt: Ztunnel;
  let state: StateStore;
  let peer: ChildProcess | undefined;
  const pods = {} as Record<Name, LabPod>;
  const sh = {} as Record<Name, PodShell>;
  const records: Record<string, unknown>[] = [];
  const seen: { headers?: [string, string][] }[] = [];
  const complete = (l: Record<string, unknown>): boolean => l.scope === 'access' && l.msg === 'connection complete';

  beforeAll(async () => {
    lab = await Lab.create();
    dir = mkdtempSync(join(tmpdir(), `${lab.prefix}v6`));
    for (const n of Object.keys(V6) as Name[]) {
      pods[n] = await lab.addPod(n);
      await run('ip', ['-n', pods[n].netnsName, '-6', 'addr', 'add', `${V6[n]}/64`, 'dev', 'eth0', 'nodad']);
    }
    for (const n of ['client', 'server'] as const) {
      // the service range is routed as a cluster routes it (the pod's default route here is the CNI's)
      await run('ip', ['-n', pods[n].netnsName, 'route', 'replace', '10.96.0.0/16', 'dev', 'eth0']);
      await captureRules(pods[n].netnsPath, 4, [lab.node.subnet, '10.96.0.0/16']);
      await captureRules(pods[n].netnsPath, 6, ['fd00:200::/64']);
    }
    const vip4 = `10.96.${lab.node.subnet.split('.')[2]}.10`;
    state = new StateStore();
    state.set(parseLocalConfig(`
workloads:
  - {uid: u-client, name: client, workloadName: client, namespace: default, serviceAccount: sleep, workloadIps: ["${pods.client.ip}", "${V6.client}"], protocol: HBONE}
  - {uid: u-server, name: server, workloadName: server, namespace: shop, serviceAccount: web, workloadIps: ["${pods.server.ip}", "${V6.server}"], protocol: HBONE,
     services: {"shop/web.shop.svc.cluster.local": {}, "shop/web6.shop.svc.cluster.local": {}}}
  - {uid: u-fake, name: fake, namespace: shop, serviceAccount: fake, workloadIps: ["${V6.fake}"], protocol: HBONE}
services:
  - {name: web, namespace: shop, hostname: web.shop.svc.cluster.local, vips: ["/${vip4}", "/${VIP6}"], ports: {80: 8080}, ipFamilies: Dual}
  - {name: web6, namespace: shop, hostname: web6.shop.svc.cluster.local, vips: ["/${vip4.replace(/\.10$/, '.11')}"], ports: {81: 8080}, ipFamilies: IPv6}
`));
    const log = pino({ level: 'info' }, { write: (line: string) => void records.push(JSON.parse(line)) });
    zt = await Ztunnel.create({ trustDomain: 'cluster.local', caDir: join(dir, 'ca'), state, log, fastPath: 'on' });
    await zt.addPod({ uid: 'u-client', name: 'client', namespace: 'default', serviceAccount: 'sleep' }, openPath(pods.client.netnsPath));
    await zt.addPod({ uid: 'u-server', name: 'server', namespace: 'shop', serviceAccount: 'web' }, openPath(pods.server.netnsPath));
    for (const n of Object.keys(V6) as Name[]) sh[n] = await lab.shell(pods[n].netnsPath, { inCgroup: false });
    await sh.server.listen({ host: '::', port: 8080, tag: 'server' });
    await sh.outside.listen({ host: '::', port: 80, tag: 'outside' });
    // an independent HBONE server with the fake workload's certificate, standing in for a peer's ztunnel
    const ca = await LocalCa.open(join(dir, 'ca'), 'cluster.local');
    const cert = await ca.issue({ trustDomain: 'cluster.local', namespace: 'shop', serviceAccount: 'fake' }, 3600_000);
    const files = { cert: join(dir, 'fake.pem'), key: join(dir, 'fake.key'), root: join(dir, 'root.pem') };
    writeFileSync(files.cert, cert.chainPem);
    writeFileSync(files.key, cert.keyPem);
    writeFileSync(files.root, ca.rootPem);
    peer = spawn('nsenter', [`--net=${pods.fake.netnsPath}`, '/usr/bin/python3', '-u', join(__dirname, 'tools', 'h2server.py'), '15008', files.cert, files.key, files.root], { stdio: 'pipe' });
    let stderr = '';
    peer.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    await new Promise<void>((resolve, reject) => {
      createInterface({ input: peer!.stdout! }).on('line', (line) => {
        const l = JSON.parse(line) as { ready?: boolean; headers?: [string, string][] };
        if (l.ready) resolve();
        else seen.push(l);
      });
      peer!.once('exit', (code) => reject(new Error(`h2server.py exited (${code}): ${stderr}`)));
    });
  });

  afterAll(async () => {
    if (peer && peer.exitCode === null) {
      const gone = new Promise((resolve) => peer!.once('exit', resolve));
      peer.kill('SIGKILL');
      await gone;
    }
    zt?.close();
    await lab?.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('carries pod to pod over HBONE on IPv6: the app sees the client\'s IPv6 address; the access log writes [addr]:port', async () => {
    const logs = records.length;
    const r = await sh.client.connect({ host: V6.server, port: 8080, send: 'over-v6', timeoutMs: 5000 });
    expect(r.ok && r.reply).toBe('server:over-v6');
    if (!r.ok) return;
    await sh.client.close(r.connId);
    const acc = await sh.server.accepted((await sh.server.listenerByTag('server')).id);
    expect(acc.at(-1)!.peer).toEqual({ host: V6.client, port: expect.any(Number) });
    let out: Record<string, unknown> | undefined;
    let inb: Record<string, unknown> | undefined;
    const src = `[${V6.client}]:${r.sockname.port}`;
    await until('both HBONE access-log lines', () => {
      out = records.slice(logs).find((l) => complete(l) && l.direction === 'outbound' && l['src.addr'] === src);
      inb = records.slice(logs).find((l) => complete(l) && l.transport === 'hbone' && l.direction === 'inbound');
      return !!out && !!inb;
    });
    expect(out).toMatchObject({ 'src.addr': src, 'src.identity': SLEEP, 'dst.addr': `[${V6.server}]:15008`, 'dst.hbone_addr': `[${V6.server}]:8080`, 'dst.identity': WEB, bytes_sent: 7 });
    // inbound, the source is the HBONE connection's (its own port), as ztunnel's inbound logs it
    expect(inb).toMatchObject({ 'src.addr': expect.stringMatching(/^\[fd00:200::a\]:\d+$/), 'src.identity': SLEEP, 'dst.addr': `[${V6.server}]:15008`, 'dst.hbone_addr': `[${V6.server}]:8080`, 'dst.identity': WEB });
    expect(out).not.toHaveProperty('error');
  });

  it('names both workloads in the metrics of an IPv6 connection (found by their IPv6 addresses)', async () => {
    const m = (await zt.telemetry!.registry.getMetricsAsJSON()).find((x) => x.name === 'istio_tcp_connections_opened_total');
    const v = m!.values.find((x) => x.labels.reporter === 'destination' && x.labels.source_workload === 'client' && x.labels.destination_workload === 'server');
    expect(v?.value).toBeGreaterThan(0);
  });

  it("sends ztunnel's CONNECT over IPv6: :authority [addr]:port, forwarded for=\"[addr]:port\"", async () => {
    const before = seen.length;
    const r = await sh.client.connect({ host: V6.fake, port: 8080, send: 'hi', timeoutMs: 5000 });
    expect(r.ok && r.reply).toBe('hi');
    if (!r.ok) return;
    await sh.client.close(r.connId);
    // the peer prints what it saw on its stdout, a pipe that may bring the line after the reply
    let line: { headers?: [string, string][] } | undefined;
    await until('the HBONE peer reporting the CONNECT', () => !!(line = seen.slice(before).find((l) => l.headers)));
    const h = Object.fromEntries(line!.headers!);
    expect(h[':method']).toBe('CONNECT');
    expect(h[':authority']).toBe(`[${V6.fake}]:8080`);
    expect(h.forwarded).toBe(`for="[${V6.client}]:${r.sockname.port}"`);
  });

  it("takes a dual-stack Service's IPv6 VIP to the endpoint's IPv6 address", async () => {
    const logs = records.length;
    const r = await sh.client.connect({ host: VIP6, port: 80, send: 'vip6', timeoutMs: 5000 });
    expect(r.ok && r.reply).toBe('server:vip6');
    if (!r.ok) return;
    await sh.client.close(r.connId);
    const src = `[${V6.client}]:${r.sockname.port}`;
    let out: Record<string, unknown> | undefined;
    await until('the outbound access-log line', () => !!(out = records.slice(logs).find((l) => complete(l) && l.direction === 'outbound' && l['src.addr'] === src)));
    expect(out).toMatchObject({ 'dst.addr': `[${V6.server}]:15008`, 'dst.hbone_addr': `[${V6.server}]:8080`, 'dst.service': 'web.shop.svc.cluster.local' });
  });

  it('splices passthrough and plaintext inbound over IPv6 in the kernel, the app seeing the client\'s IPv6 address', async () => {
    const cases = [
      { from: 'client' as const, to: V6.outside, port: 80, tag: 'outside', transport: 'passthrough', client: V6.client },
      { from: 'outside' as const, to: V6.server, port: 8080, tag: 'server', transport: 'plaintext', client: V6.outside },
    ];
    for (const c of cases) {
      const logs = records.length;
      const kernel = zt.fastPath.counters().bytes;
      const payload = `${c.transport}-`.padEnd(1000, 'x');
      const r = await sh[c.from].connect({ host: c.to, port: c.port, send: payload, timeoutMs: 5000 });
      expect(r.ok && r.reply).toBe(`${c.tag}:${payload}`);
      if (!r.ok) continue;
      await sh[c.from].close(r.connId);
      const acc = await sh[c.tag as Name].accepted((await sh[c.tag as Name].listenerByTag(c.tag)).id);
      expect(acc.at(-1)!.peer.host).toBe(c.client);
      let line: Record<string, unknown> | undefined;
      const src = `[${c.client}]:${r.sockname.port}`;
      await until(`the ${c.transport} access-log line`, () => !!(line = records.slice(logs).find((l) => complete(l) && l['src.addr'] === src)));
      const replyLen = c.tag.length + 1 + payload.length;
      expect(line).toMatchObject({ transport: c.transport, 'dst.addr': `[${c.to}]:${c.port}`, path: 'kernel', kernel_bytes: payload.length + replyLen });
      expect(zt.fastPath.counters().bytes - kernel).toBe(payload.length + replyLen);
    }
    await until('the spliced connections to end', () => zt.fastPath.activeConnections === 0);
    expect(zt.fastPath.mapEntries()).toEqual({ srcs: 0, dsts: 0, flows: 0 });
  });

  it('carries IPv4 through the same dual-stack listeners at the same time, written without the mapped prefix', async () => {
    const logs = records.length;
    const r = await sh.client.connect({ host: pods.server.ip, port: 8080, send: 'over-v4', timeoutMs: 5000 });
    expect(r.ok && r.reply).toBe('server:over-v4');
    if (!r.ok) return;
    await sh.client.close(r.connId);
    let out: Record<string, unknown> | undefined;
    const src = `${pods.client.ip}:${r.sockname.port}`;
    await until('the outbound access-log line', () => !!(out = records.slice(logs).find((l) => complete(l) && l.direction === 'outbound' && l['src.addr'] === src)));
    expect(out).toMatchObject({ transport: 'hbone', 'dst.addr': `${pods.server.ip}:15008`, 'dst.hbone_addr': `${pods.server.ip}:8080` });
    const p = await sh.outside.connect({ host: pods.server.ip, port: 8080, send: 'plain-v4', timeoutMs: 5000 });
    expect(p.ok && p.reply).toBe('server:plain-v4');
    if (p.ok) await sh.outside.close(p.connId);
    const from = `${pods.outside.ip}:${p.ok ? p.sockname.port : 0}`;
    let inb: Record<string, unknown> | undefined;
    await until('the plaintext access-log line', () => !!(inb = records.slice(logs).find((l) => complete(l) && l['src.addr'] === from)));
    expect(inb).toMatchObject({ transport: 'plaintext', 'dst.addr': `${pods.server.ip}:8080` });
  });

  it('delivers same-node over IPv6 directly, and a client of the other family than the app over HBONE', async () => {
    zt.sameNode = 'direct';
    try {
      const logs = records.length;
      const r = await sh.client.connect({ host: V6.server, port: 8080, send: 'local-v6', timeoutMs: 5000 });
      expect(r.ok && r.reply).toBe('server:local-v6');
      if (!r.ok) return;
      await sh.client.close(r.connId);
      const src = `[${V6.client}]:${r.sockname.port}`;
      let lines: Record<string, unknown>[] = [];
      await until('both same-node access-log lines', () => (lines = records.slice(logs).filter((l) => complete(l) && l['src.addr'] === src)).length >= 2);
      expect(lines.map((l) => [l.direction, l.transport, l['dst.addr']]).sort()).toEqual([['inbound', 'local', `[${V6.server}]:8080`], ['outbound', 'local', `[${V6.server}]:8080`]]);
      // an IPv6-only Service reached on an IPv4 address: the endpoint is IPv6, the client IPv4;
      // the app cannot be reached from an IPv4 source, so it goes over HBONE from the pod's IPv6
      const vip = state.snapshot.state.services.find((s) => s.name === 'web6')!.vips[0]!.address;
      const m = await sh.client.connect({ host: vip, port: 81, send: 'mixed', timeoutMs: 5000 });
      expect(m.ok && m.reply).toBe('server:mixed');
      if (!m.ok) return;
      await sh.client.close(m.connId);
      const acc = await sh.server.accepted((await sh.server.listenerByTag('server')).id);
      expect(acc.at(-1)!.peer.host).toBe(V6.client);
      let out: Record<string, unknown> | undefined;
      const from = `${pods.client.ip}:${m.sockname.port}`;
      await until('the outbound line of the mixed-family connection', () => !!(out = records.find((l) => complete(l) && l['src.addr'] === from)));
      expect(out).toMatchObject({ transport: 'hbone', 'dst.addr': `[${V6.server}]:15008`, 'dst.hbone_addr': `[${V6.server}]:8080` });
    } finally {
      zt.sameNode = 'hbone';
    }
  });
});
