/**
 * Issue 15, "probes reach the app": kubelet probes come from the node itself (its own sockets, in
 * the host netns), and under an ALLOW policy that admits nobody they must still reach the app,
 * unreported, while nothing else gets that pass: not a pod of the mesh, not a pod outside it whose
 * sockets the same hooks see, not a connection the node forwards from elsewhere even when the
 * node masquerades it to its own address. Istio does this with istio-cni's host rule (SNAT of
 * local sockets' connections to pods to 169.254.7.127, cni/pkg/iptables/iptables.go
 * AppendHostRules); the iptables backend installs that rule, the eBPF backend lets through the
 * exact tuple a node socket connected with (ARCHITECTURE.md, "Probes from the node").
 *
 * The simulated node's netns plays the host's (BackendOptions.hostNetns); "kubelet" is a process
 * in it, in the lab cgroup, as kubelet sits under the host's cgroup2 root where the programs are
 * attached on a real node.
 */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BackendName } from '../../ts/redirect/backend.js';
import { createBackend } from '../../ts/redirect/factory.js';
import { parseLocalConfig } from '../../ts/state/localconfig.js';
import { BpfMap, pinnedMapSpec } from '../../ts/native/index.js';
import { decodeTuple, encodeTuple } from '../../ts/native/structs.js';
import { PROBE_SOURCE } from '../../ts/istio.js';
import { TestMesh } from './mesh.js';
import { type PodShell, until } from '../netns/lab.js';
import { routedOutside, type Outside } from '../netns/outside.js';

const BACKENDS = (process.env.INPOD_BACKENDS?.split(',') ?? ['ebpf', 'iptables']) as BackendName[];

/** shop/server under an ALLOW policy with no rules: nobody is admitted (Istio's allow-nothing). */
function stateYaml(m: TestMesh): string {
  // ztunnel's local-config form: the policy is attached to the server by name (WorkloadSelector scope)
  return `
workloads:
  - {uid: u-server, name: server, namespace: shop, serviceAccount: web, workloadIps: ["${m.pods.server!.ip}"], protocol: HBONE, authorizationPolicies: [shop/allow-nothing]}
  - {uid: u-client, name: client, namespace: shop, serviceAccount: client, workloadIps: ["${m.pods.client!.ip}"], protocol: HBONE}
policies:
  - {name: allow-nothing, namespace: shop, scope: WorkloadSelector, action: Allow, dryRun: false, rules: []}
`;
}

async function mesh(backend: BackendName): Promise<{ m: TestMesh; kubelet: PodShell }> {
  const m = await TestMesh.create(backend, [
    { name: 'server', namespace: 'shop', serviceAccount: 'web' },
    { name: 'client', namespace: 'shop', serviceAccount: 'client' },
    { name: 'plain', namespace: 'other', serviceAccount: 'default', mesh: false },
  ], {}, { isHost: true });
  try {
    m.state.set(parseLocalConfig(stateYaml(m)));
    await m.sh.server!.listen({ port: 8080, tag: 'app' });
    return { m, kubelet: await m.lab.shell(m.lab.nodeNetnsPath, { inCgroup: true }) };
  } catch (e) {
    await m.close();
    throw e;
  }
}

/** Connections the proxy has counted as opened, summed over every series. */
async function opened(m: TestMesh): Promise<number> {
  const text = await m.zt.telemetry.registry.metrics();
  return text.split('\n').filter((l) => l.startsWith('istio_tcp_connections_opened_total{')).reduce((n, l) => n + Number(l.split(' ').at(-1)), 0);
}

/** ztunnel's access-log line of a connection that ended (ts/telemetry/accesslog.ts) */
const complete = (l: Record<string, unknown>): boolean => l.scope === 'access' && l.msg === 'connection complete';
const appAccepted = async (m: TestMesh) => m.sh.server!.accepted((await m.sh.server!.listenerByTag('app')).id);

/** A probe as kubelet sends it: connect from the node, one request, the answer, close. */
async function probe(m: TestMesh, kubelet: PodShell, port = 8080): Promise<{ reply: string; sport: number }> {
  const r = await kubelet.connect({ host: m.pods.server!.ip, port, send: 'GET /healthz', timeoutMs: 3000 });
  if (!r.ok) return { reply: `error:${r.error}`, sport: 0 };
  await kubelet.close(r.connId);
  return { reply: r.reply ?? '', sport: r.sockname.port };
}

