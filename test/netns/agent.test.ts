/**
 * The node agent as a process, with the fake API server and the real client-node informers, the
 * real CNI chain (bridge + host-local + inpod-cni) run as a container runtime runs it, the eBPF
 * backend, and the proxy process connected over ZDS.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackend } from '../../ts/redirect/factory.js';
import type { RedirectBackend } from '../../ts/redirect/backend.js';
import { FakeApiServer } from '../fixtures/apiserver.js';
import { CLI, freePorts } from '../cli.js';
import { Lab, type LabPod, type PodShell, until as untilFor } from './lab.js';
import { runCni } from '../cni/run.js';

const NODE = 'node1';
const REDIRECTION = 'ambient.istio.io/redirection';

describe('inpod agent', () => {
  let lab: Lab;
  let dir: string;
  let api: FakeApiServer;
  let backend: RedirectBackend;
  let agent: ChildProcess | undefined;
  let proxy: ChildProcess | undefined;
  let agentLog = '';
  let proxyLog = '';
  let peer: LabPod;
  let peerSh: PodShell;
  let healthPort = 0;
  let nextPorts: number[] = [];
  const pauses: { proc: ChildProcess; cgroup: string }[] = [];
  const p = (f: string): string => join(dir, f);
  const conflist = (): { cniVersion: string; name: string; plugins: object[] } => JSON.parse(readFileSync(p('net.d/10-sim.conflist'), 'utf8'));
  const cniPath = (): string => `${p('bin')}:/usr/lib/cni:/opt/cni/bin`;

  function startAgent(): void {
    agentLog = '';
    healthPort = nextPorts.shift() ?? 0;
    agent = spawn('node', [CLI, 'agent', '--backend', 'ebpf', '--kubeconfig', p('kubeconfig'), '--node', NODE, '--cgroup', lab.cgroupPath,
      '--zds', p('zds.sock'), '--cni-socket', p('plugin.sock'), '--cni-bin-dir', p('bin'), '--cni-conf-dir', p('net.d'),
      '--state-dir', p('state'), '--pin-root', `/sys/fs/bpf/${lab.prefix}inpod`, '--health-addr', `127.0.0.1:${healthPort}`,
      '--pod-name', 'inpod-agent-test', '--pod-namespace', 'inpod-system'], { stdio: ['ignore', 'pipe', 'pipe'] });
    agent.stdout!.on('data', (d) => (agentLog += d));
    agent.stderr!.on('data', (d) => (agentLog += d));
  }
  function startProxy(): void {
    proxy = spawn('sh', ['-c', `echo $$ > ${lab.cgroupPath}/cgroup.procs && exec node ${CLI} ztunnel --zds ${p('zds.sock')} --ca-dir ${p('ca')} --drain-seconds 1 --admin-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 --readiness-addr 127.0.0.1:0`], { stdio: ['ignore', 'pipe', 'pipe'] });
    proxy.stdout!.on('data', (d) => (proxyLog += d));
    proxy.stderr!.on('data', (d) => (proxyLog += d));
  }
  const logs = (): string => `agent:\n${agentLog.slice(-2500)}\nproxy:\n${proxyLog.slice(-1400)}`;
  const until = (what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> => untilFor(what, cond, { timeoutMs, context: logs });
  const enrolledNetns = async (): Promise<string[]> => (await backend.list()).map((x) => x.netns).sort();
  /**
   * A process of the pod in its pod cgroup (as the runtime's pause container): how the agent
   * finds a pod no CNI event told it about. Returns the netns path the agent will know it by.
   */
  async function pause(uid: string, netnsPath: string): Promise<string> {
    const cgroup = join(lab.cgroupPath, `pod${uid}`);
    mkdirSync(cgroup);
    const proc = spawn('sh', ['-c', `echo $$ > ${cgroup}/cgroup.procs && exec nsenter --net=${netnsPath} sleep 600`], { stdio: 'ignore' });
    pauses.push({ proc, cgroup });
    await until('the pod process in its cgroup', () => readFileSync(join(cgroup, 'cgroup.procs'), 'utf8').trim() !== '');
    return `/proc/${readFileSync(join(cgroup, 'cgroup.procs'), 'utf8').trim().split('\n')[0]}/ns/net`;
  }
  let bNetns = ''; // b as the agent knows it: by its process (its ADD never reached the agent)
  const podObj = (ns: string, name: string, extra: { labels?: Record<string, string>; annotations?: Record<string, string> } = {}) =>
    api.apply('pods', { metadata: { name, namespace: ns, labels: extra.labels, annotations: extra.annotations }, spec: { nodeName: NODE, serviceAccountName: 'default', containers: [{ name: 'app' }] } } as never);
  async function runPod(ns: string, name: string, extra = {}): Promise<{ pod?: LabPod; error?: string; uid: string }> {
    const obj = podObj(ns, name, extra);
    try {
      return { pod: await lab.node.addPodWithChain(name, conflist(), { namespace: ns, name, uid: obj.metadata.uid! }, cniPath()), uid: obj.metadata.uid! };
    } catch (e) {
      return { error: (e as { cniOutput?: string }).cniOutput ?? (e as Error).message, uid: obj.metadata.uid! };
    }
  }
  /**
   * Which way a connection from `pod` to the peer (outside the mesh) went, judged by what the peer
   * accepted: the pod's own socket ('direct'), or another one from the pod's address, which only
   * the proxy makes ('proxy': it passes the connection through from inside the pod's netns).
   */
  async function path(sh: PodShell, pod: LabPod): Promise<'proxy' | 'direct'> {
    const { id } = await peerSh.listenerByTag('peer');
    const before = (await peerSh.accepted(id)).length;
    const r = await sh.connect({ host: peer.ip, port: 80, send: 'x', timeoutMs: 3000 });
    if (!r.ok) throw new Error(`${pod.name} -> peer: ${r.error}\n${logs()}`);
    expect(r.reply).toBe('peer:x'); // answered: the peer has recorded what it accepted
    await sh.close(r.connId);
    const accepted = (await peerSh.accepted(id)).slice(before);
    expect(accepted).toHaveLength(1);
    const seen = accepted[0]!.peer;
    if (seen.host === r.sockname.host && seen.port === r.sockname.port) return 'direct';
    expect(seen.host).toBe(pod.ip);
    return 'proxy';
  }

  beforeAll(async () => {
    nextPorts = await freePorts(3); // one per agent start
    lab = await Lab.create();
    dir = mkdtempSync(join(tmpdir(), `${lab.prefix}ag`));
    mkdirSync(p('net.d'));
    mkdirSync(p('bin'));
    const { cniVersion, name, ...bridge } = lab.node.netConf() as { cniVersion: string; name: string };
    writeFileSync(p('net.d/10-sim.conflist'), JSON.stringify({ cniVersion, name, plugins: [bridge] }));
    api = new FakeApiServer();
    await api.start();
    writeFileSync(p('kubeconfig'), api.kubeconfig());
    api.apply('namespaces', { metadata: { name: 'mesh', labels: { 'istio.io/dataplane-mode': 'ambient' } } });
    api.apply('namespaces', { metadata: { name: 'plain' } });
    backend = await createBackend('ebpf', { cgroupPath: lab.cgroupPath, pinRoot: `/sys/fs/bpf/${lab.prefix}inpod`, stateDir: p('state') });
    peer = await lab.addPod('peer');
    peerSh = await lab.shell(peer.netnsPath, { inCgroup: false });
    await peerSh.listen({ port: 80, tag: 'peer' });
    startProxy();
    startAgent();
    await until('the agent to chain inpod-cni into the conflist', () => JSON.stringify(conflist()).includes('inpod-cni'));
    await until('the agent to be ready', () => /agent ready/.test(agentLog));
    await until('the proxy to take the snapshot', () => /snapshot sent/.test(agentLog));
  }, 60_000);

  afterAll(async () => {
    for (const { proc, cgroup } of pauses) {
      const exited = proc.exitCode !== null || proc.signalCode !== null ? Promise.resolve() : new Promise((r) => proc.once('exit', r));
      proc.kill('SIGKILL');
      await exited; // its cgroup can be removed once it has no process
      rmdirSync(cgroup);
    }
    agent?.kill('SIGKILL');
    proxy?.kill('SIGKILL');
    await api?.stop();
    await backend?.uninstall().catch(() => {});
    await lab?.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('ADD blocks until a pod of an ambient namespace is captured and handed to the proxy; the pod is annotated', async () => {
    const a = await runPod('mesh', 'a');
    expect(a.error).toBeUndefined();
    expect(await enrolledNetns()).toContain(a.pod!.netnsPath); // already when ADD returned
    expect(proxyLog).toMatch(/pod listeners open.*"pod":"a"|"pod":"a".*pod listeners open/);
    await until('the annotation', () => api.get('pods', 'mesh', 'a')?.metadata.annotations?.[REDIRECTION] === 'enabled');
    const sh = await lab.shell(a.pod!.netnsPath, { inCgroup: true });
    expect(await path(sh, a.pod!)).toBe('proxy');
  });

  it('leaves pods of other namespaces, opted-out pods and sidecar pods alone', async () => {
    const b = await runPod('plain', 'b');
    const c = await runPod('mesh', 'c', { labels: { 'istio.io/dataplane-mode': 'none' } });
    const d = await runPod('mesh', 'd', { annotations: { 'sidecar.istio.io/status': '{"containers":["istio-proxy"]}' } });
    for (const x of [b, c, d]) expect(x.error).toBeUndefined();
    bNetns = await pause(b.uid, b.pod!.netnsPath);
    const enrolled = await enrolledNetns();
    for (const x of [b, c, d]) expect(enrolled).not.toContain(x.pod!.netnsPath);
    expect(enrolled).not.toContain(bNetns);
  });

  it('enrolls and unenrolls running pods live when the namespace label changes', async () => {
    const b = lab.node.pods.get('b')!;
    const sh = await lab.shell(b.netnsPath, { inCgroup: true });
    expect(await path(sh, b)).toBe('direct');
    api.apply('namespaces', { metadata: { name: 'plain', labels: { 'istio.io/dataplane-mode': 'ambient' } } });
    await until('b to be enrolled', async () => (await enrolledNetns()).includes(bNetns));
    await until('b annotated', () => api.get('pods', 'plain', 'b')?.metadata.annotations?.[REDIRECTION] === 'enabled');
    expect(await path(sh, b)).toBe('proxy');
    api.apply('namespaces', { metadata: { name: 'plain' } });
    await until('b to be unenrolled', async () => !(await enrolledNetns()).includes(bNetns));
    await until('annotation removed', () => api.get('pods', 'plain', 'b')?.metadata.annotations?.[REDIRECTION] === undefined);
    expect(await path(sh, b)).toBe('direct');
  });

  it('finds a pod that no CNI event told it about through /proc (a process in its pod cgroup) and captures it', async () => {
    // a pod started before the agent: its netns is known only from a process of the pod
    const g = await lab.addPod('g');
    const uid = `${lab.prefix}-0000-early`;
    const gNetns = await pause(uid, g.netnsPath);
    api.apply('pods', { metadata: { name: 'g', namespace: 'mesh', uid }, spec: { nodeName: NODE, serviceAccountName: 'default', containers: [{ name: 'app' }] } } as never);
    await until('g to be enrolled', async () => (await enrolledNetns()).includes(gNetns));
    await until('g annotated', () => api.get('pods', 'mesh', 'g')?.metadata.annotations?.[REDIRECTION] === 'enabled');
    const sh = await lab.shell(g.netnsPath, { inCgroup: true });
    expect(await path(sh, g)).toBe('proxy');
  });

  it('survives the API server going away and coming back (with a compacted history)', async () => {
    const b = lab.node.pods.get('b')!;
    const mark = agentLog.length;
    await api.stop();
    api.apply('namespaces', { metadata: { name: 'plain', labels: { 'istio.io/dataplane-mode': 'ambient' } } });
    api.compact(); // the agent's resourceVersion is now too old: 410 Gone, relist
    // the server comes back only once the agent has found it gone (its watch failed)
    await until('the agent to find the API server gone', () => /watch failed/.test(agentLog.slice(mark)));
    await api.start(api.port);
    await until('b to be enrolled after the API server came back', async () => (await enrolledNetns()).includes(bNetns), 30_000);
  });

  it('fails ADD with a CNI error while the proxy is down, and succeeds once it is back', async () => {
    proxy!.kill('SIGKILL');
    await new Promise((r) => proxy!.once('exit', r));
    await until('the agent to notice', () => /proxy disconnected|proxy connection closed/.test(agentLog));
    const e = await runPod('mesh', 'e');
    expect(JSON.parse(e.error!)).toMatchObject({ code: 11, msg: expect.stringMatching(/mesh\/e was not added to the mesh: no proxy is connected/) });
    // the runtime tears the failed sandbox down (DEL) and retries with a new one
    await lab.node.delPodWithChain('e', conflist(), { namespace: 'mesh', name: 'e', uid: e.uid }, cniPath());
    await lab.node.removePod('e');
    startProxy();
    await until('the proxy to take the snapshot', () => /snapshot sent/.test(agentLog.split('proxy disconnected').at(-1) ?? ''));
    const again = await runPod('mesh', 'e');
    expect(again.error).toBeUndefined();
    expect(await enrolledNetns()).toContain(lab.node.pods.get('e')!.netnsPath);
  });

  it('answers bad input with clear errors and carries on: a vanished netns, an API object missing fields', async () => {
    // the plugin as the agent installed it, as a runtime runs it
    const gone = await runCni(p('bin/inpod-cni'), {
      CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'x', CNI_NETNS: `/run/netns/${lab.prefix}vanished`, CNI_IFNAME: 'eth0',
      CNI_ARGS: 'K8S_POD_NAMESPACE=mesh;K8S_POD_NAME=ghost;K8S_POD_UID=ghost-uid',
    }, JSON.stringify({ cniVersion: '1.0.0', name: 'x', type: 'inpod-cni', agentSocket: p('plugin.sock'), meshView: p('state/meshview.json'), timeoutSeconds: 10, prevResult: { cniVersion: '1.0.0', ips: [] } }));
    expect(gone.code).toBe(1);
    expect(JSON.parse(gone.stdout).msg).toMatch(/netns \/run\/netns\/\w+vanished of pod mesh\/ghost does not exist/);
    // a pod object of this node with nothing else: no containers, service account, labels or IPs
    api.apply('pods', { metadata: { name: 'bare', namespace: 'mesh' }, spec: { nodeName: NODE } } as never);
    // the next pod comes after it on the same watch: the agent has taken the bare one when it serves this one
    const ok = await runPod('mesh', 'f');
    expect(ok.error).toBeUndefined();
    expect(await enrolledNetns()).toContain(ok.pod!.netnsPath);
    expect(agent!.exitCode).toBeNull();
  });

  it('reports readiness and its metrics', async () => {
    expect((await fetch(`http://127.0.0.1:${healthPort}/healthz/ready`)).status).toBe(200);
    const m = await (await fetch(`http://127.0.0.1:${healthPort}/metrics`)).text();
    const enrolled = Number(/^inpod_agent_pods_enrolled (\d+)/m.exec(m)?.[1]);
    expect(enrolled).toBe((await backend.list()).length);
    expect(m).toMatch(/inpod_agent_enroll_seconds_count [1-9]/);
  });

  it('DEL twice is fine', async () => {
    const uid = api.get('pods', 'mesh', 'c')!.metadata.uid!;
    for (let i = 0; i < 2; i++) await lab.node.delPodWithChain('c', conflist(), { namespace: 'mesh', name: 'c', uid }, cniPath());
  });

  it('a pod whose netns path went away without a DEL is unenrolled through the netns the agent holds: nothing of it stays in the kernel', async () => {
    const h = await runPod('mesh', 'h');
    expect(h.error).toBeUndefined();
    const cookie = (await backend.list()).find((x) => x.netns === h.pod!.netnsPath)!.cookie;
    // the runtime tears the sandbox down (veth, netns path) and its inpod-cni DEL never reaches the agent
    await lab.node.removePod('h');
    expect(existsSync(h.pod!.netnsPath)).toBe(false);
    // the next change of the pod makes the agent look at it again
    const cur = api.get('pods', 'mesh', 'h')!;
    api.apply('pods', { ...cur, metadata: { ...cur.metadata, labels: { ...cur.metadata.labels, touched: 'yes' } } } as never);
    await until('h to be unenrolled', async () => !(await backend.list()).some((x) => x.cookie === cookie));
    const m = await (await fetch(`http://127.0.0.1:${healthPort}/metrics`)).text();
    expect(Number(/^inpod_agent_pods_enrolled (\d+)/m.exec(m)?.[1])).toBe((await backend.list()).length);
  });

  it('after a SIGKILL the capture stays, traffic flows, and the new agent reconciles without enrolling twice', async () => {
    const a = lab.node.pods.get('a')!;
    const e = lab.node.pods.get('e')!;
    const eUid = api.get('pods', 'mesh', 'e')!.metadata.uid!;
    agent!.kill('SIGKILL');
    await new Promise((r) => agent!.once('exit', r));
    const sh = await lab.shell(a.netnsPath, { inCgroup: true });
    expect(await path(sh, a)).toBe('proxy'); // kernel state and proxy carry on
    // e is deleted while the agent is away (its CNI DEL cannot reach the agent and still succeeds)
    await lab.node.delPodWithChain('e', conflist(), { namespace: 'mesh', name: 'e', uid: eUid }, cniPath());
    api.delete('pods', 'mesh', 'e');
    await lab.node.removePod('e');
    startAgent();
    await until('the new agent to be ready', () => /agent ready/.test(agentLog));
    const list = await backend.list();
    expect(list.map((x) => x.netns)).not.toContain(e.netnsPath);
    expect(list.filter((x) => x.netns === a.netnsPath)).toHaveLength(1);
    expect(await path(sh, a)).toBe('proxy');
  });

  it('reads the netns records of an agent from before sandboxes: a restart after the upgrade keeps running pods captured', async () => {
    const a = lab.node.pods.get('a')!;
    const uid = api.get('pods', 'mesh', 'a')!.metadata.uid!;
    agent!.kill('SIGKILL');
    await new Promise((r) => agent!.once('exit', r));
    // what the agent before sandboxes wrote: one record per pod uid, no netns identity
    const records = p('state/pods');
    for (const f of readdirSync(records)) if (f.startsWith(`${encodeURIComponent(uid)}@`)) rmSync(join(records, f));
    writeFileSync(join(records, `${encodeURIComponent(uid)}.json`), JSON.stringify({ uid, namespace: 'mesh', name: 'a', netns: a.netnsPath }));
    startAgent();
    await until('the upgraded agent to be ready', () => /agent ready/.test(agentLog));
    expect((await backend.list()).filter((x) => x.netns === a.netnsPath)).toHaveLength(1);
    const sh = await lab.shell(a.netnsPath, { inCgroup: true });
    expect(await path(sh, a)).toBe('proxy');
    expect(existsSync(join(records, `${encodeURIComponent(uid)}.json`))).toBe(false);
    expect(readdirSync(records).filter((f) => f.startsWith(`${encodeURIComponent(uid)}@`))).toHaveLength(1);
    // and the migrated record still names the sandbox for its DEL
    await lab.node.delPodWithChain('a', conflist(), { namespace: 'mesh', name: 'a', uid }, cniPath());
    expect((await backend.list()).map((x) => x.netns)).not.toContain(a.netnsPath);
  });
});
