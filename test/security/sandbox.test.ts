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
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackend } from '../../ts/redirect/factory.js';
import type { BackendName, RedirectBackend } from '../../ts/redirect/backend.js';
import { ZdsServer, type ZdsPod } from '../../ts/zds/server.js';
import { FakeApiServer } from '../fixtures/apiserver.js';
import { CLI, freePorts } from '../cli.js';
import { Lab, type LabPod, type PodShell, until } from '../netns/lab.js';
import { runCniPlugin } from '../../ts/sim/node.js';

const BACKENDS = (process.env.INPOD_BACKENDS?.split(',') ?? ['ebpf', 'iptables']) as BackendName[];
const NODE = 'node1';

interface AccessLine {
  direction: string;
  transport: string;
  'src.addr': string;
  pod: string;
}

/** The IP of the client of an access-log line (src.addr is ip:port). */
const srcIp = (a: AccessLine): string => a['src.addr'].slice(0, a['src.addr'].lastIndexOf(':'));

/** The proxy's access-log lines of ended connections in `log` (one JSON object per line). */
function accessLines(log: string): AccessLine[] {
  const out: AccessLine[] = [];
  for (const l of log.split('\n')) {
    if (!l.includes('"msg":"connection complete"')) continue;
    try {
      out.push(JSON.parse(l) as AccessLine);
    } catch {
      /* a line cut by the pipe's chunking: the next poll sees it whole */
    }
  }
  return out;
}

