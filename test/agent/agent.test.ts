/**
 * The agent with a fake backend, a fake cluster source, a fake ZDS server, a fake /proc and a
 * timer fired by hand: what it captures, serves and annotates for CNI and cluster events, how
 * often it opens a pod's netns, how it retries (as istio-cni's informer queue: retryable
 * failures again with backoff, others not; cni/pkg/nodeagent/informers.go), and what it keeps
 * after a restart. The same agent against the kernel and a real proxy: test/netns/agent.test.ts.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Agent } from '../../ts/agent/agent.js';
import { MeshError } from '../../ts/util/errors.js';
import { FakeBackend, FakeNetnsTable, FakeProc, FakeSource, FakeZds, ManualTimer } from './fakes.js';
import { until as untilFor } from '../netns/lab.js';

describe('the agent, with a fake backend, source and ZDS', () => {
  let dir: string;
  let table: FakeNetnsTable;
  let backend: FakeBackend;
  let source: FakeSource;
  let zds: FakeZds;
  let proc: FakeProc;
  let timer: ManualTimer;
  let agents: Agent[];
  let log: { msg: string; [k: string]: unknown }[];

  /** A netns at a new path (a file in the test's directory). */
  const netns = (name: string): string => {
    const path = join(dir, name);
    writeFileSync(path, '');
    table.add(path);
    return path;
  };
  const uidOf = (ns: string, name: string): string => source.pod(ns, name)!.metadata!.uid!;
  const add = (ns: string, name: string, path: string, containerId = `c-${name}`) =>
    agents[0]!.cniAdd({ podNamespace: ns, podName: name, podUid: source.pod(ns, name)?.metadata?.uid ?? '', netns: path, containerId, ips: [] });
  const del = (ns: string, name: string, path: string, containerId: string) =>
    agents[0]!.cniDel({ podNamespace: ns, podName: name, podUid: uidOf(ns, name), netns: path, containerId, ips: [] });
  const until = (what: string, cond: () => boolean): Promise<void> => untilFor(what, cond, { timeoutMs: 2000, context: () => `log: ${JSON.stringify(log.slice(-5))}` });
  const logged = (msg: string): number => log.filter((l) => l.msg === msg).length;
  async function metric(name: string): Promise<number> {
    const m = new RegExp(`^${name} (\\d+)`, 'm').exec(await agents[0]!.registry.metrics());
    return Number(m?.[1] ?? NaN);
  }
  async function startAgent(): Promise<Agent> {
    const a = new Agent({
      source, backend, stateDir: join(dir, 'state'), zdsPath: '/unused', pluginSocket: join(dir, `plugin${agents.length}.sock`), podWaitMs: 0,
      zds: zds.factory, openNetns: table.opener, netnsAddrs: table.addresses, proc, bootId: 'boot-1', retry: { minMs: 100, maxMs: 400, timer: timer.timer },
      log: pino({ level: 'info' }, { write: (s: string) => log.push(JSON.parse(s)) }),
    });
    agents.unshift(a);
    await a.start();
    zds.connect();
    return a;
  }

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'inpod-agent-'));
    table = new FakeNetnsTable();
    backend = new FakeBackend();
    source = new FakeSource();
    zds = new FakeZds();
    proc = new FakeProc(dir);
    timer = new ManualTimer();
    agents = [];
    log = [];
    source.setNamespace('mesh', true, false);
    source.setNamespace('plain', false, false);
    await startAgent();
  });
  afterEach(() => {
    for (const a of agents) a.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('ADD of a pod in an ambient namespace: captured, served and annotated before it returns; its netns opened once and held', async () => {
    const path = netns('a');
    source.setPod('mesh', 'a', {}, false);
    expect(await add('mesh', 'a', path)).toEqual({ enrolled: true, reason: 'ambient' });
    expect(backend.netns()).toEqual([path]);
    const held = [...backend.captured.values()][0]!.netns;
    expect(zds.serving.get(uidOf('mesh', 'a'))).toBe(held); // the proxy got the fd the backend used
    expect(source.annotation('mesh', 'a')).toBe('enabled');
    expect(table.opensOf(path)).toBe(1);
    expect(table.open).toBe(1);
    expect(backend.paths).toEqual([]);
  });

  it('ADD of a pod outside the mesh: recorded, not captured, its netns not kept open', async () => {
    const path = netns('b');
    source.setPod('plain', 'b', {}, false);
    expect(await add('plain', 'b', path)).toMatchObject({ enrolled: false });
    expect(backend.netns()).toEqual([]);
    expect(table.open).toBe(0);
    expect(readdirSync(join(dir, 'state', 'pods'))).toHaveLength(1);
  });

  it('ADD while no proxy is connected fails with a retryable INPOD_ERR_ZDS, captures nothing and holds nothing', async () => {
    zds.ready = false;
    const path = netns('a');
    source.setPod('mesh', 'a', {}, false);
    await expect(add('mesh', 'a', path)).rejects.toMatchObject({ code: 'INPOD_ERR_ZDS', retryable: true, message: expect.stringMatching(/no proxy is connected/) });
    expect(backend.netns()).toEqual([]);
    expect(table.open).toBe(0);
  });

  it('a running pod joins and leaves the mesh with its namespace label; it is unenrolled through its held netns, then let go', async () => {
    const path = netns('b');
    source.setPod('plain', 'b', {}, false);
    await add('plain', 'b', path);
    source.setNamespace('plain', true);
    await until('b captured and annotated', () => backend.netns().includes(path) && source.annotation('plain', 'b') === 'enabled');
    expect(zds.serving.get(uidOf('plain', 'b'))?.path).toBe(path);
    expect(table.opensOf(path)).toBe(2); // its ADD, and once for this enrollment
    source.setNamespace('plain', false);
    await until('b uncaptured and its annotation removed', () => backend.netns().length === 0 && source.annotation('plain', 'b') === undefined);
    expect(backend.calls).toContain(`unenroll ${path}`);
    expect(zds.serving.has(uidOf('plain', 'b'))).toBe(false);
    expect(table.opensOf(path)).toBe(2); // the unenroll reopened nothing
    expect(table.open).toBe(0);
  });

  it('retries a live enroll that fails retryably, with doubling backoff, until it succeeds', async () => {
    const path = netns('b');
    source.setPod('plain', 'b', {}, false);
    await add('plain', 'b', path);
    const transient = (): MeshError => new MeshError('INPOD_ERR_KERNEL', 'map update failed: EAGAIN', { retryable: true });
    backend.failures.push(transient(), transient());
    source.setNamespace('plain', true);
    await until('the first retry scheduled', () => timer.delays().length === 1);
    expect(timer.delays()).toEqual([100]);
    expect(backend.netns()).toEqual([]);
    timer.fire();
    await until('the second retry scheduled', () => timer.delays().length === 1);
    expect(timer.delays()).toEqual([200]);
    timer.fire();
    await until('b captured, served and annotated', () => backend.netns().includes(path) && zds.serving.has(uidOf('plain', 'b')) && source.annotation('plain', 'b') === 'enabled');
    expect(backend.calls.filter((c) => c === `enroll ${path}`)).toHaveLength(3);
    expect(await metric('inpod_agent_retries_total')).toBe(2);
    expect(timer.delays()).toEqual([]);
  });

  it('retries when the proxy does not acknowledge the pod: the capture stands and the pod is handed over on the retry', async () => {
    const path = netns('b');
    source.setPod('plain', 'b', {}, false);
    await add('plain', 'b', path);
    zds.failures.push(new MeshError('INPOD_ERR_ZDS', 'the proxy did not acknowledge add for pod b within 5000 ms', { retryable: true }));
    source.setNamespace('plain', true);
    await until('a retry scheduled', () => timer.delays().length === 1);
    expect(backend.netns()).toEqual([path]); // captured: fails closed meanwhile
    expect(zds.serving.has(uidOf('plain', 'b'))).toBe(false);
    timer.fire();
    await until('b served', () => zds.serving.get(uidOf('plain', 'b'))?.path === path);
    expect(backend.calls.filter((c) => c === `enroll ${path}`)).toHaveLength(1);
  });

  it("does not retry a failure that is not retryable; the pod's next event tries again", async () => {
    const path = netns('b');
    source.setPod('plain', 'b', {}, false);
    await add('plain', 'b', path);
    backend.failures.push(new MeshError('INPOD_ERR_NETNS', `${path} has IPv6 addresses; inpod captures IPv4 only`));
    source.setNamespace('plain', true);
    await until('the failure', () => logged('pod reconcile failed; its next event tries again') === 1);
    expect(timer.delays()).toEqual([]);
    expect(backend.netns()).toEqual([]);
    expect(await metric('inpod_agent_retries_total')).toBe(0);
    expect(table.open).toBe(0);
    source.setPod('plain', 'b'); // the pod changed (say its IPv6 address went away)
    await until('b captured', () => backend.netns().includes(path));
  });

  it('a newer event for the pod replaces its pending retry', async () => {
    const path = netns('b');
    source.setPod('plain', 'b', {}, false);
    await add('plain', 'b', path);
    backend.failures.push(new MeshError('INPOD_ERR_KERNEL', 'transient', { retryable: true }));
    source.setNamespace('plain', true);
    await until('a retry scheduled', () => timer.delays().length === 1);
    source.setPod('plain', 'b');
    await until('b captured by the newer event', () => backend.netns().includes(path));
    expect(timer.delays()).toEqual([]); // the pending retry was cancelled
    timer.fire();
    expect(backend.calls.filter((c) => c === `enroll ${path}`)).toHaveLength(2);
  });

  it('finds pods that started before the agent in /proc with one scan for their namespace, and opens each netns once', async () => {
    const pods = ['p1', 'p2', 'p3'].map((n) => source.setPod('plain', n, {}, false));
    const [u1, u2] = pods.map((p) => p.metadata!.uid!);
    proc.procs.set('10', '0::/init.scope\n');
    proc.procs.set('11', `0::/kubepods/besteffort/pod${u1}/cri-containerd-aaa.scope\n`);
    proc.procs.set('12', `0::/kubepods.slice/kubepods-pod${u2!.replace(/-/g, '_')}.slice/cri-containerd-bbb.scope\n`);
    for (const pid of ['11', '12']) {
      writeFileSync(proc.netns(pid), '');
      table.add(proc.netns(pid));
    }
    source.setNamespace('plain', true);
    await until('p1 and p2 captured', () => backend.netns().length === 2);
    expect(backend.netns()).toEqual([proc.netns('11'), proc.netns('12')].sort());
    expect(proc.scans).toBe(1); // p3 (no process) is not looked for again per pod
    for (const pid of ['11', '12']) expect(table.opensOf(proc.netns(pid))).toBe(1);
  });

  it('an agent restart keeps every live sandbox of a mesh pod (serving the newest), drops the rest, with one /proc scan', async () => {
    source.setPod('mesh', 'a', {}, false);
    const [a1, a2] = [netns('a1'), netns('a2')];
    await add('mesh', 'a', a1, 'c1');
    await add('mesh', 'a', a2, 'c2'); // the sandbox recreated: both captured, the newest served
    source.setPod('mesh', 'x', {}, false);
    const x = netns('x');
    await add('mesh', 'x', x);
    const early = source.setPod('mesh', 'early', {}, false); // started before the agent: only /proc knows it
    proc.procs.set('20', `0::/kubepods/pod${early.metadata!.uid}\n`);
    writeFileSync(proc.netns('20'), '');
    table.add(proc.netns('20'));
    agents[0]!.stop();
    expect(table.open).toBe(0);
    source.podMap.delete('mesh/x'); // x went away while the agent was down
    const opensBefore = table.opens.length;
    await startAgent();
    expect(backend.netns()).toEqual([a1, a2, proc.netns('20')].sort());
    expect(zds.serving.get(uidOf('mesh', 'a'))?.path).toBe(a2);
    expect(zds.serving.get(uidOf('mesh', 'early'))?.path).toBe(proc.netns('20'));
    expect(source.annotation('mesh', 'early')).toBe('enabled');
    expect(readdirSync(join(dir, 'state', 'pods')).some((f) => f.startsWith(encodeURIComponent(early.metadata!.uid!)))).toBe(true);
    expect(readdirSync(join(dir, 'state', 'pods')).some((f) => f.includes('uid-x'))).toBe(false);
    expect(proc.scans).toBe(1);
    expect(table.opens.slice(opensBefore).sort()).toEqual([a1, a2, proc.netns('20')].sort()); // each once
    expect(table.open).toBe(3);
    expect(backend.paths).toEqual([]);
  });

  it("DEL releases only the sandbox it names, reached through its held netns even once its path is gone", async () => {
    source.setPod('mesh', 'a', {}, false);
    const [a1, a2] = [netns('a1'), netns('a2')];
    await add('mesh', 'a', a1, 'c1');
    await add('mesh', 'a', a2, 'c2');
    rmSync(a1); // the runtime removed the old sandbox's netns path; the DEL names it by container id
    table.remove(a1);
    await del('mesh', 'a', '', 'c1');
    expect(backend.calls).toContain(`unenroll ${a1}`);
    expect(backend.netns()).toEqual([a2]);
    expect(zds.serving.get(uidOf('mesh', 'a'))?.path).toBe(a2);
    expect(table.open).toBe(1);
    await del('mesh', 'a', a2, 'c2');
    expect(backend.netns()).toEqual([]);
    expect(zds.serving.size).toBe(0);
    expect(table.open).toBe(0);
  });

  it('a pod deleted from the cluster is uncaptured and its netns let go', async () => {
    const path = netns('a');
    source.setPod('mesh', 'a', {}, false);
    await add('mesh', 'a', path);
    const uid = uidOf('mesh', 'a');
    source.deletePod('mesh', 'a');
    await until('a uncaptured', () => backend.netns().length === 0 && !zds.serving.has(uid));
    expect(table.open).toBe(0);
  });

  describe('dual-stack and IPv6-only pods (issue 18)', () => {
    const DUAL = { ipv4: ['10.200.1.5'], ipv6: ['fd00:200::1:0:0:5'] };
    const addIps = (name: string, path: string, ips: unknown) =>
      agents[0]!.cniAdd({ podNamespace: 'mesh', podName: name, podUid: uidOf('mesh', name), netns: path, containerId: `c-${name}`, ips: ips as string[] });
    const dualNetns = (name: string, addrs = DUAL): string => {
      const path = join(dir, name);
      writeFileSync(path, '');
      table.add(path, addrs);
      return path;
    };
    const record = (name: string): { ips?: string[] } => {
      const f = readdirSync(join(dir, 'state', 'pods')).find((x) => x.startsWith(encodeURIComponent(uidOf('mesh', name))))!;
      return JSON.parse(readFileSync(join(dir, 'state', 'pods', f), 'utf8')) as { ips?: string[] };
    };

    it('ADD of a dual-stack pod with a backend that captures IPv6: enrolled with both addresses, served, its record carrying both', async () => {
      backend.ipv6 = true;
      source.setPod('mesh', 'd', {}, false);
      const path = dualNetns('d');
      expect(await addIps('d', path, ['10.200.1.5', 'FD00:200:0::1:0:0:5'])).toEqual({ enrolled: true, reason: 'ambient' });
      expect([...backend.captured.values()][0]!.settings.podIps).toEqual(['10.200.1.5', 'fd00:200::1:0:0:5']);
      expect(zds.serving.has(uidOf('mesh', 'd'))).toBe(true);
      expect(record('d').ips).toEqual(['10.200.1.5', 'fd00:200::1:0:0:5']);
    });

    it('ADD of an IPv6-only pod with a backend that captures IPv6: enrolled with its IPv6 address', async () => {
      backend.ipv6 = true;
      source.setPod('mesh', 'six', {}, false);
      const path = dualNetns('six', { ipv4: [], ipv6: ['fd00:200::6'] });
      expect(await addIps('six', path, ['fd00:200::6'])).toMatchObject({ enrolled: true });
      expect([...backend.captured.values()][0]!.settings.podIps).toEqual(['fd00:200::6']);
    });

    it('ADD of a dual-stack pod while the backend cannot capture IPv6: refused naming the IPv6 address, nothing captured or served (fail closed)', async () => {
      source.setPod('mesh', 'd', {}, false);
      const path = dualNetns('d');
      await expect(addIps('d', path, ['10.200.1.5', 'fd00:200::1:0:0:5'])).rejects.toMatchObject({
        code: 'INPOD_ERR_NETNS', retryable: false, message: expect.stringMatching(/has IPv6 addresses \(fd00:200::1:0:0:5\) and the ebpf backend does not capture IPv6/),
      });
      expect(backend.calls.filter((c) => c.startsWith('enroll'))).toEqual([]);
      expect(zds.serving.size).toBe(0);
      expect(table.open).toBe(0);
    });

    it('refuses the pod when its netns holds an IPv6 address the CNI result left out (SLAAC, say) and IPv6 is not captured: the netns decides, not the result', async () => {
      source.setPod('mesh', 'd', {}, false);
      const path = dualNetns('d');
      await expect(addIps('d', path, ['10.200.1.5'])).rejects.toMatchObject({ code: 'INPOD_ERR_NETNS', message: expect.stringMatching(/fd00:200::1:0:0:5/) });
      expect(backend.captured.size).toBe(0);
    });

    it('captures an address the CNI result left out when IPv6 is captured: the capture layer gets every address the netns holds', async () => {
      backend.ipv6 = true;
      source.setPod('mesh', 'd', {}, false);
      await addIps('d', dualNetns('d'), ['10.200.1.5']);
      expect([...backend.captured.values()][0]!.settings.podIps).toEqual(['10.200.1.5', 'fd00:200::1:0:0:5']);
    });

    it('refuses an ADD whose CNI result names an address the pod\'s netns does not hold (another pod\'s): INPOD_ERR_CNI, nothing captured', async () => {
      backend.ipv6 = true;
      source.setPod('mesh', 'd', {}, false);
      await expect(addIps('d', dualNetns('d'), ['10.200.1.5', 'fd00:200::1:0:0:99'])).rejects.toMatchObject({
        code: 'INPOD_ERR_CNI', message: expect.stringMatching(/names fd00:200::1:0:0:99, which its network namespace does not hold/),
      });
      expect(backend.captured.size).toBe(0);
      expect(zds.serving.size).toBe(0);
    });

    it.each([
      ['an address with a prefix length', ['fd00:200::5/64']],
      ['a number', [5]],
      ['not a list', 'fd00:200::5'],
    ])('refuses an event on its socket whose ips hold %s, before opening anything', async (_what, ips) => {
      source.setPod('mesh', 'd', {}, false);
      await expect(addIps('d', dualNetns('d'), ips)).rejects.toMatchObject({ code: 'INPOD_ERR_CNI' });
      expect(table.opens).toEqual([]);
    });

    it('a running pod found in /proc takes the netns holding one of its status.podIPs (either family), not another process\'s netns in its cgroup', async () => {
      backend.ipv6 = true;
      const p = source.setPod('plain', 'run', {}, false);
      source.podMap.set('plain/run', { ...p, status: { podIP: '10.200.1.5', podIPs: [{ ip: '10.200.1.5' }, { ip: 'fd00:200::1:0:0:5' }] } });
      proc.procs.set('30', `0::/kubepods/pod${p.metadata!.uid}/a.scope\n`); // a process of the pod that joined another netns
      proc.procs.set('31', `0::/kubepods/pod${p.metadata!.uid}/b.scope\n`);
      writeFileSync(proc.netns('30'), '');
      table.add(proc.netns('30'), { ipv4: ['10.200.9.9'], ipv6: [] });
      writeFileSync(proc.netns('31'), '');
      table.add(proc.netns('31'), { ipv4: [], ipv6: ['fd00:200::1:0:0:5'] });
      source.setNamespace('plain', true);
      await until('run captured', () => backend.netns().length === 1);
      expect(backend.netns()).toEqual([proc.netns('31')]);
      expect(table.open).toBe(1); // the other netns was let go
    });
  });
});