describe.each(BACKENDS)('kubelet probes under an ALLOW policy that admits nobody, %s backend', (backend) => {
  let m: TestMesh;
  let kubelet: PodShell;
  let outside: Outside | undefined;
  beforeAll(async () => {
    ({ m, kubelet } = await mesh(backend));
  });
  afterAll(async () => {
    await outside?.destroy();
    await m?.close();
  });

  it('probes the app from the node as kubelet does: answered by the app, never counted or logged by the proxy', async () => {
    const [logFrom, openedBefore] = [m.records.length, await opened(m)];
    const p = await probe(m, kubelet);
    expect(p.reply).toBe('app:GET /healthz');
    // the proxy counts a connection opened before it would connect to the app: nothing was
    expect(await opened(m)).toBe(openedBefore);
    // the app saw the node's address (eBPF) or the probe source it was SNATed to (Istio's rule)
    expect((await appAccepted(m)).at(-1)!.peer.host).toBe(backend === 'ebpf' ? m.lab.node.gateway : PROBE_SOURCE.ipv4);
    // a denied connection after it, logged at its close: by then a line for the probe would be there too
    const r = await m.sh.plain!.connect({ host: m.pods.server!.ip, port: 8080, send: 'after', timeoutMs: 3000 });
    if (r.ok) await m.sh.plain!.close(r.connId);
    await until('the later connection to be logged', () => m.logs(logFrom, complete).length > 0, { timeoutMs: 5000 });
    expect(m.logs(logFrom, complete).map((l) => String(l['src.addr']).split(':')[0])).toEqual([m.pods.plain!.ip]);
  });

  it('a mesh pod under the same policy is denied over HBONE and never reaches the app', async () => {
    const [from, before] = [m.records.length, (await appAccepted(m)).length];
    const r = await m.sh.client!.connect({ host: m.pods.server!.ip, port: 8080, send: 'let me in', timeoutMs: 5000 });
    expect(r.ok ? r.reply : '').not.toMatch(/^app:/);
    await until('the inbound DENY line', () => m.logs(from, (l) => complete(l) && l.direction === 'inbound' && l.response_flags === 'DENY').length > 0, { timeoutMs: 5000 });
    expect(m.logs(from, (l) => complete(l) && l.direction === 'inbound')[0]).toMatchObject({ transport: 'hbone', response_flags: 'DENY' });
    expect((await appAccepted(m)).length).toBe(before);
  });

  it('a pod outside the mesh on the same node, its sockets in the same cgroup as kubelet\'s, is denied on 15006 and never reaches the app', async () => {
    const [from, before] = [m.records.length, (await appAccepted(m)).length];
    const r = await m.sh.plain!.connect({ host: m.pods.server!.ip, port: 8080, send: 'plain', timeoutMs: 5000 });
    expect(r.ok ? r.reply : '').not.toMatch(/^app:/);
    await until('the DENY line', () => m.logs(from, (l) => complete(l) && l.response_flags === 'DENY').length > 0, { timeoutMs: 5000 });
    expect(m.logs(from, complete)[0]).toMatchObject({ transport: 'plaintext', 'src.addr': expect.stringMatching(new RegExp(`^${m.pods.plain!.ip}:`)) });
    expect((await appAccepted(m)).length).toBe(before);
  });

  it('another node\'s connection forwarded by this node, masqueraded to the node\'s own address, is captured and denied', async () => {
    outside = await routedOutside(m.lab, { masquerade: true });
    const ext = await m.lab.shell(outside.netnsPath, { inCgroup: true });
    const [from, before] = [m.records.length, (await appAccepted(m)).length];
    const r = await ext.connect({ host: m.pods.server!.ip, port: 8080, send: 'GET /healthz', timeoutMs: 5000 });
    expect(r.ok ? r.reply : '').not.toMatch(/^app:/);
    await until('the DENY line', () => m.logs(from, (l) => complete(l) && l.response_flags === 'DENY').length > 0, { timeoutMs: 5000 });
    // from the very address the node's probes come from (under eBPF): the address is not what passes
    expect(m.logs(from, complete)[0]).toMatchObject({ transport: 'plaintext', 'src.addr': expect.stringMatching(new RegExp(`^${m.lab.node.gateway}:`)) });
    expect((await appAccepted(m)).length).toBe(before);
    ext.kill();
  });
});

