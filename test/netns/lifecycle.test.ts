/**
 * Uninstall and upgrade as istio-cni (istio cni/pkg/nodeagent/server.go ShouldStopCleanup): the
 * agent as a process with the fake API server holding its DaemonSet, its own pod and its node,
 * the real CNI chain (bridge + host-local + inpod-cni), the eBPF backend and the proxy. On SIGTERM
 * the agent removes inpod-cni (entry and binary) only when its DaemonSet is gone or no longer
 * schedules to the node; running pods keep their capture either way.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackend } from '../../ts/redirect/factory.js';
import type { RedirectBackend } from '../../ts/redirect/backend.js';
import { FakeApiServer } from '../fixtures/apiserver.js';
import { CLI, freePorts, inpod } from '../cli.js';
import { Lab, type LabPod, type PodShell, until as untilFor } from './lab.js';

const NODE = 'node1';
const NS = 'inpod-system';
const SELF = 'inpod-agent-q8x2z';

describe('agent shutdown: uninstall and upgrade as istio-cni', () => {
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
  let ports: number[] = [];
  const p = (f: string): string => join(dir, f);
  const conflist = (): { cniVersion: string; name: string; plugins: { type: string }[] } => JSON.parse(readFileSync(p('net.d/10-sim.conflist'), 'utf8'));
  const chained = (): boolean => conflist().plugins.some((x) => x.type === 'inpod-cni');
  const binary = (): boolean => existsSync(p('bin/inpod-cni'));
  const cniPath = (): string => `${p('bin')}:/usr/lib/cni:/opt/cni/bin`;
  const logs = (): string => `agent:\n${agentLog.slice(-2500)}\nproxy:\n${proxyLog.slice(-1000)}`;
  const until = (what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> => untilFor(what, cond, { timeoutMs, context: logs });
  const enrolled = async (): Promise<string[]> => (await backend.list()).map((x) => x.netns);

  /** Starts the agent (Kubernetes mode unless `manifests`) and waits until it is ready and has chained inpod-cni. */
  async function startAgent(o: { manifests?: string } = {}): Promise<void> {
    agentLog = '';
    const mode = o.manifests ? ['--manifests', o.manifests] : ['--kubeconfig', p('kubeconfig'), '--pod-name', SELF, '--pod-namespace', NS];
    agent = spawn('node', [CLI, 'agent', '--backend', 'ebpf', ...mode, '--node', NODE, '--cgroup', lab.cgroupPath, '--zds', p('zds.sock'),
      '--cni-socket', p('plugin.sock'), '--cni-bin-dir', p('bin'), '--cni-conf-dir', p('net.d'), '--state-dir', p(o.manifests ? 'mstate' : 'state'),
      '--pin-root', `/sys/fs/bpf/${lab.prefix}inpod`, '--health-addr', `127.0.0.1:${ports.shift()}`], { stdio: ['ignore', 'pipe', 'pipe'] });
    agent.stdout!.on('data', (d) => (agentLog += d));
    agent.stderr!.on('data', (d) => (agentLog += d));
    await until('the agent to chain inpod-cni', () => existsSync(p('net.d/10-sim.conflist')) && chained() && binary());
    await until('the agent to be ready', () => /agent ready/.test(agentLog));
    await until('the proxy to take the snapshot', () => /snapshot sent/.test(agentLog));
  }
  /** SIGTERM, as the kubelet stops the pod; resolves with the exit code once the agent is gone. */
  async function terminate(): Promise<number | null> {
    const a = agent!;
    const exited = new Promise<number | null>((r) => a.once('exit', (code) => r(code)));
    a.kill('SIGTERM');
    const code = await exited;
    agent = undefined;
    return code;
  }
  async function runPod(ns: string, name: string): Promise<{ pod?: LabPod; error?: string }> {
    const obj = api.apply('pods', { metadata: { name, namespace: ns }, spec: { nodeName: NODE, serviceAccountName: 'default', containers: [{ name: 'app' }] } } as never);
    try {
      return { pod: await lab.node.addPodWithChain(name, conflist(), { namespace: ns, name, uid: obj.metadata.uid! }, cniPath()) };
    } catch (e) {
      return { error: (e as { cniOutput?: string }).cniOutput ?? (e as Error).message };
    }
  }
  /** 'proxy' when the peer accepted a connection other than the pod's own socket (the proxy's passthrough). */
  async function path(pod: LabPod): Promise<'proxy' | 'direct'> {
    const sh = await lab.shell(pod.netnsPath, { inCgroup: true });
    try {
      const { id } = await peerSh.listenerByTag('peer');
      const before = (await peerSh.accepted(id)).length;
      const r = await sh.connect({ host: peer.ip, port: 80, send: 'x', timeoutMs: 3000 });
      if (!r.ok) throw new Error(`${pod.name} -> peer: ${r.error}\n${logs()}`);
      await sh.close(r.connId);
      const seen = (await peerSh.accepted(id)).slice(before)[0]!.peer;
      return seen.host === r.sockname.host && seen.port === r.sockname.port ? 'direct' : 'proxy';
    } finally {
      sh.kill();
    }
  }
  const daemonSet = (spec: object): void => void api.apply('daemonsets', { metadata: { name: 'inpod-agent', namespace: NS }, spec: { template: { spec: { hostNetwork: true, tolerations: [{ operator: 'Exists' }], ...spec } } } } as never);

  beforeAll(async () => {
    ports = await freePorts(6);
    lab = await Lab.create();
    dir = mkdtempSync(join(tmpdir(), `${lab.prefix}lc`));
    for (const d of ['net.d', 'bin', 'manifests']) mkdirSync(p(d));
    const { cniVersion, name, ...bridge } = lab.node.netConf() as { cniVersion: string; name: string };
    writeFileSync(p('net.d/10-sim.conflist'), JSON.stringify({ cniVersion, name, plugins: [bridge] }));
    api = new FakeApiServer();
    await api.start();
    writeFileSync(p('kubeconfig'), api.kubeconfig());
    api.apply('namespaces', { metadata: { name: 'mesh', labels: { 'istio.io/dataplane-mode': 'ambient' } } });
    api.apply('namespaces', { metadata: { name: NS } });
    api.apply('nodes', { metadata: { name: NODE, labels: { 'kubernetes.io/os': 'linux', 'kubernetes.io/hostname': NODE } } });
    daemonSet({});
    const ds = api.get('daemonsets', NS, 'inpod-agent')!;
    // the agent's own pod, as the DaemonSet controller makes it: a controller reference to the DaemonSet
    api.apply('pods', { metadata: { name: SELF, namespace: NS, ownerReferences: [{ apiVersion: 'apps/v1', kind: 'DaemonSet', name: 'inpod-agent', uid: ds.metadata.uid, controller: true, blockOwnerDeletion: true }] }, spec: { nodeName: NODE } });
    backend = await createBackend('ebpf', { cgroupPath: lab.cgroupPath, pinRoot: `/sys/fs/bpf/${lab.prefix}inpod`, stateDir: p('state') });
    peer = await lab.addPod('peer');
    peerSh = await lab.shell(peer.netnsPath, { inCgroup: false });
    await peerSh.listen({ port: 80, tag: 'peer' });
    proxy = spawn('sh', ['-c', `echo $$ > ${lab.cgroupPath}/cgroup.procs && exec node ${CLI} ztunnel --zds ${p('zds.sock')} --ca-dir ${p('ca')} --drain-seconds 1 --admin-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 --readiness-addr 127.0.0.1:0`], { stdio: ['ignore', 'pipe', 'pipe'] });
    proxy.stdout!.on('data', (d) => (proxyLog += d));
    proxy.stderr!.on('data', (d) => (proxyLog += d));
  }, 60_000);

  afterAll(async () => {
    agent?.kill('SIGKILL');
    proxy?.kill('SIGKILL');
    await api?.stop();
    await backend?.uninstall().catch(() => {});
    await lab?.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('refuses to start in Kubernetes mode without its own pod name, naming the downward API fix', async () => {
    const { POD_NAME: _n, POD_NAMESPACE: _ns, ...env } = process.env;
    const r = await new Promise<{ code: number | null; err: string }>((resolve) => {
      const c = spawn('node', [CLI, 'agent', '--kubeconfig', p('kubeconfig'), '--node', NODE, '--cgroup', lab.cgroupPath, '--pin-root', `/sys/fs/bpf/${lab.prefix}inpod`, '--host-netns', 'none'], { env, stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      c.stderr.on('data', (d) => (err += d));
      c.once('exit', (code) => resolve({ code, err }));
    });
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/needs its own pod's name .*set POD_NAME and POD_NAMESPACE from the downward API .*--pod-name/);
  });

  it('without an API server (manifest directory) SIGTERM keeps inpod-cni; `inpod agent uninstall` removes it', async () => {
    await startAgent({ manifests: p('manifests') });
    expect(await terminate()).toBe(0);
    expect(agentLog).toMatch(/no API server \(manifest directory\).*inpod-cni stays installed/);
    expect(chained()).toBe(true);
    expect(binary()).toBe(true);
    const r = await inpod('agent', 'uninstall', '--cni-bin-dir', p('bin'), '--cni-conf-dir', p('net.d'));
    expect(r.code).toBe(0);
    expect(chained()).toBe(false);
    expect(binary()).toBe(false);
  });

  it('SIGTERM during an upgrade (the DaemonSet still schedules here) keeps inpod-cni, and running pods stay captured', async () => {
    await startAgent();
    const a = await runPod('mesh', 'a');
    expect(a.error).toBeUndefined();
    expect(await enrolled()).toContain(a.pod!.netnsPath);
    expect(await terminate()).toBe(0);
    expect(agentLog).toMatch(/inpod-agent still schedules to node node1: an upgrade or a reboot.*inpod-cni stays installed/);
    expect(chained()).toBe(true);
    expect(binary()).toBe(true);
    expect(await enrolled()).toContain(a.pod!.netnsPath);
    expect(await path(a.pod!)).toBe('proxy');
    // a mesh pod created before the next agent is up waits (its ADD fails, the runtime retries) instead of starting uncaptured
    const w = await runPod('mesh', 'w');
    expect(w.error).toBeDefined();
    await lab.node.removePod('w').catch(() => {});
    api.delete('pods', 'mesh', 'w');
  });

  it('SIGTERM on a node the DaemonSet no longer selects removes inpod-cni; running pods stay captured', async () => {
    await startAgent();
    const a = lab.node.pods.get('a')!;
    daemonSet({ nodeSelector: { 'inpod.io/mesh': 'enabled' } });
    expect(await terminate()).toBe(0);
    expect(agentLog).toMatch(/no longer schedules to node node1: nodeSelector inpod.io\/mesh=enabled.*inpod-cni removed/);
    expect(chained()).toBe(false);
    expect(binary()).toBe(false);
    expect(conflist().plugins.map((x) => x.type)).toEqual(['bridge']); // the node's own config, as it was
    expect(await enrolled()).toContain(a.netnsPath);
    expect(await path(a)).toBe('proxy');
    daemonSet({});
  });

  it('SIGTERM with the DaemonSet deleted removes inpod-cni: a pod started afterwards starts uncaptured, running pods keep their capture', async () => {
    await startAgent();
    const a = lab.node.pods.get('a')!;
    api.delete('daemonsets', NS, 'inpod-agent'); // kubectl delete -k deploy/: the DaemonSet goes, then its pods get SIGTERM
    expect(await terminate()).toBe(0);
    expect(agentLog).toMatch(/DaemonSet inpod-system\/inpod-agent is gone.*inpod-cni removed/);
    expect(chained()).toBe(false);
    expect(binary()).toBe(false);
    // a pod of an ambient namespace: no plugin asks for an agent, so it starts, uncaptured
    const b = await runPod('mesh', 'b');
    expect(b.error).toBeUndefined();
    expect(await enrolled()).not.toContain(b.pod!.netnsPath);
    expect(await path(b.pod!)).toBe('direct');
    expect(await enrolled()).toContain(a.netnsPath);
    expect(await path(a)).toBe('proxy');
  });
});
