/**
 * Attacker-style (issue 13, item 1): a pod whose sandbox is recreated (a second CNI ADD for the
 * same pod UID with a new netns, the first sandbox's DEL coming later) must never run outside the
 * mesh. Upstream ztunnel replaces the served netns when an Add brings a known uid with a new one
 * (src/inpod/statemanager.rs add_workload_inner, netns identity from src/inpod/netns.rs); istio-cni
 * keeps the newest netns per uid (cni/pkg/nodeagent/pod_cache.go UpsertPodCacheWithNetns).
 *
 * Two parts, each under both backends: the whole node (agent and proxy processes, the fake API
 * server, the real CNI chain bridge + host-local + inpod-cni), and the proxy alone driven over ZDS.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackend } from '../../ts/redirect/factory.js';
import type { BackendName, RedirectBackend } from '../../ts/redirect/backend.js';
import { ZdsServer, type ZdsPod } from '../../ts/zds/server.js';
import { CLI } from '../cli.js';
import { Lab, type LabPod, type PodShell } from '../netns/lab.js';

const BACKENDS = (process.env.INPOD_BACKENDS?.split(',') ?? ['ebpf', 'iptables']) as BackendName[];

interface AccessLine {
  direction: string;
  transport: string;
  src: { ip: string };
  pod: string;
}

/** The proxy's access-log lines in `log` (one JSON object per line). */
function accessLines(log: string): AccessLine[] {
  const out: AccessLine[] = [];
  for (const l of log.split('\n')) {
    if (!l.includes('"access":true')) continue;
    try {
      out.push(JSON.parse(l) as AccessLine);
    } catch {
      /* a line cut by the pipe's chunking: the next poll sees it whole */
    }
  }
  return out;
}

async function until(what: string, cond: () => boolean | Promise<boolean>, logs: () => string, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}\n${logs().slice(-4000)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe.each(BACKENDS)('the proxy given a known uid with a new netns over ZDS, %s backend', (name) => {
  let lab: Lab;
  let dir: string;
  let backend: RedirectBackend;
  let server: ZdsServer;
  let proxy: ChildProcess | undefined;
  let a: LabPod, a2: LabPod, b: LabPod;
  let sa: PodShell, sa2: PodShell;
  let log = '';
  const pods: ZdsPod[] = [];
  const logs = (): string => log;

  beforeAll(async () => {
    lab = await Lab.create();
    dir = mkdtempSync(join(tmpdir(), `${lab.prefix}zs`));
    backend = await createBackend(name, { cgroupPath: lab.cgroupPath, pinRoot: `/sys/fs/bpf/${lab.prefix}inpod`, stateDir: dir });
    [a, a2, b] = await Promise.all([lab.addPod('a'), lab.addPod('a2'), lab.addPod('b')]);
    writeFileSync(join(dir, 'config.yaml'), `workloads:
  - {uid: ua, name: a, namespace: default, serviceAccount: sa-a, workloadIps: ["${a.ip}", "${a2.ip}"], protocol: HBONE}
  - {uid: ub, name: b, namespace: default, serviceAccount: sa-b, workloadIps: ["${b.ip}"], protocol: HBONE}
`);
    let ready = 0;
    server = new ZdsServer({ path: join(dir, 'zds.sock'), pods: () => pods, onReady: () => ready++ });
    server.start();
    proxy = spawn('sh', ['-c', `echo $$ > ${lab.cgroupPath}/cgroup.procs && exec node ${CLI} ztunnel --config ${join(dir, 'config.yaml')} --zds ${join(dir, 'zds.sock')} --ca-dir ${join(dir, 'ca')} --drain-seconds 1 --admin-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 --readiness-addr 127.0.0.1:0`], { stdio: ['ignore', 'pipe', 'pipe'] });
    proxy.stdout!.on('data', (d) => (log += d));
    proxy.stderr!.on('data', (d) => (log += d));
    await until('the proxy to take the snapshot', () => ready > 0, logs, 20_000);
    for (const p of [a, a2, b]) await backend.enroll(p.netnsPath);
    for (const [p, uid] of [[a, 'ua'], [b, 'ub']] as const) {
      const pod = { uid, info: { name: p.name, namespace: 'default', serviceAccount: `sa-${p.name}` }, netnsPath: p.netnsPath };
      pods.push(pod);
      await server.addPod(pod);
    }
    sa = await lab.shell(a.netnsPath, { inCgroup: true });
    sa2 = await lab.shell(a2.netnsPath, { inCgroup: true });
    const sb = await lab.shell(b.netnsPath, { inCgroup: true });
    await sb.listen({ port: 8080, tag: 'b' });
  }, 60_000);

  afterAll(async () => {
    proxy?.kill('SIGKILL');
    server?.close();
    await backend?.uninstall().catch(() => {});
    await lab?.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('Add of a served uid with a new netns: serves the new one, stops listening in the old (its open connection finishes); the same netns again changes nothing', async () => {
    // an open connection through the old netns's proxy, to see that it is left to finish
    const held = await sa.connect({ host: b.ip, port: 8080, send: 'held', timeoutMs: 5000 });
    expect(held.ok && held.reply).toBe('b:held');
    // captured but not served yet: fails closed
    expect((await sa2.connect({ host: b.ip, port: 8080, send: 'x', timeoutMs: 1000 })).ok).toBe(false);

    await server.addPod({ uid: 'ua', info: { name: 'a', namespace: 'default', serviceAccount: 'sa-a' }, netnsPath: a2.netnsPath });
    const r = await sa2.connect({ host: b.ip, port: 8080, send: 'new-netns', timeoutMs: 5000 });
    expect(r.ok && r.reply, `${JSON.stringify(r)}\n${log.slice(-2000)}`).toBe('b:new-netns');
    if (r.ok) await sa2.close(r.connId);
    await until('the access log of the new netns', () => accessLines(log).some((x) => x.direction === 'outbound' && x.transport === 'hbone' && x.src.ip === a2.ip), logs);
    // the old netns is still captured, and no longer served: refused, never out
    expect((await sa.connect({ host: b.ip, port: 8080, send: 'old', timeoutMs: 1000 })).ok).toBe(false);
    // the connection opened before the switch carries on
    if (held.ok) expect((await sa.send(held.connId, 'still')).reply).toBe('b:still');

    const opens = (log.match(/pod listeners open/g) ?? []).length;
    await server.addPod({ uid: 'ua', info: { name: 'a', namespace: 'default', serviceAccount: 'sa-a' }, netnsPath: a2.netnsPath });
    const again = await sa2.connect({ host: b.ip, port: 8080, send: 'same', timeoutMs: 5000 });
    expect(again.ok && again.reply).toBe('b:same');
    expect((log.match(/pod listeners open/g) ?? []).length).toBe(opens);
  });
});
