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
import { writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BackendName } from '../../ts/redirect/backend.js';
import type { FakeApiServer } from '../fixtures/apiserver.js';
import { type Lab, type LabPod, type PodShell, until } from '../netns/lab.js';
import { Rig } from '../netns/rig.js';
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
  let rig: Rig;
  let lab: Lab;
  let api: FakeApiServer;
  let srv: LabPod, old: LabPod, recreated: LabPod;
  let srvSh: PodShell, oldSh: PodShell, newSh: PodShell;
  let uid = '';
  const conflist = (): { cniVersion: string; name: string; plugins: object[] } => rig.conflist();
  const cniPath = (): string => rig.cniPath();
  const logs = (): string => rig.log;
  const enrolledNetns = async (): Promise<string[]> => (await rig.backend.list()).map((x) => x.netns);
  const startAgent = () => rig.startAgent({ hostNetns: true });

  /** Runs the CNI chain ADD for pod `name` in a new sandbox netns called `sandbox`; the kubelet then reports its IP. */
  const sandbox = (sandbox: string, name: string): Promise<LabPod> => rig.startPod('mesh', name, { uid: api.get('pods', 'mesh', name)!.metadata.uid!, sandbox });

  /** Sum of istio_tcp_connections_opened_total over the series whose labels contain every `want`. */
  async function opened(...want: string[]): Promise<number> {
    const text = await (await fetch(`http://127.0.0.1:${rig.proxy!.ports.metrics}/metrics`)).text();
    let n = 0;
    for (const l of text.split('\n')) if (l.startsWith('istio_tcp_connections_opened_total{') && want.every((w) => l.includes(w))) n += Number(l.split(' ').at(-1));
    return n;
  }

  /**
   * One request from `sh` to the server; resolves with how it went: the reply, and the proxy's
   * access-log lines for it (outbound at the client, inbound at the server).
   */
  async function request(sh: PodShell, from: LabPod, send: string): Promise<{ reply?: string; error?: string; out?: AccessLine; in?: AccessLine }> {
    const mark = rig.log.length;
    const r = await sh.connect({ host: srv.ip, port: 8080, send, timeoutMs: 3000 });
    if (!r.ok) return { error: r.error };
    await sh.close(r.connId);
    const mine = (): AccessLine[] => accessLines(rig.log.slice(mark)).filter((a) => srcIp(a) === from.ip);
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
    rig = await Rig.create({ tag: 'sb', backend: backendName, cluster: {} });
    lab = rig.lab;
    api = rig.api!;
    for (const n of ['srv', 'cli']) rig.pod('mesh', n, { labels: { app: n }, serviceAccount: `sa-${n}` });
    uid = api.get('pods', 'mesh', 'cli')!.metadata.uid!;
    await rig.startProxy({ args: ['--kubeconfig', rig.p('kubeconfig')], ports: true });
    await startAgent();
    await rig.ready(30_000);
    srv = await sandbox('srv', 'srv');
    srvSh = await lab.shell(srv.netnsPath, { inCgroup: true });
    await srvSh.listen({ port: 8080, tag: 'srv' });
    old = await sandbox('cli1', 'cli');
    oldSh = await lab.shell(old.netnsPath, { inCgroup: true });
    // The first sandbox is captured and served: its connection to srv goes over HBONE, leaving a
    // pooled tunnel dialled from the old netns; the new sandbox must never ride it (issue 13 item
    // 6: the pool is keyed by the source sandbox, as ztunnel's per-pod proxies are).
    await until('the proxy to know srv as a mesh workload', async () => {
      const d = (await (await fetch(`http://127.0.0.1:${rig.proxy!.ports.admin}/config_dump`)).json()) as { workloads: { name: string; protocol: string; workloadIps?: string[] }[] };
      return d.workloads.some((x) => x.name === 'srv' && x.protocol === 'HBONE' && !!x.workloadIps?.includes(srv.ip));
    }, { timeoutMs: 20_000, context: logs });
    const mark = rig.log.length;
    const w = await oldSh.connect({ host: srv.ip, port: 8080, send: 'warm-up', timeoutMs: 3000 });
    expect(w.ok && w.reply).toBe('srv:warm-up');
    if (w.ok) await oldSh.close(w.connId);
    await until('the old sandbox through the proxy', () => accessLines(rig.log.slice(mark)).some((a) => a.direction === 'outbound' && a.transport === 'hbone' && srcIp(a) === old.ip), { timeoutMs: 15_000, context: logs });
  }, 90_000);

  afterAll(async () => {
    await rig?.destroy();
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
    await rig.agent!.stop();
    const mark = rig.log.length;
    await startAgent();
    await until('the new agent to be ready', () => /agent ready/.test(rig.log.slice(mark)), { timeoutMs: 30_000, context: logs });
    const enrolled = await enrolledNetns();
    expect(enrolled.filter((n) => n === old.netnsPath || n === recreated.netnsPath).sort()).toEqual([old.netnsPath, recreated.netnsPath].sort());
    // the proxy reconnects and takes the snapshot: the new netns again, so nothing changes for it
    await until('the proxy to take the new snapshot', () => /snapshot sent/.test(rig.log.slice(mark)), { timeoutMs: 20_000, context: logs });
    expect(rig.log.slice(mark)).not.toMatch(/pod netns replaced/);
    const r = await request(newSh, recreated, 'after-restart');
    expect(r.out?.transport).toBe('hbone');
    expect(r.in?.transport).toBe('hbone');
    expect((await oldSh.connect({ host: srv.ip, port: 8080, send: 'sneak', timeoutMs: 2000 })).ok).toBe(false);
  });

  it('DEL of the old sandbox removes only its capture: the new sandbox still goes over HBONE', async () => {
    await rig.delPod('mesh', 'cli', uid, 'cli1');
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
    await rig.delPod('mesh', 'cli', uid, 'cli2');
  });
});

