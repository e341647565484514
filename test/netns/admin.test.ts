/**
 * The admin of a real proxy process (`inpod ztunnel`) serving real pods, as ztunnel's tools and
 * istioctl use it: readiness with ztunnel's task name until the agent's snapshot is served
 * (ztunnel src/readiness/server.rs, src/inpod/workloadmanager.rs), /config_dump read the way
 * `istioctl ztunnel-config all|connections` reads it (test/fixtures/istioctl.ts, after istio
 * istioctl/pkg/writer/ztunnel/configdump/), and POST /quitquitquit draining the proxy as SIGTERM
 * does (ztunnel src/admin.rs handle_server_shutdown, src/signal.rs: the same shutdown).
 */
import { writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectionRows, prime, serviceRows, workloadRows } from '../fixtures/istioctl.js';
import { type Lab, type LabPod, type PodShell, until } from './lab.js';
import { Rig } from './rig.js';

describe('inpod ztunnel admin, as istioctl and ztunnel\'s tools use it', () => {
  let rig: Rig;
  let lab: Lab;
  let exited: Promise<number | null>;
  let a: LabPod, b: LabPod;
  let sa: PodShell, sb: PodShell;
  let admin = 0;
  let readiness = 0;
  const ready = async (): Promise<[number, string] | null> => {
    const r = await fetch(`http://127.0.0.1:${readiness}/healthz/ready`).catch(() => null);
    return r && [r.status, await r.text()];
  };
  const dump = async (): Promise<string> => (await fetch(`http://127.0.0.1:${admin}/config_dump`)).text();

  beforeAll(async () => {
    rig = await Rig.create({ tag: 'adm' });
    lab = rig.lab;
    [a, b] = await Promise.all([lab.addPod('a'), lab.addPod('b')]);
    writeFileSync(rig.p('config.yaml'), `workloads:
  - {uid: ua, name: a, namespace: shop, serviceAccount: sa-a, workloadIps: ["${a.ip}"], protocol: HBONE, node: node-1}
  - {uid: ub, name: b, namespace: shop, serviceAccount: sa-b, workloadIps: ["${b.ip}"], protocol: HBONE, node: node-1, services: {"shop/b.shop.svc.cluster.local": {8080: 8080}}}
services:
  - {name: b, namespace: shop, hostname: b.shop.svc.cluster.local, vips: ["/10.96.7.7"], ports: {8080: 8080}}
`);
    // the proxy starts before the agent is there: not ready until the snapshot is served
    const proxy = await rig.startProxy({ args: ['--config', rig.p('config.yaml')], drainSeconds: 30, ports: true });
    ({ admin, readiness } = proxy.ports);
    exited = proxy.exited;
    await until('the proxy to answer its readiness port', async () => (await ready()) !== null, { timeoutMs: 20_000, context: () => rig.log });
  }, 60_000);

  afterAll(async () => {
    await rig?.destroy();
  });

  it('is not ready, naming ztunnel\'s pending task, until the agent\'s snapshot is served; then ready', async () => {
    expect(await ready()).toEqual([500, 'not ready, pending: workload proxy manager\n']);
    for (const p of [a, b]) {
      await rig.backend.enroll(p.netnsPath);
      rig.zdsPods.push({ uid: `zds-${p.name}`, info: { name: p.name, namespace: 'shop', serviceAccount: `sa-${p.name}` }, netnsPath: p.netnsPath });
    }
    rig.startZds();
    await until('the proxy to be ready', async () => (await ready())?.[0] === 200, { timeoutMs: 20_000, context: () => rig.log });
    expect(await ready()).toEqual([200, 'ready\n']);
  });

  it('/config_dump reads as istioctl ztunnel-config all reads it, with an open connection under both pods', async () => {
    sa = await lab.shell(a.netnsPath, { inCgroup: true });
    sb = await lab.shell(b.netnsPath, { inCgroup: true });
    await sb.listen({ port: 8080, tag: 'b' });
    const r = await sa.connect({ host: '10.96.7.7', port: 8080, send: 'hello', timeoutMs: 5000 });
    expect(r.ok && r.reply, rig.log).toBe('b:hello');
    const d = prime(await dump());
    expect(workloadRows(d)).toEqual([['shop', 'a', a.ip, 'node-1', 'None', 'HBONE'], ['shop', 'b', b.ip, 'node-1', 'None', 'HBONE']]);
    expect(serviceRows(d)).toEqual([['shop', 'b', '10.96.7.7', 'None', '1/1']]);
    expect(d.certificates.map((c) => c.identity)).toEqual(['spiffe://cluster.local/ns/shop/sa/sa-a', 'spiffe://cluster.local/ns/shop/sa/sa-b']);
    const rows = connectionRows(d);
    // a's app connected to the service VIP; the proxy went to b's 15008; b's proxy delivered to b:8080
    expect(rows).toContainEqual(['a.shop', 'Outbound', expect.stringMatching(/^a\.shop:\d+$/), 'b.shop:15008', 'b.shop.svc.cluster.local:8080', 'HBONE']);
    // b's inbound names the Service a addressed (ztunnel's original_dst: the CONNECT's forwarded host), one of b's own
    expect(rows).toContainEqual(['b.shop', 'Inbound', 'b.shop:8080', expect.stringMatching(/^a\.shop:\d+$/), 'b.shop.svc.cluster.local', 'HBONE']);
    if (r.ok) await sa.close(r.connId);
    await until('the closed connection to leave the dump', async () => connectionRows(prime(await dump())).length === 0, { context: () => rig.log });
  });

  it('POST /quitquitquit answers "shutdown now" and drains as on SIGTERM: readiness goes, an open connection carries on, the process exits once it ends', async () => {
    const open = await sa.connect({ host: b.ip, port: 8080, send: 'before', timeoutMs: 5000 });
    expect(open.ok && open.reply).toBe('b:before');
    const q = await fetch(`http://127.0.0.1:${admin}/quitquitquit`, { method: 'POST' });
    expect([q.status, await q.text()]).toEqual([200, 'shutdown now\n']);
    await until('the readiness port to stop answering', async () => (await ready()) === null, { context: () => rig.log });
    // the line reaches us through the child's stdout pipe, maybe after readiness already went
    await until('the drain line naming /quitquitquit', () => /"signal":"quitquitquit".*"msg":"draining"/.test(rig.log), { context: () => rig.log });
    if (!open.ok) return;
    expect((await sa.send(open.connId, 'during', 5000)).reply).toBe('b:during');
    // new connections find no listener of this proxy: captured, they fail closed
    expect((await sa.connect({ host: b.ip, port: 8080, send: 'new', timeoutMs: 2000 })).ok).toBe(false);
    await sa.close(open.connId);
    expect(await exited).toBe(0);
    expect(rig.log).toMatch(/drained: every connection has ended; exiting/);
  }, 30_000);
});