describe.each(BACKENDS)('a recreated pod sandbox, %s backend', (backendName) => {
  let lab: Lab;
  let dir: string;
  let api: FakeApiServer;
  let backend: RedirectBackend;
  let agent: ChildProcess | undefined;
  let proxy: ChildProcess | undefined;
  let log = '';
  let metricsPort = 0;
  let adminPort = 0;
  let healthPort = 0;
  let srv: LabPod, old: LabPod, recreated: LabPod;
  let srvSh: PodShell, oldSh: PodShell, newSh: PodShell;
  let uid = '';
  const p = (f: string): string => join(dir, f);
  const conflist = (): { cniVersion: string; name: string; plugins: object[] } => JSON.parse(readFileSync(p('net.d/10-sim.conflist'), 'utf8'));
  const cniPath = (): string => `${p('bin')}:/usr/lib/cni:/opt/cni/bin`;
  const logs = (): string => log;
  const enrolledNetns = async (): Promise<string[]> => (await backend.list()).map((x) => x.netns);
  const k8s = (name: string): { namespace: string; name: string; uid: string } => ({ namespace: 'mesh', name, uid: api.get('pods', 'mesh', name)!.metadata.uid! });

  function startAgent(): void {
    agent = spawn('node', [CLI, 'agent', '--backend', backendName, '--kubeconfig', p('kubeconfig'), '--node', NODE, '--cgroup', lab.cgroupPath,
      '--zds', p('zds.sock'), '--cni-socket', p('plugin.sock'), '--cni-bin-dir', p('bin'), '--cni-conf-dir', p('net.d'),
      '--state-dir', p('state'), '--pin-root', `/sys/fs/bpf/${lab.prefix}inpod`, '--health-addr', `127.0.0.1:${healthPort}`,
      '--pod-name', 'inpod-agent-test', '--pod-namespace', 'inpod-system', '--host-netns', lab.nodeNetnsPath], { stdio: ['ignore', 'pipe', 'pipe'] });
    for (const out of [agent.stdout!, agent.stderr!]) out.on('data', (d) => (log += d));
  }

  /** Runs the CNI chain ADD for pod `name` in a new sandbox netns called `sandbox`; the kubelet then reports its IP. */
  async function sandbox(sandbox: string, name: string): Promise<LabPod> {
    const pod = await lab.node.addPodWithChain(sandbox, conflist(), k8s(name), cniPath());
    const cur = api.get('pods', 'mesh', name)!;
    api.apply('pods', { ...cur, status: { phase: 'Running', podIP: pod.ip, podIPs: [{ ip: pod.ip }] } } as never);
    return pod;
  }

  /** Sum of istio_tcp_connections_opened_total over the series whose labels contain every `want`. */
  async function opened(...want: string[]): Promise<number> {
    const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    let n = 0;
    for (const l of text.split('\n')) if (l.startsWith('istio_tcp_connections_opened_total{') && want.every((w) => l.includes(w))) n += Number(l.split(' ').at(-1));
    return n;
  }

  /**
   * One request from `sh` to the server; resolves with how it went: the reply, and the proxy's
   * access-log lines for it (outbound at the client, inbound at the server).
   */
  async function request(sh: PodShell, from: LabPod, send: string): Promise<{ reply?: string; error?: string; out?: AccessLine; in?: AccessLine }> {
    const mark = log.length;
    const r = await sh.connect({ host: srv.ip, port: 8080, send, timeoutMs: 3000 });
    if (!r.ok) return { error: r.error };
    await sh.close(r.connId);
    const mine = (): AccessLine[] => accessLines(log.slice(mark)).filter((a) => srcIp(a) === from.ip);
    // the inbound line is written when the server side closes; it always comes (plaintext or hbone)
    await until('the inbound access-log line', () => mine().some((a) => a.direction === 'inbound'), { timeoutMs: 15_000, context: logs });
    // over HBONE the client's side went through its proxy too: its line is written when that side
    // closes, which may come after the server's
    if (mine().some((a) => a.direction === 'inbound' && a.transport === 'hbone')) {
      await until('the outbound access-log line', () => mine().some((a) => a.direction === 'outbound'), { timeoutMs: 15_000, context: logs });
    }
    return { reply: r.reply, out: mine().find((a) => a.direction === 'outbound'), in: mine().find((a) => a.direction === 'inbound') };
  }

  beforeAll(async () => {
    lab = await Lab.create();
    dir = mkdtempSync(join(tmpdir(), `${lab.prefix}sb`));
    mkdirSync(p('net.d'));
    mkdirSync(p('bin'));
    const { cniVersion, name, ...bridge } = lab.node.netConf() as { cniVersion: string; name: string };
    writeFileSync(p('net.d/10-sim.conflist'), JSON.stringify({ cniVersion, name, plugins: [bridge] }));
    api = new FakeApiServer();
    await api.start();
    writeFileSync(p('kubeconfig'), api.kubeconfig());
    api.apply('namespaces', { metadata: { name: 'mesh', labels: { 'istio.io/dataplane-mode': 'ambient' } } });
    for (const n of ['srv', 'cli']) {
      api.apply('pods', { metadata: { name: n, namespace: 'mesh', labels: { app: n } }, spec: { nodeName: NODE, serviceAccountName: `sa-${n}`, containers: [{ name: 'app' }] } } as never);
    }
    uid = api.get('pods', 'mesh', 'cli')!.metadata.uid!;
    backend = await createBackend(backendName, { cgroupPath: lab.cgroupPath, pinRoot: `/sys/fs/bpf/${lab.prefix}inpod`, stateDir: p('state') });
    const [health, admin, metrics, readiness] = await freePorts(4);
    metricsPort = metrics!;
    adminPort = admin!;
    proxy = spawn('sh', ['-c', `echo $$ > ${lab.cgroupPath}/cgroup.procs && exec node ${CLI} ztunnel --kubeconfig ${p('kubeconfig')} --zds ${p('zds.sock')} --ca-dir ${p('ca')} --drain-seconds 1 --admin-addr 127.0.0.1:${admin} --metrics-addr 127.0.0.1:${metrics} --readiness-addr 127.0.0.1:${readiness}`], { stdio: ['ignore', 'pipe', 'pipe'] });
    healthPort = health!;
    for (const out of [proxy.stdout!, proxy.stderr!]) out.on('data', (d) => (log += d));
    startAgent();
    await until('the agent to chain inpod-cni and take the proxy', () => JSON.stringify(conflist()).includes('inpod-cni') && /snapshot sent/.test(log), { timeoutMs: 30_000, context: logs });
    srv = await sandbox('srv', 'srv');
    srvSh = await lab.shell(srv.netnsPath, { inCgroup: true });
    await srvSh.listen({ port: 8080, tag: 'srv' });
    old = await sandbox('cli1', 'cli');
    oldSh = await lab.shell(old.netnsPath, { inCgroup: true });
    // The first sandbox is captured and served: its connection to srv goes over HBONE, leaving a
    // pooled tunnel dialled from the old netns; the new sandbox must never ride it (issue 13 item
    // 6: the pool is keyed by the source sandbox, as ztunnel's per-pod proxies are).
    await until('the proxy to know srv as a mesh workload', async () => {
      const d = (await (await fetch(`http://127.0.0.1:${adminPort}/config_dump`)).json()) as { workloads: { name: string; protocol: string; workloadIps?: string[] }[] };
      return d.workloads.some((x) => x.name === 'srv' && x.protocol === 'HBONE' && !!x.workloadIps?.includes(srv.ip));
    }, { timeoutMs: 20_000, context: logs });
    const mark = log.length;
    const w = await oldSh.connect({ host: srv.ip, port: 8080, send: 'warm-up', timeoutMs: 3000 });
    expect(w.ok && w.reply).toBe('srv:warm-up');
    if (w.ok) await oldSh.close(w.connId);
    await until('the old sandbox through the proxy', () => accessLines(log.slice(mark)).some((a) => a.direction === 'outbound' && a.transport === 'hbone' && srcIp(a) === old.ip), { timeoutMs: 15_000, context: logs });
  }, 90_000);

  afterAll(async () => {
    agent?.kill('SIGKILL');
    proxy?.kill('SIGKILL');
    await api?.stop();
    await backend?.uninstall().catch(() => {});
    await lab?.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('ADD of a second sandbox for the same pod UID, the first never deleted: captured before ADD returns, its connection goes over HBONE', async () => {
    const mtls = ['reporter="destination"', `source_principal="spiffe://cluster.local/ns/mesh/sa/sa-cli"`, 'destination_workload="srv"', 'connection_security_policy="mutual_tls"'];
    const before = await opened(...mtls);
    recreated = await sandbox('cli2', 'cli'); // the attacker's move: same uid, fresh netns, no DEL
    expect(await enrolledNetns()).toContain(recreated.netnsPath); // already when ADD returned
    newSh = await lab.shell(recreated.netnsPath, { inCgroup: true });
    const r = await request(newSh, recreated, 'from-the-new-sandbox');
    expect(r.reply, JSON.stringify(r)).toBe('srv:from-the-new-sandbox');
    expect(r.out?.transport).toBe('hbone'); // left the client through its proxy, over HBONE
    expect(r.in).toMatchObject({ transport: 'hbone', pod: 'mesh/srv' }); // arrived at the server through the proxy's 15008
    const acc = await srvSh.accepted((await srvSh.listenerByTag('srv')).id);
    expect(acc.at(-1)!.peer.host).toBe(recreated.ip);
    expect(await opened(...mtls)).toBeGreaterThan(before);
  });

  it('the superseded sandbox, still there, is not let out: its connections are refused (captured, no proxy), never reach the server', async () => {
    expect(await enrolledNetns()).toContain(old.netnsPath); // unenrolled only by its own DEL
    const acc = await srvSh.accepted((await srvSh.listenerByTag('srv')).id);
    const r = await oldSh.connect({ host: srv.ip, port: 8080, send: 'sneak', timeoutMs: 2000 });
    expect(r.ok, JSON.stringify(r)).toBe(false);
    const after = await srvSh.accepted((await srvSh.listenerByTag('srv')).id);
    expect(after.slice(acc.length).filter((a) => a.peer.host === old.ip)).toEqual([]);
  });

  it('an agent restart (SIGKILL) keeps both sandboxes captured and the proxy on the new one', async () => {
    agent!.kill('SIGKILL');
    await new Promise((r) => agent!.once('exit', r));
    const mark = log.length;
    startAgent();
    await until('the new agent to be ready', () => /agent ready/.test(log.slice(mark)), { timeoutMs: 30_000, context: logs });
    const enrolled = await enrolledNetns();
    expect(enrolled.filter((n) => n === old.netnsPath || n === recreated.netnsPath).sort()).toEqual([old.netnsPath, recreated.netnsPath].sort());
    // the proxy reconnects and takes the snapshot: the new netns again, so nothing changes for it
    await until('the proxy to take the new snapshot', () => /snapshot sent/.test(log.slice(mark)), { timeoutMs: 20_000, context: logs });
    expect(log.slice(mark)).not.toMatch(/pod netns replaced/);
    const r = await request(newSh, recreated, 'after-restart');
    expect(r.out?.transport).toBe('hbone');
    expect(r.in?.transport).toBe('hbone');
    expect((await oldSh.connect({ host: srv.ip, port: 8080, send: 'sneak', timeoutMs: 2000 })).ok).toBe(false);
  });

  it('DEL of the old sandbox removes only its capture: the new sandbox still goes over HBONE', async () => {
    await lab.node.delPodWithChain('cli1', conflist(), { namespace: 'mesh', name: 'cli', uid }, cniPath());
    const enrolled = await enrolledNetns();
    expect(enrolled).not.toContain(old.netnsPath);
    expect(enrolled).toContain(recreated.netnsPath);
    const r = await request(newSh, recreated, 'after-old-del');
    expect(r.reply).toBe('srv:after-old-del');
    expect(r.out?.transport).toBe('hbone');
    expect(r.in?.transport).toBe('hbone');
  });

  it('DEL of the new sandbox then removes its capture: its connection leaves uncaptured', async () => {
    // a runtime runs DEL in reverse chain order: inpod-cni first, while the pod network still works
    const plugin = conflist().plugins.find((x) => (x as { type: string }).type === 'inpod-cni')!;
    await runCniPlugin('inpod-cni', 'DEL', { cniVersion: conflist().cniVersion, name: conflist().name, ...plugin }, {
      CNI_CONTAINERID: recreated.containerId,
      CNI_NETNS: recreated.netnsPath,
      CNI_IFNAME: 'eth0',
      CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=mesh;K8S_POD_NAME=cli;K8S_POD_UID=${uid}`,
    }, lab.node.nodeNetns, cniPath());
    expect(await enrolledNetns()).not.toContain(recreated.netnsPath);
    const r = await request(newSh, recreated, 'after-new-del');
    expect(r.reply).toBe('srv:after-new-del');
    expect(r.out).toBeUndefined(); // the client side's proxy saw nothing
    expect(r.in?.transport).toBe('plaintext'); // the server, still in the mesh, takes it as plaintext
    await lab.node.delPodWithChain('cli2', conflist(), { namespace: 'mesh', name: 'cli', uid }, cniPath());
  });
});

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
    await until('the proxy to take the snapshot', () => ready > 0, { timeoutMs: 20_000, context: logs });
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
    await until('the access log of the new netns', () => accessLines(log).some((x) => x.direction === 'outbound' && x.transport === 'hbone' && srcIp(x) === a2.ip), { timeoutMs: 15_000, context: logs });
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