describe('kubelet probes, what the eBPF backend keeps for them', () => {
  let m: TestMesh;
  let kubelet: PodShell;
  let own: BpfMap;
  const ownEntries = () => own.keys().map(decodeTuple).filter((t) => t.netns !== 1n).length;
  beforeAll(async () => {
    ({ m, kubelet } = await mesh('ebpf'));
    own = BpfMap.pinned(join(`/sys/fs/bpf/${m.lab.prefix}inpod`, 'inpod_own_conn'), pinnedMapSpec('inpod_own_conn'))!;
  });
  afterAll(async () => {
    own?.close();
    await m?.close();
  });

  it('leaves no entry behind: 200 probes answered and 200 refused by a closed port, the handshake map back at its baseline', async () => {
    const baseline = ownEntries();
    const server = m.pods.server!.ip;
    expect(await kubelet.repeat({ host: server, port: 8080, count: 200 })).toMatchObject({ tags: { app: 200 }, errors: {} });
    expect(await kubelet.repeat({ host: server, port: 8181, count: 200 })).toMatchObject({ tags: {}, errors: { ECONNREFUSED: 200 } });
    await until('inpod_own_conn to drain', () => ownEntries() === baseline, { timeoutMs: 5000 });
  });

  it('keeps an unanswered probe\'s entry while its SYN waits, and drops it when kubelet gives up', async () => {
    const baseline = ownEntries();
    execFileSync('nsenter', [`--net=${m.pods.server!.netnsPath}`, 'iptables', '-w', '-A', 'INPUT', '-p', 'tcp', '--dport', '8282', '-j', 'DROP'], { stdio: 'ignore' });
    const pending = kubelet.connect({ host: m.pods.server!.ip, port: 8282, timeoutMs: 1500 });
    await until('the probe to be recorded for the pod', () => own.keys().map(decodeTuple).some((t) => t.dip === m.pods.server!.ip && t.dport === 8282 && t.sip === m.lab.node.gateway));
    expect(await pending).toMatchObject({ ok: false, error: 'ETIMEDOUT' });
    await until('inpod_own_conn to drain', () => ownEntries() === baseline, { timeoutMs: 5000 });
  });

  it('captures the probe when the handshake map is full (fail closed): denied, never around the proxy', async () => {
    let n = 0;
    for (;; n++) {
      try {
        own.update(encodeTuple({ netns: 1n, sip: `10.${(n >> 16) & 255}.${(n >> 8) & 255}.${n & 255}`, dip: '10.0.0.1', sport: 1, dport: 1 }), Buffer.from([1]));
      } catch (e) {
        expect((e as { code?: string }).code).toBe('E2BIG');
        break;
      }
    }
    expect(n).toBeGreaterThan(1000);
    try {
      const before = (await appAccepted(m)).length;
      expect((await probe(m, kubelet)).reply).not.toMatch(/^app:/);
      expect((await appAccepted(m)).length).toBe(before);
    } finally {
      for (const k of own.keys()) if (decodeTuple(k).netns === 1n) own.delete(k);
    }
    expect((await probe(m, kubelet)).reply).toBe('app:GET /healthz'); // room again
  });

  it('captures the node\'s probes when no host netns is named, and lets them through once it is named again', async () => {
    const opts = { cgroupPath: m.lab.cgroupPath, pinRoot: `/sys/fs/bpf/${m.lab.prefix}inpod`, stateDir: m.dir };
    await (await createBackend('ebpf', opts)).install(); // a restart without --host-netns
    try {
      expect((await probe(m, kubelet)).reply).not.toMatch(/^app:/);
    } finally {
      await (await createBackend('ebpf', { ...opts, hostNetns: m.lab.nodeNetnsPath })).install();
    }
    expect((await probe(m, kubelet)).reply).toBe('app:GET /healthz');
  });
});

describe('kubelet probes, what the iptables backend keeps for them', () => {
  let m: TestMesh;
  const nodeRules = (): string[] =>
    execFileSync('nsenter', [`--net=${m.lab.nodeNetnsPath}`, 'iptables-save', '-t', 'nat'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).split('\n').filter((l) => l.startsWith('-A') && l.includes('ISTIO_POSTRT'));
  beforeAll(async () => {
    ({ m } = await mesh('iptables'));
  });
  afterAll(() => m?.close());

  it('keeps Istio\'s host rule for each enrolled pod, removes it with the pod, and the chain at uninstall', async () => {
    const server = m.pods.server!;
    const ruleFor = (ip: string) => `-A ISTIO_POSTRT -d ${ip}/32 -p tcp -m owner --socket-exists -j SNAT --to-source ${PROBE_SOURCE.ipv4}`;
    const rule = ruleFor(server.ip);
    // Istio's rule (testdata/hostprobe.golden) with the pod IP in place of its ipset; the pod outside the mesh has none
    expect(nodeRules()).toEqual(['-A POSTROUTING -j ISTIO_POSTRT', rule, ruleFor(m.pods.client!.ip)]);
    await m.backend.unenroll(server.netnsPath);
    expect(nodeRules()).not.toContain(rule);
    await m.backend.enroll(server.netnsPath);
    expect(nodeRules().filter((l) => l === rule)).toHaveLength(1);
    await m.backend.uninstall();
    expect(nodeRules()).toEqual([]);
    await m.backend.enroll(server.netnsPath); // as it was, for close()
  });
});
