/**
 * The proxy as its own process (`inpod ztunnel`), handed pods over ZDS by an agent-side server,
 * carrying pod-to-pod traffic over HBONE; a proxy restart gets the snapshot again and serves
 * the same pods.
 */
import { writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BackendName } from '../../ts/redirect/backend.js';
import { type LabPod, type PodShell, until } from './lab.js';
import { Rig } from './rig.js';

describe.each((process.env.INPOD_BACKENDS?.split(',') ?? ['ebpf', 'iptables']) as BackendName[])('inpod ztunnel process, %s backend', (name) => {
  let rig: Rig;
  let a: LabPod, b: LabPod;
  let sa: PodShell, sb: PodShell;
  const logs = (): string => rig.log;

  const startProxy = () => rig.startProxy({ args: ['--config', rig.p('config.yaml')] });
  const waitReady = (n: number): Promise<void> => until(`the proxy to take snapshot ${n}`, () => rig.zdsReady >= n, { timeoutMs: 20_000, context: logs });

  beforeAll(async () => {
    rig = await Rig.create({ tag: 'zt', backend: name });
    const { lab } = rig;
    [a, b] = await Promise.all([lab.addPod('a'), lab.addPod('b')]);
    writeFileSync(rig.p('config.yaml'), `workloads:
  - {uid: ua, name: a, namespace: default, serviceAccount: sa-a, workloadIps: ["${a.ip}"], protocol: HBONE}
  - {uid: ub, name: b, namespace: default, serviceAccount: sa-b, workloadIps: ["${b.ip}"], protocol: HBONE}
`);
    rig.startZds();
    await startProxy();
    await waitReady(1);
    // the agent's path for a new pod: capture, then hand it to the proxy and wait for the Ack
    for (const [p, uid] of [[a, 'ua'], [b, 'ub']] as const) await rig.handOver(p, { uid, name: p.name, namespace: 'default', serviceAccount: `sa-${p.name}` });
    sa = await lab.shell(a.netnsPath, { inCgroup: true });
    sb = await lab.shell(b.netnsPath, { inCgroup: true });
    await sb.listen({ port: 8080, tag: 'b' });
  }, 60_000);

  afterAll(async () => {
    await rig?.destroy();
  });

  it('carries a request from pod a to pod b over HBONE once both were handed over', async () => {
    const r = await sa.connect({ host: b.ip, port: 8080, send: 'over-zds', timeoutMs: 5000 });
    expect(r.ok && r.reply).toBe('b:over-zds');
    if (r.ok) await sa.close(r.connId);
    // the proxy's record of it: a's outbound connection went over HBONE
    await until('the outbound HBONE access-log line', () => /"direction":"outbound".*"transport":"hbone"/.test(logs()), { context: logs });
  });

  it('serves the same pods again after the proxy restarts (the snapshot re-adds them)', async () => {
    await rig.proxy!.stop('SIGTERM');
    // captured, no proxy: fail closed
    const down = await sa.connect({ host: b.ip, port: 8080, send: 'x', timeoutMs: 1000 });
    expect(down.ok).toBe(false);
    await startProxy();
    await waitReady(2);
    const r = await sa.connect({ host: b.ip, port: 8080, send: 'again', timeoutMs: 5000 });
    expect(r.ok && r.reply).toBe('b:again');
    if (r.ok) await sa.close(r.connId);
  });
});
