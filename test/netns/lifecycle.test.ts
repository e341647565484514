/**
 * Uninstall and upgrade as istio-cni (istio cni/pkg/nodeagent/server.go ShouldStopCleanup): the
 * agent as a process with the fake API server holding its DaemonSet, its own pod and its node,
 * the real CNI chain (bridge + host-local + inpod-cni), the eBPF backend and the proxy. On SIGTERM
 * the agent removes inpod-cni (entry and binary) only when its DaemonSet is gone or no longer
 * schedules to the node; running pods keep their capture either way.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FakeApiServer } from '../fixtures/apiserver.js';
import { CLI, inpod } from '../cli.js';
import type { Lab, LabPod, PodShell } from './lab.js';
import { Rig } from './rig.js';

const NODE = 'node1';
const NS = 'inpod-system';
const SELF = 'inpod-agent-q8x2z';

describe('agent shutdown: uninstall and upgrade as istio-cni', () => {
  let rig: Rig;
  let lab: Lab;
  let api: FakeApiServer;
  let peer: LabPod;
  let peerSh: PodShell;
  const chained = (): boolean => rig.conflist().plugins.some((x) => x.type === 'inpod-cni');
  const binary = (): boolean => existsSync(rig.p('bin/inpod-cni'));
  const enrolled = async (): Promise<string[]> => (await rig.backend.list()).map((x) => x.netns);
  const agentLog = (): string => rig.agent!.log;

  /** Starts the agent (Kubernetes mode unless `manifests`) and waits until it is ready and has chained inpod-cni. */
  async function startAgent(o: { manifests?: string } = {}): Promise<void> {
    await rig.startAgent(o.manifests ? { manifests: o.manifests, stateDir: 'mstate' } : { self: { name: SELF, namespace: NS } });
    await rig.ready();
  }
  /** SIGTERM, as the kubelet stops the pod; resolves with the exit code once the agent is gone. */
  const terminate = (): Promise<number | null> => rig.agent!.stop('SIGTERM');
  const runPod = (ns: string, name: string): Promise<{ pod?: LabPod; error?: string }> => rig.runPod(ns, name);
  /** 'proxy' when the peer accepted a connection other than the pod's own socket (the proxy's passthrough). */
  async function path(pod: LabPod): Promise<'proxy' | 'direct'> {
    const sh = await lab.shell(pod.netnsPath, { inCgroup: true });
    try {
      const { id } = await peerSh.listenerByTag('peer');
      const before = (await peerSh.accepted(id)).length;
      const r = await sh.connect({ host: peer.ip, port: 80, send: 'x', timeoutMs: 3000 });
      if (!r.ok) throw new Error(`${pod.name} -> peer: ${r.error}\n${rig.logs()}`);
      await sh.close(r.connId);
      const seen = (await peerSh.accepted(id)).slice(before)[0]!.peer;
      return seen.host === r.sockname.host && seen.port === r.sockname.port ? 'direct' : 'proxy';
    } finally {
      sh.kill();
    }
  }
  const daemonSet = (spec: object): void => void api.apply('daemonsets', { metadata: { name: 'inpod-agent', namespace: NS }, spec: { template: { spec: { hostNetwork: true, tolerations: [{ operator: 'Exists' }], ...spec } } } } as never);

  beforeAll(async () => {
    rig = await Rig.create({ tag: 'lc', cluster: {} });
    lab = rig.lab;
    api = rig.api!;
    mkdirSync(rig.p('manifests'));
    api.apply('namespaces', { metadata: { name: NS } });
    api.apply('nodes', { metadata: { name: NODE, labels: { 'kubernetes.io/os': 'linux', 'kubernetes.io/hostname': NODE } } });
    daemonSet({});
    const ds = api.get('daemonsets', NS, 'inpod-agent')!;
    // the agent's own pod, as the DaemonSet controller makes it: a controller reference to the DaemonSet
    api.apply('pods', { metadata: { name: SELF, namespace: NS, ownerReferences: [{ apiVersion: 'apps/v1', kind: 'DaemonSet', name: 'inpod-agent', uid: ds.metadata.uid, controller: true, blockOwnerDeletion: true }] }, spec: { nodeName: NODE } });
    peer = await lab.addPod('peer');
    peerSh = await lab.shell(peer.netnsPath, { inCgroup: false });
    await peerSh.listen({ port: 80, tag: 'peer' });
    await rig.startProxy();
  }, 60_000);

  afterAll(async () => {
    await rig?.destroy();
  });

  it('refuses to start in Kubernetes mode without its own pod name, naming the downward API fix', async () => {
    const { POD_NAME: _n, POD_NAMESPACE: _ns, ...env } = process.env;
    const r = await new Promise<{ code: number | null; err: string }>((resolve) => {
      const c = spawn('node', [CLI, 'agent', '--kubeconfig', rig.p('kubeconfig'), '--node', NODE, '--cgroup', lab.cgroupPath, '--pin-root', `/sys/fs/bpf/${lab.prefix}inpod`, '--host-netns', 'none'], { env, stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      c.stderr.on('data', (d) => (err += d));
      c.once('exit', (code) => resolve({ code, err }));
    });
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/needs its own pod's name .*set POD_NAME and POD_NAMESPACE from the downward API .*--pod-name/);
  });

  it('without an API server (manifest directory) SIGTERM keeps inpod-cni; `inpod agent uninstall` removes it', async () => {
    await startAgent({ manifests: rig.p('manifests') });
    expect(await terminate()).toBe(0);
    expect(agentLog()).toMatch(/no API server \(manifest directory\).*inpod-cni stays installed/);
    expect(chained()).toBe(true);
    expect(binary()).toBe(true);
    const r = await inpod('agent', 'uninstall', '--cni-bin-dir', rig.p('bin'), '--cni-conf-dir', rig.p('net.d'));
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
    expect(agentLog()).toMatch(/inpod-agent still schedules to node node1: an upgrade or a reboot.*inpod-cni stays installed/);
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
    expect(agentLog()).toMatch(/no longer schedules to node node1: nodeSelector inpod.io\/mesh=enabled.*inpod-cni removed/);
    expect(chained()).toBe(false);
    expect(binary()).toBe(false);
    expect(rig.conflist().plugins.map((x) => x.type)).toEqual(['bridge']); // the node's own config, as it was
    expect(await enrolled()).toContain(a.netnsPath);
    expect(await path(a)).toBe('proxy');
    daemonSet({});
  });

  it('SIGTERM with the DaemonSet deleted removes inpod-cni: a pod started afterwards starts uncaptured, running pods keep their capture', async () => {
    await startAgent();
    const a = lab.node.pods.get('a')!;
    api.delete('daemonsets', NS, 'inpod-agent'); // kubectl delete -k deploy/: the DaemonSet goes, then its pods get SIGTERM
    expect(await terminate()).toBe(0);
    expect(agentLog()).toMatch(/DaemonSet inpod-system\/inpod-agent is gone.*inpod-cni removed/);
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
