/**
 * Two nodes on one host: each a network namespace with its own bridge, agent, proxy and pods,
 * joined by a link over IPv4 and IPv6; both build their state from the same fake API server. Pods
 * are dual-stack (the agent captures IPv6 by default, as Istio's chart); a pod on node 1 reaches
 * a pod on node 2 over HBONE on each family.
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BackendName } from '../../ts/redirect/backend.js';
import { type LabPod, until as untilFor } from './lab.js';
import { Rig } from './rig.js';

describe.each((process.env.INPOD_BACKENDS?.split(',') ?? ['ebpf', 'iptables']) as BackendName[])('two nodes, %s backend', (backend) => {
  const nodes: Rig[] = [];
  let a: LabPod, b: LabPod;

  const inNode = (n: Rig, ...args: string[]): void => void execFileSync('nsenter', [`--net=${n.lab.nodeNetnsPath}`, ...args]);
  const logs = (): string => nodes.map((n) => `--- ${n.node}\n${n.log.slice(-1900)}`).join('\n');
  const until = (what: string, cond: () => boolean | Promise<boolean>): Promise<void> => untilFor(what, cond, { timeoutMs: 20_000, context: logs });
  /** The node's proxy (state from the API server, the CA both nodes share) and agent (the node netns as the host's). */
  async function start(n: Rig): Promise<void> {
    await n.startProxy({ args: ['--kubeconfig', n.p('kubeconfig')], ports: true, caDir: nodes[0]!.p('ca') });
    await n.startAgent({ hostNetns: true, self: { name: `inpod-agent-${n.node}`, namespace: 'inpod-system' } });
  }
  /** A pod of the mesh on node `n`, reported Running with both its addresses (the agent's annotation is kept). */
  const runPod = (n: Rig, name: string): Promise<LabPod> => n.startPod('mesh', name, { labels: { app: name }, serviceAccount: `sa-${name}` });

  beforeAll(async () => {
    // two different pod subnets (each node routes the other's)
    const third = 1 + Math.floor(Math.random() * 249);
    for (const [name, subnet] of [['node1', `10.200.${third}.0/24`], ['node2', `10.200.${third + 1}.0/24`]] as const) {
      // both build their state from the first node's API server
      nodes.push(await Rig.create({ tag: '2n', backend, subnet, cluster: { api: nodes[0]?.api, family: 'dual', node: name } }));
    }
    // the "wire" between the nodes, and routes to each other's pod subnets; outside every lab
    // subnet (10.200.1-250.0/24, fd00:200::<1-fa>:0:0:0/80)
    const [n1, n2] = nodes as [Rig, Rig];
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
    for (const n of nodes) await n.ready(20_000);
    a = await runPod(n1, 'a');
    b = await runPod(n2, 'b');
  }, 90_000);

  afterAll(async () => {
    for (const n of nodes) if (process.env.INPOD_TEST_LOGS) writeFileSync(join(process.env.INPOD_TEST_LOGS, `${backend}-${n.node}.log`), n.log);
    // nothing of either node's processes may touch the kernel state while it is removed
    await Promise.all(nodes.map((n) => n.stopAll()));
    // node 2 first: node 1's rig made the API server both use
    const failed: unknown[] = [];
    for (const n of [...nodes].reverse()) await n.destroy().catch((e: unknown) => failed.push(e));
    if (failed.length) throw failed[0];
  });

  it.each(['IPv4', 'IPv6'] as const)('carries a dual-stack pod on node 1 to one on node 2 over HBONE on %s, the app seeing the client IP of that family', async (fam) => {
    const [n1, n2] = nodes as [Rig, Rig];
    const [from, to] = fam === 'IPv4' ? [a.ip4!, b.ip4!] : [a.ip6!, b.ip6!];
    const [tag, port] = [`b${fam}`, fam === 'IPv4' ? 8080 : 8081];
    const shA = await n1.lab.shell(a.netnsPath, { inCgroup: true });
    const shB = await n2.lab.shell(b.netnsPath, { inCgroup: true });
    await shB.listen({ host: '::', port, tag });
    // node 1's proxy learns pod b with both addresses, and that it is in the mesh, from the API server
    await until('node 1 to know pod b as HBONE on both families', async () => {
      const d = (await fetch(`http://127.0.0.1:${n1.proxy!.ports.admin}/config_dump`).then((res) => res.json()).catch(() => null)) as { workloads: { name: string; protocol: string; workloadIps: string[] }[] } | null;
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
