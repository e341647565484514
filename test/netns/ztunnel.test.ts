/**
 * The proxy as its own process (`inpod ztunnel`), handed pods over ZDS by an agent-side server,
 * carrying pod-to-pod traffic over HBONE; a proxy restart gets the snapshot again and serves
 * the same pods.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackend } from '../../ts/redirect/factory.js';
import type { BackendName, RedirectBackend } from '../../ts/redirect/backend.js';
import { ZdsServer, type ZdsPod } from '../../ts/zds/server.js';
import { Lab, type LabPod, type PodShell, until } from './lab.js';
import { CLI } from '../cli.js';


describe.each((process.env.INPOD_BACKENDS?.split(',') ?? ['ebpf', 'iptables']) as BackendName[])('inpod ztunnel process, %s backend', (name) => {
  let lab: Lab;
  let dir: string;
  let backend: RedirectBackend;
  let server: ZdsServer;
  let proxy: ChildProcess | undefined;
  let a: LabPod, b: LabPod;
  let sa: PodShell, sb: PodShell;
  let ready = 0;
  let logs = '';

  function startProxy(): void {
    proxy = spawn('sh', ['-c', `echo $$ > ${lab.cgroupPath}/cgroup.procs && exec node ${CLI} ztunnel --config ${join(dir, 'config.yaml')} --zds ${join(dir, 'zds.sock')} --ca-dir ${join(dir, 'ca')} --drain-seconds 1 --admin-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 --readiness-addr 127.0.0.1:0`], { stdio: ['ignore', 'pipe', 'pipe'] });
    proxy.stdout!.on('data', (d) => (logs += d));
    proxy.stderr!.on('data', (d) => (logs += d));
  }
  const waitReady = (n: number): Promise<void> => until(`the proxy to take snapshot ${n}`, () => ready >= n, { timeoutMs: 20_000, context: () => logs });

  beforeAll(async () => {
    lab = await Lab.create();
    dir = mkdtempSync(join(tmpdir(), `${lab.prefix}zt`));
    backend = await createBackend(name, { cgroupPath: lab.cgroupPath, pinRoot: `/sys/fs/bpf/${lab.prefix}inpod`, stateDir: dir });
    [a, b] = await Promise.all([lab.addPod('a'), lab.addPod('b')]);
    writeFileSync(join(dir, 'config.yaml'), `workloads:
  - {uid: ua, name: a, namespace: default, serviceAccount: sa-a, workloadIps: ["${a.ip}"], protocol: HBONE}
  - {uid: ub, name: b, namespace: default, serviceAccount: sa-b, workloadIps: ["${b.ip}"], protocol: HBONE}
`);
    const pods: ZdsPod[] = [];
    server = new ZdsServer({ path: join(dir, 'zds.sock'), pods: () => pods, onReady: () => ready++ });
    server.start();
    startProxy();
    await waitReady(1);
    // the agent's path for a new pod: capture, then hand it to the proxy and wait for the Ack
    for (const [p, uid] of [[a, 'ua'], [b, 'ub']] as const) {
      await backend.enroll(p.netnsPath);
      const pod = { uid, info: { name: p.name, namespace: 'default', serviceAccount: `sa-${p.name}` }, netnsPath: p.netnsPath };
      pods.push(pod);
      await server.addPod(pod);
    }
    sa = await lab.shell(a.netnsPath, { inCgroup: true });
    sb = await lab.shell(b.netnsPath, { inCgroup: true });
    await sb.listen({ port: 8080, tag: 'b' });
  }, 60_000);

  afterAll(async () => {
    proxy?.kill('SIGKILL');
    server?.close();
    await backend?.uninstall().catch(() => {});
    await lab?.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('carries a request from pod a to pod b over HBONE once both were handed over', async () => {
    const r = await sa.connect({ host: b.ip, port: 8080, send: 'over-zds', timeoutMs: 5000 });
    expect(r.ok && r.reply).toBe('b:over-zds');
    if (r.ok) await sa.close(r.connId);
    // the proxy's record of it: a's outbound connection went over HBONE
    await until('the outbound HBONE access-log line', () => /"direction":"outbound".*"transport":"hbone"/.test(logs), { context: () => logs });
  });

  it('serves the same pods again after the proxy restarts (the snapshot re-adds them)', async () => {
    proxy!.kill('SIGTERM');
    await new Promise((r) => proxy!.once('exit', r));
    // captured, no proxy: fail closed
    const down = await sa.connect({ host: b.ip, port: 8080, send: 'x', timeoutMs: 1000 });
    expect(down.ok).toBe(false);
    startProxy();
    await waitReady(2);
    const r = await sa.connect({ host: b.ip, port: 8080, send: 'again', timeoutMs: 5000 });
    expect(r.ok && r.reply).toBe('b:again');
    if (r.ok) await sa.close(r.connId);
  });
});
