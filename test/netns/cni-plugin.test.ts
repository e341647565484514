/**
 * inpod-cni on a node (issue 15): the static plugin the agent installs runs alone in an empty
 * chroot; pods outside the mesh start with the agent down and never touch its socket; a pod of
 * the mesh fails closed while the agent is down; a pod that started uncaptured because the mesh
 * view was behind is enrolled live. The agent is the real process (fake API server, eBPF
 * backend, the proxy connected over ZDS), pods go through the real chain (bridge + host-local +
 * inpod-cni) as a runtime runs it. As istio-cni: cni/pkg/plugin/plugin.go (CmdAdd: excluded
 * namespaces and pods outside the mesh never reach the agent; an unreachable agent is an error).
 */
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmdirSync, rmSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCniPlugin } from '../../ts/sim/node.js';
import type { FakeApiServer } from '../fixtures/apiserver.js';
import { FakeAgent, runCni } from '../cni/run.js';
import type { Lab, LabPod, PodShell } from './lab.js';
import { Rig } from './rig.js';

const NODE = 'node1';
const AMBIENT = { 'istio.io/dataplane-mode': 'ambient' };

describe('inpod-cni on a node', () => {
  let rig: Rig;
  let lab: Lab;
  let api: FakeApiServer;
  let peer: LabPod;
  let peerSh: PodShell;
  const until = (what: string, cond: () => boolean | Promise<boolean>, timeoutMs?: number): Promise<void> => rig.until(what, cond, timeoutMs);
  const enrolled = async (): Promise<string[]> => (await rig.backend.list()).map((x) => x.netns);
  /** The agent annotates a pod once the proxy serves it. */
  const annotated = (ns: string, name: string): boolean => api.get('pods', ns, name)?.metadata.annotations?.['ambient.istio.io/redirection'] === 'enabled';

  // its own pod's namespace: with kube-system, the namespaces excluded by default
  const startAgent = () => rig.startAgent({ cniSocket: 'run/plugin.sock', args: ['--mesh-view', rig.p('run/meshview.json')] });
  const pod = (ns: string, name: string, labels?: Record<string, string>) => rig.pod(ns, name, { labels });
  /** ADD through the whole chain, as the runtime; the CNI error output when it fails. */
  const runPod = (ns: string, name: string, uid: string): Promise<{ pod?: LabPod; error?: string }> => rig.runPod(ns, name, { uid });
  /** Which way a connection from the pod to the peer went, by what the peer accepted (as test/netns/agent.test.ts). */
  async function path(pod: LabPod): Promise<'proxy' | 'direct'> {
    const sh = await lab.shell(pod.netnsPath, { inCgroup: true });
    const { id } = await peerSh.listenerByTag('peer');
    const before = (await peerSh.accepted(id)).length;
    const r = await sh.connect({ host: peer.ip, port: 80, send: 'x', timeoutMs: 3000 });
    if (!r.ok) throw new Error(`${pod.name} -> peer: ${r.error}\n${rig.log.slice(-2000)}`);
    await sh.close(r.connId);
    const seen = (await peerSh.accepted(id)).slice(before)[0]!.peer;
    return seen.host === r.sockname.host && seen.port === r.sockname.port ? 'direct' : 'proxy';
  }

  beforeAll(async () => {
    rig = await Rig.create({ tag: 'cp', cluster: {} });
    lab = rig.lab;
    api = rig.api!;
    for (const d of ['run', 'state']) mkdirSync(rig.p(d));
    for (const [n, labels] of [['plain', undefined], ['late', undefined], ['kube-system', AMBIENT], ['inpod-system', undefined]] as const) {
      api.apply('namespaces', { metadata: { name: n, labels } });
    }
    peer = await lab.addPod('peer');
    peerSh = await lab.shell(peer.netnsPath, { inCgroup: false });
    await peerSh.listen({ port: 80, tag: 'peer' });
    await rig.startProxy();
    await startAgent();
    await rig.ready(60_000);
  }, 90_000);

  afterAll(async () => {
    await rig?.destroy();
  });

  it('runs as the agent installed it alone in an empty chroot: VERSION, then ADD, CHECK and DEL of a mesh pod with only the agent\'s socket dir bind-mounted in', async () => {
    const root = mkdtempSync(join(tmpdir(), `${lab.prefix}chroot`));
    try {
      // the control: a dynamically linked program cannot run there (no loader, no libc)
      copyFileSync('/bin/true', join(root, 'true'));
      expect((await runCni(['chroot', root, '/true'], {})).code).not.toBe(0);
      rmSync(join(root, 'true'));
      copyFileSync(rig.p('bin/inpod-cni'), join(root, 'inpod-cni'));
      expect(readdirSync(root)).toEqual(['inpod-cni']); // no libc, no loader, no Node
      const version = await runCni(['chroot', root, '/inpod-cni'], { CNI_COMMAND: 'VERSION' });
      expect(version.code, version.stdout + version.stderr).toBe(0);
      expect(JSON.parse(version.stdout)).toEqual({ cniVersion: '1.0.0', supportedVersions: ['0.3.0', '0.3.1', '0.4.0', '1.0.0'] });

      // the agent's run dir (socket and mesh view) at /run inside, in a mount namespace of its own that goes with the process
      mkdirSync(join(root, 'run'));
      const inChroot = ['unshare', '--mount', '--propagation', 'private', 'sh', '-c', 'mount --bind "$1" "$2/run" && exec chroot "$2" /inpod-cni', 'sh', rig.p('run'), root];
      pod('mesh', 'cx');
      const uid = api.get('pods', 'mesh', 'cx')!.metadata.uid!;
      const cx = await lab.addPod('cx'); // the pod network (bridge) first, as the chain before inpod-cni
      const prevResult = { cniVersion: '1.0.0', interfaces: [{ name: 'eth0', sandbox: cx.netnsPath }], ips: [{ address: `${cx.ip}/24`, interface: 0 }], routes: [{ dst: '0.0.0.0/0' }], dns: {} };
      const env = { CNI_CONTAINERID: cx.containerId, CNI_NETNS: cx.netnsPath, CNI_IFNAME: 'eth0', CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=mesh;K8S_POD_NAME=cx;K8S_POD_UID=${uid}` };
      const conf = { cniVersion: '1.0.0', name: 'k8s', type: 'inpod-cni', agentSocket: '/run/plugin.sock', meshView: '/run/meshview.json', prevResult };
      const add = await runCni(inChroot, { ...env, CNI_COMMAND: 'ADD' }, JSON.stringify(conf));
      expect(add.code, add.stdout + add.stderr).toBe(0);
      expect(JSON.parse(add.stdout)).toEqual(prevResult);
      expect(await enrolled()).toContain(cx.netnsPath); // captured before ADD returned
      expect(await path(cx)).toBe('proxy');
      const check = await runCni(inChroot, { ...env, CNI_COMMAND: 'CHECK' }, JSON.stringify(conf));
      expect(check, check.stderr).toMatchObject({ code: 0, stdout: '' });
      const del = await runCni(inChroot, { ...env, CNI_COMMAND: 'DEL' }, JSON.stringify(conf));
      expect(del).toMatchObject({ code: 0, stdout: '', stderr: '' });
      expect(await enrolled()).not.toContain(cx.netnsPath);
      expect(readdirSync(join(root, 'run'))).toEqual([]); // the bind mount went with its namespace
    } finally {
      // never recursive: were the bind mount still there, its files are the agent's
      rmSync(join(root, 'inpod-cni'), { force: true });
      rmSync(join(root, 'true'), { force: true });
      if (existsSync(join(root, 'run'))) rmdirSync(join(root, 'run'));
      rmdirSync(root);
    }
  });

  describe('with the agent down', () => {
    let recorder: FakeAgent;

    beforeAll(async () => {
      await rig.agent!.stop(); // as a crash or an eviction: no shutdown logic runs
      // something listening where the agent was, to see whether any plugin run knocks
      unlinkSync(rig.p('run/plugin.sock'));
      recorder = new FakeAgent(rig.p('run/plugin.sock'));
      await recorder.listen();
    });

    it('starts pods of excluded namespaces (kube-system, even labelled ambient, and inpod-system) and pods outside the mesh: prevResult unchanged, nothing reaches the agent\'s socket', async () => {
      for (const [ns, name] of [['kube-system', 'dns'], ['inpod-system', 'agent-x'], ['plain', 'web']] as const) {
        const uid = pod(ns, name).metadata.uid!;
        const r = await runPod(ns, name, uid);
        expect(r.error, `${ns}/${name}`).toBeUndefined();
        expect(r.pod!.ip).toMatch(/^10\.200\./);
      }
      // the result the runtime gets is the previous plugin's, byte for byte what it parses to
      const prevResult = { cniVersion: '1.0.0', interfaces: [{ name: 'eth0', mac: '0a:58:0a:c8:00:05', sandbox: '/var/run/netns/x' }], ips: [{ address: '10.200.0.5/24', gateway: '10.200.0.1', interface: 0 }], routes: [{ dst: '0.0.0.0/0', gw: '10.200.0.1' }], dns: { nameservers: ['10.96.0.10'] } };
      const entry = rig.conflist().plugins.find((x) => x.type === 'inpod-cni')!;
      for (const ns of ['kube-system', 'plain']) {
        const out = await runCniPlugin('inpod-cni', 'ADD', { cniVersion: '1.0.0', name: 'k8s', ...entry, prevResult }, {
          CNI_CONTAINERID: 'c1', CNI_NETNS: lab.node.pods.get('web')!.netnsPath, CNI_IFNAME: 'eth0', CNI_ARGS: `K8S_POD_NAMESPACE=${ns};K8S_POD_NAME=web;K8S_POD_UID=${api.get('pods', 'plain', 'web')!.metadata.uid}`,
        }, lab.node.nodeNetns, rig.cniPath());
        expect(out).toEqual(prevResult);
      }
      expect(recorder.connections).toBe(0);
      expect(await enrolled()).not.toContain(lab.node.pods.get('web')!.netnsPath);
    });

    it('fails ADD of a pod of the mesh with a CNI error naming the cause (fail closed), and starts a pod of a namespace labelled meanwhile uncaptured (the view is behind)', async () => {
      await recorder.close();
      const m = pod('mesh', 'm1');
      const r = await runPod('mesh', 'm1', m.metadata.uid!);
      expect(JSON.parse(r.error!)).toMatchObject({
        code: 11,
        msg: expect.stringMatching(/pod mesh\/m1 was not added to the mesh: the inpod agent is not running \(no listener on .*plugin\.sock\); is the inpod agent DaemonSet up on this node\?; the runtime will retry/),
        details: expect.stringMatching(/namespace mesh in the mesh/),
      });
      // the runtime tears the failed sandbox down and will retry
      await rig.delPod('mesh', 'm1', m.metadata.uid!);
      await lab.node.removePod('m1');

      api.apply('namespaces', { metadata: { name: 'late', labels: AMBIENT } });
      const l = pod('late', 'l1');
      const started = await runPod('late', 'l1', l.metadata.uid!);
      expect(started.error).toBeUndefined();
      expect(await path(started.pod!)).toBe('direct');
    });

    it('once the agent is back: the pod that started uncaptured is enrolled live, and the mesh pod\'s retry starts captured', async () => {
      const l1 = lab.node.pods.get('l1')!;
      const l1Netns = await rig.pause(api.get('pods', 'late', 'l1')!.metadata.uid!, l1.netnsPath);
      await startAgent();
      await until('l1 enrolled live', async () => (await enrolled()).includes(l1Netns), 30_000);
      await until('l1 served by the proxy (annotated)', () => annotated('late', 'l1'));
      await until('the proxy to take the new agent\'s snapshot', () => /snapshot sent/.test(rig.agent!.log), 30_000);
      expect(await path(l1)).toBe('proxy');
      const again = await runPod('mesh', 'm1', api.get('pods', 'mesh', 'm1')!.metadata.uid!);
      expect(again.error).toBeUndefined();
      expect(await enrolled()).toContain(again.pod!.netnsPath);
      expect(await path(again.pod!)).toBe('proxy');
    });
  });

  it('with the agent up, a pod whose own ambient label the view has not seen yet starts uncaptured without asking the agent, then is enrolled live', async () => {
    await until('the agent ready', () => /agent ready/.test(rig.agent!.log));
    const uid = `${lab.prefix}-0000-own`;
    // the runtime's ADD comes before the agent has seen the pod (its namespace is outside the mesh)
    const r = await runPod('plain', 'own', uid);
    expect(r.error).toBeUndefined();
    expect(await path(r.pod!)).toBe('direct');
    expect(readdirSync(rig.p('state/pods')).some((f) => f.startsWith(encodeURIComponent(uid)))).toBe(false); // the agent never heard of it
    const own = await rig.pause(uid, r.pod!.netnsPath);
    api.apply('pods', { metadata: { name: 'own', namespace: 'plain', uid, labels: AMBIENT }, spec: { nodeName: NODE, serviceAccountName: 'default', containers: [{ name: 'app' }] } } as never);
    await until('own enrolled live', async () => (await enrolled()).includes(own));
    await until('own served by the proxy (annotated)', () => annotated('plain', 'own'));
    expect(await path(r.pod!)).toBe('proxy');
    await until('the view to know it', () => (JSON.parse(readFileSync(rig.p('run/meshview.json'), 'utf8')) as { pods: Record<string, { mesh: boolean }> }).pods['plain/own']?.mesh === true);
  });
});