describe.each(BACKENDS)('the proxy given a known uid with a new netns over ZDS, %s backend', (name) => {
  let rig: Rig;
  let a: LabPod, a2: LabPod, b: LabPod;
  let sa: PodShell, sa2: PodShell;
  const logs = (): string => rig.log;

  beforeAll(async () => {
    rig = await Rig.create({ tag: 'zs', backend: name });
    const { lab } = rig;
    [a, a2, b] = await Promise.all([lab.addPod('a'), lab.addPod('a2'), lab.addPod('b')]);
    writeFileSync(rig.p('config.yaml'), `workloads:
  - {uid: ua, name: a, namespace: default, serviceAccount: sa-a, workloadIps: ["${a.ip}", "${a2.ip}"], protocol: HBONE}
  - {uid: ub, name: b, namespace: default, serviceAccount: sa-b, workloadIps: ["${b.ip}"], protocol: HBONE}
`);
    rig.startZds();
    await rig.startProxy({ args: ['--config', rig.p('config.yaml')] });
    await until('the proxy to take the snapshot', () => rig.zdsReady > 0, { timeoutMs: 20_000, context: logs });
    await rig.backend.enroll(a2.netnsPath); // captured, served only once a2 is handed over
    for (const [p, uid] of [[a, 'ua'], [b, 'ub']] as const) await rig.handOver(p, { uid, name: p.name, namespace: 'default', serviceAccount: `sa-${p.name}` });
    sa = await lab.shell(a.netnsPath, { inCgroup: true });
    sa2 = await lab.shell(a2.netnsPath, { inCgroup: true });
    const sb = await lab.shell(b.netnsPath, { inCgroup: true });
    await sb.listen({ port: 8080, tag: 'b' });
  }, 60_000);

  afterAll(async () => {
    await rig?.destroy();
  });

  it('Add of a served uid with a new netns: serves the new one, stops listening in the old (its open connection finishes); the same netns again changes nothing', async () => {
    // an open connection through the old netns's proxy, to see that it is left to finish
    const held = await sa.connect({ host: b.ip, port: 8080, send: 'held', timeoutMs: 5000 });
    expect(held.ok && held.reply).toBe('b:held');
    // captured but not served yet: fails closed
    expect((await sa2.connect({ host: b.ip, port: 8080, send: 'x', timeoutMs: 1000 })).ok).toBe(false);

    await rig.zds!.addPod({ uid: 'ua', info: { name: 'a', namespace: 'default', serviceAccount: 'sa-a' }, netnsPath: a2.netnsPath });
    const r = await sa2.connect({ host: b.ip, port: 8080, send: 'new-netns', timeoutMs: 5000 });
    expect(r.ok && r.reply, `${JSON.stringify(r)}\n${rig.log.slice(-2000)}`).toBe('b:new-netns');
    if (r.ok) await sa2.close(r.connId);
    await until('the access log of the new netns', () => accessLines(rig.log).some((x) => x.direction === 'outbound' && x.transport === 'hbone' && srcIp(x) === a2.ip), { timeoutMs: 15_000, context: logs });
    // the old netns is still captured, and no longer served: refused, never out
    expect((await sa.connect({ host: b.ip, port: 8080, send: 'old', timeoutMs: 1000 })).ok).toBe(false);
    // the connection opened before the switch carries on
    if (held.ok) expect((await sa.send(held.connId, 'still')).reply).toBe('b:still');

    const opens = (rig.log.match(/pod listeners open/g) ?? []).length;
    await rig.zds!.addPod({ uid: 'ua', info: { name: 'a', namespace: 'default', serviceAccount: 'sa-a' }, netnsPath: a2.netnsPath });
    const again = await sa2.connect({ host: b.ip, port: 8080, send: 'same', timeoutMs: 5000 });
    expect(again.ok && again.reply).toBe('b:same');
    expect((rig.log.match(/pod listeners open/g) ?? []).length).toBe(opens);
  });
});
