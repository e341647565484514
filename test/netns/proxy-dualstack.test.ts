/**
 * The proxy end to end with dual-stack and IPv6-only pods under both capture backends (issue 18):
 * the lab's pods with IPv4 and fd00:200::/64 addresses from CNI, enrolled, the proxy serving them
 * in this process (in the lab cgroup, as the proxy sits in the node's root cgroup). Each case runs
 * over both families: HBONE pod to pod (the app sees the client's address of that family; the
 * access log writes `[addr]:port` as Rust's SocketAddr), passthrough to a pod outside the mesh
 * and plaintext inbound from it, both spliced by the kernel fast path. An IPv6-only pod is
 * captured and served like the others. (test/netns/ipv6-proxy.test.ts holds the proxy-side
 * details with a stand-in capture: CONNECT headers, services, same-node.)
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Ztunnel } from '../../ts/proxy/ztunnel.js';
import type { BackendName } from '../../ts/redirect/backend.js';
import { parseLocalConfig } from '../../ts/state/localconfig.js';
import { StateStore } from '../../ts/state/store.js';
import { socketAddr } from '../../ts/util/sockaddr.js';
import { type LabPod, type PodShell, until } from './lab.js';
import { Rig } from './rig.js';

const SLEEP = 'spiffe://cluster.local/ns/default/sa/sleep';
const WEB = 'spiffe://cluster.local/ns/shop/sa/web';

describe.each((process.env.INPOD_BACKENDS?.split(',') ?? ['ebpf', 'iptables']) as BackendName[])('proxy end to end with dual-stack pods, %s backend', (name) => {
  let rig: Rig;
  let zt: Ztunnel;
  let client: LabPod, server: LabPod, outside: LabPod, only6: LabPod;
  let sh: Record<'client' | 'server' | 'outside' | 'only6', PodShell>;
  let records: Record<string, unknown>[] = [];
  const complete = (l: Record<string, unknown>): boolean => l.scope === 'access' && l.msg === 'connection complete';
  const line = async (what: string, pred: (l: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> => {
    let found: Record<string, unknown> | undefined;
    await until(what, () => !!(found = records.find((l) => complete(l) && pred(l))));
    return found!;
  };

  beforeAll(async () => {
    // IPv6 capture on: the proxy listens on both families (ts/proxy/sockets.ts podListenerFd)
    rig = await Rig.create({ tag: 'ds', backend: name, ipv6: true });
    const { lab } = rig;
    records = rig.records;
    [client, server, outside] = await Promise.all(['client', 'server', 'outside'].map((n) => lab.addPod(n, 'dual')));
    only6 = await lab.addPod('only6', 'ipv6');
    const state = new StateStore();
    state.set(parseLocalConfig(`
workloads:
  - {uid: u-client, name: client, workloadName: client, namespace: default, serviceAccount: sleep, workloadIps: ["${client.ip4}", "${client.ip6}"], protocol: HBONE}
  - {uid: u-server, name: server, workloadName: server, namespace: shop, serviceAccount: web, workloadIps: ["${server.ip4}", "${server.ip6}"], protocol: HBONE}
  - {uid: u-only6, name: only6, workloadName: only6, namespace: default, serviceAccount: sleep, workloadIps: ["${only6.ip6}"], protocol: HBONE}
`));
    zt = await rig.serve(state, { fastPath: 'on' });
    await rig.servePod(client, { uid: 'u-client', name: 'client', namespace: 'default', serviceAccount: 'sleep' });
    await rig.servePod(server, { uid: 'u-server', name: 'server', namespace: 'shop', serviceAccount: 'web' });
    await rig.servePod(only6, { uid: 'u-only6', name: 'only6', namespace: 'default', serviceAccount: 'sleep' });
    sh = {
      client: await lab.shell(client.netnsPath, { inCgroup: true }),
      server: await lab.shell(server.netnsPath, { inCgroup: true }),
      outside: await lab.shell(outside.netnsPath, { inCgroup: true }),
      only6: await lab.shell(only6.netnsPath, { inCgroup: true }),
    };
    // the apps listen on both families, as most runtimes do by default
    await sh.server.listen({ host: '::', port: 8080, tag: 'server' });
    await sh.outside.listen({ host: '::', port: 80, tag: 'outside' });
  });

  afterAll(async () => {
    await rig?.destroy();
  });

  /** the address the app reports for a peer: an IPv4 peer of a [::] listener is ::ffff:a.b.c.d */
  const asSeen = (ip: string): string => (ip.includes(':') ? ip : `::ffff:${ip}`);

  it.each(['ipv4', 'ipv6'] as const)('carries pod to pod over HBONE on %s: the app sees the client, the access log writes its address as ztunnel', async (fam) => {
    const [from, to] = fam === 'ipv6' ? [client.ip6!, server.ip6!] : [client.ip4!, server.ip4!];
    const r = await sh.client.connect({ host: to, port: 8080, send: `hbone-${fam}`, timeoutMs: 5000 });
    expect(r.ok && r.reply).toBe(`server:hbone-${fam}`);
    if (!r.ok) return;
    await sh.client.close(r.connId);
    const acc = await sh.server.accepted((await sh.server.listenerByTag('server')).id);
    expect(acc.at(-1)!.peer.host).toBe(asSeen(from));
    const src = socketAddr({ ip: from, port: r.sockname.port });
    const out = await line('the outbound access-log line', (l) => l.direction === 'outbound' && l['src.addr'] === src);
    expect(out).toMatchObject({ transport: 'hbone', 'src.identity': SLEEP, 'dst.identity': WEB, 'dst.addr': socketAddr({ ip: to, port: 15008 }), 'dst.hbone_addr': socketAddr({ ip: to, port: 8080 }) });
    expect(out).not.toHaveProperty('error');
  });

  it.each(['ipv4', 'ipv6'] as const)('splices passthrough and plaintext inbound on %s in the kernel, keeping the client address', async (fam) => {
    const ip = (p: LabPod): string => (fam === 'ipv6' ? p.ip6! : p.ip4!);
    const cases = [
      { from: 'client' as const, src: client, to: outside, port: 80, tag: 'outside' as const, transport: 'passthrough' },
      { from: 'outside' as const, src: outside, to: server, port: 8080, tag: 'server' as const, transport: 'plaintext' },
    ];
    for (const c of cases) {
      const kernel = zt.fastPath.counters().bytes;
      const payload = `${c.transport}-${fam}-`.padEnd(1000, 'x');
      const r = await sh[c.from].connect({ host: ip(c.to), port: c.port, send: payload, timeoutMs: 5000 });
      expect(r.ok && r.reply).toBe(`${c.tag}:${payload}`);
      if (!r.ok) continue;
      await sh[c.from].close(r.connId);
      const acc = await sh[c.tag].accepted((await sh[c.tag].listenerByTag(c.tag)).id);
      expect(acc.at(-1)!.peer.host).toBe(asSeen(ip(c.src)));
      const src = socketAddr({ ip: ip(c.src), port: r.sockname.port });
      const l = await line(`the ${c.transport} access-log line`, (x) => x['src.addr'] === src);
      expect(l).toMatchObject({ transport: c.transport, 'dst.addr': socketAddr({ ip: ip(c.to), port: c.port }), path: 'kernel', kernel_bytes: payload.length + c.tag.length + 1 + payload.length });
      expect(zt.fastPath.counters().bytes - kernel).toBe(2 * payload.length + c.tag.length + 1);
    }
    await until('the spliced connections to end', () => zt.fastPath.activeConnections === 0);
    expect(zt.fastPath.mapEntries()).toEqual({ srcs: 0, dsts: 0, flows: 0 });
  });

  it('captures and serves an IPv6-only pod: over HBONE to the dual-stack server, whose app sees its IPv6 address', async () => {
    const r = await sh.only6.connect({ host: server.ip6!, port: 8080, send: 'only6', timeoutMs: 5000 });
    expect(r.ok && r.reply).toBe('server:only6');
    if (!r.ok) return;
    await sh.only6.close(r.connId);
    const acc = await sh.server.accepted((await sh.server.listenerByTag('server')).id);
    expect(acc.at(-1)!.peer.host).toBe(only6.ip6);
    const src = socketAddr({ ip: only6.ip6!, port: r.sockname.port });
    expect(await line('the outbound access-log line', (l) => l.direction === 'outbound' && l['src.addr'] === src)).toMatchObject({ transport: 'hbone', pod: 'default/only6' });
  });
});
