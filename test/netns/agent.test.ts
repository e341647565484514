/**
 * The node agent as a process, with the fake API server and the real client-node informers, the
 * real CNI chain (bridge + host-local + inpod-cni) run as a container runtime runs it, the eBPF
 * backend, and the proxy process connected over ZDS.
 */
import { existsSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RedirectBackend } from '../../ts/redirect/backend.js';
import type { FakeApiServer } from '../fixtures/apiserver.js';
import { type Lab, type LabPod, type PodShell } from './lab.js';
import { Rig } from './rig.js';
import { runCni } from '../cni/run.js';

const NODE = 'node1';
const REDIRECTION = 'ambient.istio.io/redirection';

describe('inpod agent', () => {
  let rig: Rig;
  let lab: Lab;
  let api: FakeApiServer;
  let backend: RedirectBackend;
  let peer: LabPod;
  let peerSh: PodShell;
  const until = (what: string, cond: () => boolean | Promise<boolean>, timeoutMs?: number): Promise<void> => rig.until(what, cond, timeoutMs);
  const enrolledNetns = async (): Promise<string[]> => (await backend.list()).map((x) => x.netns).sort();
  let bNetns = ''; // b as the agent knows it: by its process (its ADD never reached the agent)
  /**
   * Which way a connection from `pod` to the peer (outside the mesh) went, judged by what the peer
   * accepted: the pod's own socket ('direct'), or another one from the pod's address, which only
   * the proxy makes ('proxy': it passes the connection through from inside the pod's netns).
   */
  async function path(sh: PodShell, pod: LabPod): Promise<'proxy' | 'direct'> {
    const { id } = await peerSh.listenerByTag('peer');
    const before = (await peerSh.accepted(id)).length;
    const r = await sh.connect({ host: peer.ip, port: 80, send: 'x', timeoutMs: 3000 });
    if (!r.ok) throw new Error(`${pod.name} -> peer: ${r.error}\n${rig.logs()}`);
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
    rig = await Rig.create({ tag: 'ag', cluster: {} });
    ({ lab, backend } = rig);
    api = rig.api!;
    api.apply('namespaces', { metadata: { name: 'plain' } });
    peer = await lab.addPod('peer');
    peerSh = await lab.shell(peer.netnsPath, { inCgroup: false });
    await peerSh.listen({ port: 80, tag: 'peer' });
    await rig.startProxy();
    await rig.startAgent();
    await rig.ready();
  }, 60_000);

  afterAll(async () => {
    await rig?.destroy();
  });

  it('ADD blocks until a pod of an ambient namespace is captured and handed to the proxy; the pod is annotated', async () => {
    const a = await rig.runPod('mesh', 'a');
    expect(a.error).toBeUndefined();
    expect(await enrolledNetns()).toContain(a.pod!.netnsPath); // already when ADD returned
    expect(rig.proxy!.log).toMatch(/pod listeners open.*"pod":"a"|"pod":"a".*pod listeners open/);
    await until('the annotation', () => api.get('pods', 'mesh', 'a')?.metadata.annotations?.[REDIRECTION] === 'enabled');
    const sh = await lab.shell(a.pod!.netnsPath, { inCgroup: true });
    expect(await path(sh, a.pod!)).toBe('proxy');
  });

  it('leaves pods of other namespaces, opted-out pods and sidecar pods alone', async () => {
    const b = await rig.runPod('plain', 'b');
    const c = await rig.runPod('mesh', 'c', { labels: { 'istio.io/dataplane-mode': 'none' } });
    const d = await rig.runPod('mesh', 'd', { annotations: { 'sidecar.istio.io/status': '{"containers":["istio-proxy"]}' } });
    for (const x of [b, c, d]) expect(x.error).toBeUndefined();
    bNetns = await rig.pause(b.uid, b.pod!.netnsPath);
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
    const gNetns = await rig.pause(uid, g.netnsPath);
    api.apply('pods', { metadata: { name: 'g', namespace: 'mesh', uid }, spec: { nodeName: NODE, serviceAccountName: 'default', containers: [{ name: 'app' }] } } as never);
    await until('g to be enrolled', async () => (await enrolledNetns()).includes(gNetns));
    await until('g annotated', () => api.get('pods', 'mesh', 'g')?.metadata.annotations?.[REDIRECTION] === 'enabled');
    const sh = await lab.shell(g.netnsPath, { inCgroup: true });
    expect(await path(sh, g)).toBe('proxy');
  });

  it('survives the API server going away and coming back (with a compacted history)', async () => {
    const b = lab.node.pods.get('b')!;
    const mark = rig.agent!.log.length;
    await api.stop();
    api.apply('namespaces', { metadata: { name: 'plain', labels: { 'istio.io/dataplane-mode': 'ambient' } } });
    api.compact(); // the agent's resourceVersion is now too old: 410 Gone, relist
    // the server comes back only once the agent has found it gone (its watch failed)
    await until('the agent to find the API server gone', () => /watch failed/.test(rig.agent!.log.slice(mark)));
    await api.start(api.port);
    await until('b to be enrolled after the API server came back', async () => (await enrolledNetns()).includes(bNetns), 30_000);
  });

  it('fails ADD with a CNI error while the proxy is down, and succeeds once it is back', async () => {
    await rig.proxy!.stop();
    await until('the agent to notice', () => /proxy disconnected|proxy connection closed/.test(rig.agent!.log));
    const e = await rig.runPod('mesh', 'e');
    expect(JSON.parse(e.error!)).toMatchObject({ code: 11, msg: expect.stringMatching(/mesh\/e was not added to the mesh: no proxy is connected/) });
    // the runtime tears the failed sandbox down (DEL) and retries with a new one
    await rig.delPod('mesh', 'e', e.uid);
    await lab.node.removePod('e');
    await rig.startProxy();
    await until('the proxy to take the snapshot', () => /snapshot sent/.test(rig.agent!.log.split('proxy disconnected').at(-1) ?? ''));
    const again = await rig.runPod('mesh', 'e');
    expect(again.error).toBeUndefined();
    expect(await enrolledNetns()).toContain(lab.node.pods.get('e')!.netnsPath);
  });

  it('answers bad input with clear errors and carries on: a vanished netns, an API object missing fields', async () => {
    // the plugin as the agent installed it, as a runtime runs it
    const gone = await runCni(rig.p('bin/inpod-cni'), {
      CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'x', CNI_NETNS: `/run/netns/${lab.prefix}vanished`, CNI_IFNAME: 'eth0',
      CNI_ARGS: 'K8S_POD_NAMESPACE=mesh;K8S_POD_NAME=ghost;K8S_POD_UID=ghost-uid',
    }, JSON.stringify({ cniVersion: '1.0.0', name: 'x', type: 'inpod-cni', agentSocket: rig.p('plugin.sock'), meshView: rig.p('state/meshview.json'), timeoutSeconds: 10, prevResult: { cniVersion: '1.0.0', ips: [] } }));
    expect(gone.code).toBe(1);
    expect(JSON.parse(gone.stdout).msg).toMatch(/netns \/run\/netns\/\w+vanished of pod mesh\/ghost does not exist/);
    // a pod object of this node with nothing else: no containers, service account, labels or IPs
    api.apply('pods', { metadata: { name: 'bare', namespace: 'mesh' }, spec: { nodeName: NODE } } as never);
    // the next pod comes after it on the same watch: the agent has taken the bare one when it serves this one
    const ok = await rig.runPod('mesh', 'f');
    expect(ok.error).toBeUndefined();
    expect(await enrolledNetns()).toContain(ok.pod!.netnsPath);
    expect(rig.agent!.child.exitCode).toBeNull();
  });

  it('reports readiness and its metrics', async () => {
    expect((await fetch(`http://127.0.0.1:${rig.agent!.healthPort}/healthz/ready`)).status).toBe(200);
    const m = await (await fetch(`http://127.0.0.1:${rig.agent!.healthPort}/metrics`)).text();
    const enrolled = Number(/^inpod_agent_pods_enrolled (\d+)/m.exec(m)?.[1]);
    expect(enrolled).toBe((await backend.list()).length);
    expect(m).toMatch(/inpod_agent_enroll_seconds_count [1-9]/);
  });

  it('DEL twice is fine', async () => {
    const uid = api.get('pods', 'mesh', 'c')!.metadata.uid!;
    for (let i = 0; i < 2; i++) await rig.delPod('mesh', 'c', uid);
  });

  it('a pod whose netns path went away without a DEL is unenrolled through the netns the agent holds: nothing of it stays in the kernel', async () => {
    const h = await rig.runPod('mesh', 'h');
    expect(h.error).toBeUndefined();
    const cookie = (await backend.list()).find((x) => x.netns === h.pod!.netnsPath)!.cookie;
    // the runtime tears the sandbox down (veth, netns path) and its inpod-cni DEL never reaches the agent
    await lab.node.removePod('h');
    expect(existsSync(h.pod!.netnsPath)).toBe(false);
    // the next change of the pod makes the agent look at it again
    const cur = api.get('pods', 'mesh', 'h')!;
    api.apply('pods', { ...cur, metadata: { ...cur.metadata, labels: { ...cur.metadata.labels, touched: 'yes' } } } as never);
    await until('h to be unenrolled', async () => !(await backend.list()).some((x) => x.cookie === cookie));
    const m = await (await fetch(`http://127.0.0.1:${rig.agent!.healthPort}/metrics`)).text();
    expect(Number(/^inpod_agent_pods_enrolled (\d+)/m.exec(m)?.[1])).toBe((await backend.list()).length);
  });

  it('after a SIGKILL the capture stays, traffic flows, and the new agent reconciles without enrolling twice', async () => {
    const a = lab.node.pods.get('a')!;
    const e = lab.node.pods.get('e')!;
    const eUid = api.get('pods', 'mesh', 'e')!.metadata.uid!;
    await rig.agent!.stop();
    const sh = await lab.shell(a.netnsPath, { inCgroup: true });
    expect(await path(sh, a)).toBe('proxy'); // kernel state and proxy carry on
    // e is deleted while the agent is away (its CNI DEL cannot reach the agent and still succeeds)
    await rig.delPod('mesh', 'e', eUid);
    api.delete('pods', 'mesh', 'e');
    await lab.node.removePod('e');
    await rig.startAgent();
    await until('the new agent to be ready', () => /agent ready/.test(rig.agent!.log));
    const list = await backend.list();
    expect(list.map((x) => x.netns)).not.toContain(e.netnsPath);
    expect(list.filter((x) => x.netns === a.netnsPath)).toHaveLength(1);
    expect(await path(sh, a)).toBe('proxy');
  });

  it('reads the netns records of an agent from before sandboxes: a restart after the upgrade keeps running pods captured', async () => {
    const a = lab.node.pods.get('a')!;
    const uid = api.get('pods', 'mesh', 'a')!.metadata.uid!;
    await rig.agent!.stop();
    // what the agent before sandboxes wrote: one record per pod uid, no netns identity
    const records = rig.p('state/pods');
    for (const f of readdirSync(records)) if (f.startsWith(`${encodeURIComponent(uid)}@`)) rmSync(join(records, f));
    writeFileSync(join(records, `${encodeURIComponent(uid)}.json`), JSON.stringify({ uid, namespace: 'mesh', name: 'a', netns: a.netnsPath }));
    await rig.startAgent();
    await until('the upgraded agent to be ready', () => /agent ready/.test(rig.agent!.log));
    expect((await backend.list()).filter((x) => x.netns === a.netnsPath)).toHaveLength(1);
    const sh = await lab.shell(a.netnsPath, { inCgroup: true });
    expect(await path(sh, a)).toBe('proxy');
    expect(existsSync(join(records, `${encodeURIComponent(uid)}.json`))).toBe(false);
    expect(readdirSync(records).filter((f) => f.startsWith(`${encodeURIComponent(uid)}@`))).toHaveLength(1);
    // and the migrated record still names the sandbox for its DEL
    await rig.delPod('mesh', 'a', uid);
    expect((await backend.list()).map((x) => x.netns)).not.toContain(a.netnsPath);
  });
});
