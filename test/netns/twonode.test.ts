/**
 * Two nodes on one host: each a network namespace with its own bridge, agent, proxy and pods,
 * joined by a link over IPv4 and IPv6; both build their state from the same fake API server. Pods
 * are dual-stack (the agent captures IPv6 by default, as Istio's chart); a pod on node 1 reaches
 * a pod on node 2 over HBONE on each family.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BackendName } from '../../ts/redirect/backend.js';
import { FakeApiServer } from '../fixtures/apiserver.js';
import { CLI, freePorts } from '../cli.js';
import { Lab, type LabPod, until as untilFor } from './lab.js';

interface Node {
  lab: Lab;
  name: string;
  dir: string;
  agent?: ChildProcess;
  proxy?: ChildProcess;
  log: string;
  admin?: number;
}

describe.each((process.env.INPOD_BACKENDS?.split(',') ?? ['ebpf', 'iptables']) as BackendName[])('two nodes, %s backend', (backend) => {
  let api: FakeApiServer;
  const nodes: Node[] = [];
  let kubeconfig: string;
  let a: LabPod, b: LabPod;

  const inNode = (n: Node, ...args: string[]): void => void execFileSync('nsenter', [`--net=${n.lab.nodeNetnsPath}`, ...args]);
  const logs = (): string => nodes.map((n) => `--- ${n.name}\n${n.log.slice(-1900)}`).join('\n');
  const until = (what: string, cond: () => boolean | Promise<boolean>): Promise<void> => untilFor(what, cond, { timeoutMs: 20_000, context: logs });
  async function start(n: Node): Promise<void> {
    const [admin, metrics, readiness, health] = await freePorts(4);
    n.admin = admin;
    const p = (f: string): string => join(n.dir, f);
    n.proxy = spawn('sh', ['-c', `echo $$ > ${n.lab.cgroupPath}/cgroup.procs && exec node ${CLI} ztunnel --kubeconfig ${kubeconfig} --zds ${p('zds.sock')} --ca-dir ${join(n.dir, '..', 'ca')} --drain-seconds 1 --admin-addr 127.0.0.1:${admin} --metrics-addr 127.0.0.1:${metrics} --readiness-addr 127.0.0.1:${readiness}`], { stdio: ['ignore', 'pipe', 'pipe'] });
    n.agent = spawn('node', [CLI, 'agent', '--backend', backend, '--kubeconfig', kubeconfig, '--node', n.name, '--cgroup', n.lab.cgroupPath,
      '--pin-root', `/sys/fs/bpf/${n.lab.prefix}inpod`, '--zds', p('zds.sock'), '--cni-socket', p('plugin.sock'), '--cni-bin-dir', p('bin'),
      '--cni-conf-dir', p('net.d'), '--state-dir', p('state'), '--health-addr', `127.0.0.1:${health}`,
      '--pod-name', `inpod-agent-${n.name}`, '--pod-namespace', 'inpod-system', '--host-netns', n.lab.nodeNetnsPath], { stdio: ['ignore', 'pipe', 'pipe'] });
    for (const c of [n.proxy, n.agent]) {
      c.stdout!.on('data', (d) => (n.log += d));
      c.stderr!.on('data', (d) => (n.log += d));
    }
  }
  async function runPod(n: Node, name: string): Promise<LabPod> {
    const obj = api.apply('pods', { metadata: { name, namespace: 'mesh', labels: { app: name } }, spec: { nodeName: n.name, serviceAccountName: `sa-${name}` } } as never);
    const conflist = JSON.parse(readFileSync(join(n.dir, 'net.d', '10-net.conflist'), 'utf8'));
    const pod = await n.lab.node.addPodWithChain(name, conflist, { namespace: 'mesh', name, uid: obj.metadata.uid! }, `${join(n.dir, 'bin')}:/usr/lib/cni:/opt/cni/bin`);
    // what the kubelet reports once the sandbox is up; the agent's annotation is kept
    const cur = api.get('pods', 'mesh', name)!;
    api.apply('pods', { ...cur, status: { phase: 'Running', podIP: pod.ip4, podIPs: [{ ip: pod.ip4 }, { ip: pod.ip6 }] } } as never);
    return pod;
  }

  beforeAll(async () => {
    api = new FakeApiServer();
    await api.start();
    const root = mkdtempSync(join(tmpdir(), 'inpod-2n-'));
    kubeconfig = join(root, 'kubeconfig');
    writeFileSync(kubeconfig, api.kubeconfig());
    api.apply('namespaces', { metadata: { name: 'mesh', labels: { 'istio.io/dataplane-mode': 'ambient' } } });
    // two different pod subnets (each node routes the other's)
    const third = 1 + Math.floor(Math.random() * 249);
    for (const [name, subnet] of [['node1', `10.200.${third}.0/24`], ['node2', `10.200.${third + 1}.0/24`]] as const) {
      const lab = await Lab.create({ subnet });
      const dir = join(root, name);
      for (const d of ['net.d', 'bin']) mkdirSync(join(dir, d), { recursive: true });
      const { cniVersion, name: net, ...bridge } = lab.node.netConf('dual') as { cniVersion: string; name: string };
      writeFileSync(join(dir, 'net.d', '10-net.conflist'), JSON.stringify({ cniVersion, name: net, plugins: [bridge] }));
      nodes.push({ lab, name, dir, log: '' });
    }
    // the "wire" between the nodes, and routes to each other's pod subnets; outside every lab
    // subnet (10.200.1-250.0/24, fd00:200::<1-fa>:0:0:0/80)
    const [n1, n2] = nodes as [Node, Node];
    const [link, link6] = ['10.200.251', 'fd00:200::fd:0:0'];
    execFileSync('ip', ['link', 'add', `${n1.lab.prefix}w`, 'netns', n1.lab.node.nodeNetns, 'type', 'veth', 'peer', 'name', `${n2.lab.prefix}w`, 'netns', n2.lab.node.nodeNetns]);
    inNode(n1, 'ip', 'addr', 'add', `${link}.1/30`, 'dev', `${n1.lab.prefix}w`);
    inNode(n2, 'ip', 'addr', 'add', `${link}.2/30`, 'dev', `${n2.lab.prefix}w`);
    inNode(n1, 'ip', '-6', 'addr', 'add', `${link6}:1/126`, 'dev', `${n1.lab.prefix}w`, 'nodad');
    inNode(n2, 'ip', '-6', 'addr', 'add', `${link6}:2/126`, 'dev', `${n2.lab.prefix}w`, 'nodad');
    for (const n of nodes) {
      inNode(n, 'ip', 'link', 'set', `${n.lab.prefix}w`, 'up');
      inNode(n, 'sysctl', '-qw', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1');
    }
    inNode(n1, 'ip', 'route', 'add', n2.lab.node.subnet, 'via', `${link}.2`);
    inNode(n2, 'ip', 'route', 'add', n1.lab.node.subnet, 'via', `${link}.1`);
    inNode(n1, 'ip', '-6', 'route', 'add', n2.lab.node.subnet6, 'via', `${link6}:2`);
    inNode(n2, 'ip', '-6', 'route', 'add', n1.lab.node.subnet6, 'via', `${link6}:1`);
    for (const n of nodes) await start(n);
    for (const n of nodes) await until(`${n.name} ready`, () => /agent ready/.test(n.log) && /snapshot sent/.test(n.log));
    a = await runPod(n1, 'a');
    b = await runPod(n2, 'b');
  }, 90_000);

  afterAll(async () => {
    for (const n of nodes) {
      if (process.env.INPOD_TEST_LOGS) writeFileSync(join(process.env.INPOD_TEST_LOGS, `${backend}-${n.name}.log`), n.log);
      n.agent?.kill('SIGKILL');
      n.proxy?.kill('SIGKILL');
    }
    // nothing of theirs may touch the kernel state while it is removed
    const gone = (c?: ChildProcess): Promise<unknown> => (!c || c.exitCode !== null || c.signalCode !== null ? Promise.resolve() : new Promise((r) => c.once('exit', r)));
    await Promise.all(nodes.flatMap((n) => [gone(n.agent), gone(n.proxy)]));
    for (const n of nodes) {
      const { createBackend } = await import('../../ts/redirect/factory.js');
      const be = await createBackend(backend, { cgroupPath: n.lab.cgroupPath, pinRoot: `/sys/fs/bpf/${n.lab.prefix}inpod`, stateDir: join(n.dir, 'state') });
      await be.uninstall().catch(() => {});
      await n.lab.destroy();
    }
    rmSync(join(nodes[0]?.dir ?? '/nonexistent', '..'), { recursive: true, force: true });
    await api?.stop();
  });

  it.each(['IPv4', 'IPv6'] as const)('carries a dual-stack pod on node 1 to one on node 2 over HBONE on %s, the app seeing the client IP of that family', async (fam) => {
    const [n1, n2] = nodes as [Node, Node];
    const [from, to] = fam === 'IPv4' ? [a.ip4!, b.ip4!] : [a.ip6!, b.ip6!];
    const [tag, port] = [`b${fam}`, fam === 'IPv4' ? 8080 : 8081];
    const shA = await n1.lab.shell(a.netnsPath, { inCgroup: true });
    const shB = await n2.lab.shell(b.netnsPath, { inCgroup: true });
    await shB.listen({ host: '::', port, tag });
    // node 1's proxy learns pod b with both addresses, and that it is in the mesh, from the API server
    await until('node 1 to know pod b as HBONE on both families', async () => {
      const d = (await fetch(`http://127.0.0.1:${n1.admin}/config_dump`).then((res) => res.json()).catch(() => null)) as { workloads: { name: string; protocol: string; workloadIps: string[] }[] } | null;
      return !!d?.workloads.some((w) => w.name === 'b' && w.protocol === 'HBONE' && w.workloadIps.length === 2);
    });
    const [log1, log2] = [n1.log.length, n2.log.length];
    const r = await shA.connect({ host: to, port, send: `across nodes on ${fam}`, timeoutMs: 5000 });
    expect(r.ok && r.reply, `${JSON.stringify(r)}\n${n1.log.slice(-2000)}`).toBe(`${tag}:across nodes on ${fam}`);
    if (r.ok) await shA.close(r.connId);
    const acc = await shB.accepted((await shB.listenerByTag(tag)).id);
    expect(acc.at(-1)!.peer.host).toBe(fam === 'IPv4' ? `::ffff:${from}` : from);
    // both proxies log the connection with the family's addresses (ztunnel's [addr]:port for IPv6)
    const hostPort = (ip: string): string => (fam === 'IPv4' ? `${ip}:` : `[${ip}]:`).replace(/[.[\]]/g, '\\$&');
    await until('the access logs', () => /"direction":"outbound".*"transport":"hbone"/.test(n1.log.slice(log1)) && /"direction":"inbound".*"transport":"hbone"/.test(n2.log.slice(log2)));
    const outbound = n1.log.slice(log1).split('\n').find((l) => /"direction":"outbound"/.test(l))!;
    expect(outbound).toMatch(new RegExp(`"src.addr":"${hostPort(from)}`));
    // the tunnel went to pod b's 15008 on the same family, carrying the original destination
    // (ztunnel's dst.addr and dst.hbone_addr)
    expect(outbound).toMatch(new RegExp(`"dst.addr":"${hostPort(to)}15008"`));
    expect(outbound).toMatch(new RegExp(`"dst.hbone_addr":"${hostPort(to)}${port}"`));
    // the outbound line names the peer identity the TLS handshake proved (ztunnel's dst.identity)
    expect(outbound).toMatch(/"dst.identity":"spiffe:\/\/cluster.local\/ns\/mesh\/sa\/sa-b"/);
  });
});
