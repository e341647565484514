/**
 * The redirection contract (shared/DESIGN.md), checked row by row with real sockets in real
 * namespaces, against both backends and for each address family: IPv4 pods over IPv4, IPv6-only
 * pods over IPv6, and dual-stack pods over IPv6 (their IPv4 through the IPv4-mapped cases and the
 * cases that name both families). Plain Python listeners stand in for the proxy: no cooperation
 * from the proxy is needed; for IPv6 they listen dual-stack on [::], as ztunnel does. As in the
 * real flow, the stand-in's listeners open after the pod is enrolled. Pod processes run inside
 * the lab's child cgroup (where the eBPF socket hooks are attached), never in the host's cgroup2 root.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { createBackend } from '../../ts/redirect/factory.js';
import { IptablesBackend } from '../../ts/redirect/iptables.js';
import type { BackendName, BackendOptions, RedirectBackend } from '../../ts/redirect/backend.js';
import { Lab, type Accepted, type LabPod, type PodShell, until } from './lab.js';
import type { PodFamily } from '../../ts/sim/node.js';
import { inpod } from '../cli.js';
import { routedOutside } from './outside.js';
import { PROBE_SOURCE } from '../../ts/istio.js';

const cli = (args: string[]) => inpod(...args);

const BACKENDS = (process.env.INPOD_BACKENDS?.split(',') ?? ['ebpf', 'iptables']) as BackendName[];
const FAMILIES = (process.env.INPOD_FAMILIES?.split(',') ?? ['ipv4', 'ipv6', 'dual']) as PodFamily[];

/** The families each backend captures (eBPF: IPv4 until its IPv6 hooks land). */
const CAPTURES: Record<BackendName, PodFamily[]> = { iptables: ['ipv4', 'ipv6', 'dual'], ebpf: ['ipv4', 'ipv6', 'dual'] };

describe.each(BACKENDS.flatMap((b) => FAMILIES.filter((f) => CAPTURES[b].includes(f)).map((f) => [b, f] as const)))('redirection contract, %s backend, %s pods', (name, family) => {
  /** the cases' connections go over IPv6 (IPv6-only and dual-stack pods) */
  const v6 = family !== 'ipv4';
  /** the pods have IPv4 too (the IPv4-mapped cases) */
  const hasV4 = family !== 'ipv6';
  /** a pod's address of the family the cases use */
  const A = (p: LabPod): string => (v6 ? p.ip6! : p.ip4!);
  const ANY = v6 ? '::' : '0.0.0.0';
  const LOOP = v6 ? '::1' : '127.0.0.1';
  const HOST = v6 ? 128 : 32;
  const PROBE = v6 ? PROBE_SOURCE.ipv6 : PROBE_SOURCE.ipv4;
  /** an IPv4 address as a listener of the cases' family sees it ([::] listeners see ::ffff:a.b.c.d) */
  const seen4 = (ip: string): string => (v6 ? `::ffff:${ip}` : ip);
  let lab: Lab;
  let backend: RedirectBackend;
  let opts: BackendOptions;
  let stateDir: string;
  let pod: LabPod; // enrolled, with exclusions
  let pod2: LabPod; // enrolled, a second mesh pod
  let peer: LabPod; // not enrolled
  let other: LabPod; // not enrolled, its processes in the cgroup too
  let sh: Record<'pod' | 'pod2' | 'peer' | 'other' | 'node', PodShell>;
  let proxyOut: string;
  let proxyIn: string;
  const settings = () => ({
    excludeInboundPorts: [9090],
    excludeOutboundPorts: [81],
    excludeOutboundCidrs: [`${A(other)}/${HOST}`],
  });

  async function reply(from: PodShell, host: string, port: number, extra: object = {}): Promise<string> {
    const r = await from.connect({ host, port, send: 'ping', timeoutMs: 2000, ...extra });
    if (!r.ok) return `error:${r.error}`;
    await from.close(r.connId);
    return r.reply ?? '';
  }

  beforeAll(async () => {
    lab = await Lab.create();
    stateDir = mkdtempSync(join(tmpdir(), `${lab.prefix}state`));
    // the node netns plays the host's: its own sockets are kubelet's
    opts = { cgroupPath: lab.cgroupPath, pinRoot: `/sys/fs/bpf/${lab.prefix}inpod`, stateDir, hostNetns: lab.nodeNetnsPath, ipv6: v6 };
    backend = await createBackend(name, opts);
    [pod, pod2, peer, other] = await Promise.all(['pod', 'pod2', 'peer', 'other'].map((n) => lab.addPod(n, family)));
    await backend.install();
    await backend.enroll(pod.netnsPath, settings());
    await backend.enroll(pod2.netnsPath);
    sh = {
      pod: await lab.shell(pod.netnsPath, { inCgroup: true }),
      pod2: await lab.shell(pod2.netnsPath, { inCgroup: true }),
      peer: await lab.shell(peer.netnsPath, { inCgroup: false }),
      other: await lab.shell(other.netnsPath, { inCgroup: true }),
      node: await lab.shell(lab.nodeNetnsPath, { inCgroup: true }),
    };
    // apps first, then the stand-in proxy (after enrollment, as in the real flow)
    await sh.pod.listen({ host: ANY, port: 8080, tag: 'app8080' });
    await sh.pod.listen({ host: ANY, port: 9090, tag: 'app9090' });
    await sh.pod.listen({ host: ANY, port: 15008, tag: 'hbone' });
    await sh.pod2.listen({ host: ANY, port: 8080, tag: 'pod2app' });
    // pod2's stand-in proxy listens dual-stack, as ztunnel does by default ([::], src/config.rs)
    await sh.pod2.listen({ host: '::', port: 15001, tag: 'pod2out' });
    await sh.pod2.listen({ host: '::', port: 15006, tag: 'pod2in' });
    await sh.peer.listen({ host: ANY, port: 80, tag: 'peer80' });
    await sh.peer.listen({ host: ANY, port: 81, tag: 'peer81' });
    await sh.other.listen({ host: ANY, port: 80, tag: 'other80' });
    proxyOut = (await sh.pod.listen({ host: ANY, port: 15001, tag: 'proxy15001' })).id;
    proxyIn = (await sh.pod.listen({ host: ANY, port: 15006, tag: 'proxy15006' })).id;
  });

  afterAll(async () => {
    await backend?.uninstall().catch(() => {});
    await lab?.destroy();
    if (stateDir) rmSync(stateDir, { recursive: true, force: true });
  });

  it('sends outbound TCP to the 15001 listener with the original destination', async () => {
    const r = await sh.pod.connect({ host: A(peer), port: 80, send: 'ping', timeoutMs: 2000 });
    expect(r.ok && r.reply).toMatch(/^proxy15001:/);
    // the app still sees the peer it asked for
    expect(r.ok && r.peername).toEqual({ host: A(peer), port: 80 });
    expect(r.ok && r.origDst).toEqual({ host: A(peer), port: 80 });
    const acc = (await sh.pod.accepted(proxyOut)).at(-1)!;
    expect(acc.origDst).toEqual({ host: A(peer), port: 80 });
    // same view as iptables REDIRECT: the proxy's peer is the pod, its local end the loopback's 15001
    expect(acc.peer.host).toBe(A(pod));
    expect(acc.sockname).toEqual({ host: LOOP, port: 15001 });
  });

  if (hasV4) {
    // IPv4-mapped destinations on AF_INET6 sockets (Java's default, and other runtimes with dual-stack
    // sockets) are IPv4 on the wire: under iptables Istio's IPv4 rules apply to them unchanged.
    it('captures outbound TCP from a dual-stack socket to an IPv4-mapped address like IPv4', async () => {
      const r = await sh.pod.connect({ host: `::ffff:${peer.ip4}`, port: 80, send: 'ping', timeoutMs: 2000 });
      expect(r.ok && r.reply).toMatch(/^proxy15001:/);
      // the app sees the peer it asked for; SO_ORIGINAL_DST on its own socket answers as conntrack does
      expect(r.ok && r.peername).toEqual({ host: `::ffff:${peer.ip4}`, port: 80 });
      expect(r.ok && r.origDst).toEqual({ host: peer.ip4, port: 80 });
      const acc = (await sh.pod.accepted(proxyOut)).at(-1)!;
      expect(acc.origDst).toEqual({ host: peer.ip4, port: 80 });
      expect(acc.peer.host).toBe(seen4(pod.ip4!));
      expect(acc.sockname).toEqual({ host: seen4('127.0.0.1'), port: 15001 });
    });

    it('exempts a dual-stack socket as an IPv4 one: mark 0x539, ::ffff:127.0.0.1, its own IP, exclusions', async () => {
      const mapped = (ip: string) => `::ffff:${ip}`;
      expect(await reply(sh.pod, mapped(peer.ip4!), 80, { mark: 0x539 })).toMatch(/^peer80:/);
      expect(await reply(sh.pod, mapped('127.0.0.1'), 8080)).toMatch(/^app8080:/);
      expect(await reply(sh.pod, mapped(pod.ip4!), 8080)).toMatch(/^app8080:/);
      expect(await reply(sh.pod, mapped(peer.ip4!), 81)).toMatch(/^peer81:/);
      if (!v6) expect(await reply(sh.pod, mapped(other.ip4!), 80)).toMatch(/^other80:/);
    });

    it('gives a dual-stack proxy listener ([::]:15001) the original destination of IPv4 and IPv4-mapped clients', async () => {
      const out = (await sh.pod2.listenerByTag('pod2out')).id;
      for (const host of [peer.ip4!, `::ffff:${peer.ip4}`]) {
        expect(await reply(sh.pod2, host, 80)).toMatch(/^pod2out:/);
        const acc = (await sh.pod2.accepted(out)).at(-1)!;
        expect(acc.origDst).toEqual({ host: peer.ip4, port: 80 });
        expect(acc.peer.host).toBe(`::ffff:${pod2.ip4}`);
      }
    });
  }

  if (family === 'dual') {
    it('captures both families of a dual-stack pod, each with its own original destination and source', async () => {
      for (const [dst, src] of [[peer.ip4!, pod.ip4!], [peer.ip6!, pod.ip6!]] as const) {
        expect(await reply(sh.pod, dst, 80)).toMatch(/^proxy15001:/);
        const acc = (await sh.pod.accepted(proxyOut)).at(-1)!;
        expect(acc.origDst).toEqual({ host: dst, port: 80 });
        expect(acc.peer.host).toBe(dst.includes(':') ? src : seen4(src));
      }
      for (const dst of [pod.ip4!, pod.ip6!]) {
        expect(await reply(sh.peer, dst, 7777)).toMatch(/^proxy15006:/);
        expect((await sh.pod.accepted(proxyIn)).at(-1)!.origDst).toEqual({ host: dst, port: 7777 });
      }
      // its own addresses of either family, and either loopback, stay its own
      for (const own of [pod.ip4!, pod.ip6!, '127.0.0.1', '::1']) expect(await reply(sh.pod, own, 8080)).toMatch(/^app8080:/);
    });
  }

  it('captures outbound TCP to another enrolled pod', async () => {
    expect(await reply(sh.pod, A(pod2), 8080)).toMatch(/^proxy15001:/);
  });

  it('sends inbound TCP to the 15006 listener with the original destination, on any port', async () => {
    expect(await reply(sh.peer, A(pod), 8080)).toMatch(/^proxy15006:/);
    expect((await sh.pod.accepted(proxyIn)).at(-1)!.origDst).toEqual({ host: A(pod), port: 8080 });
    expect(await reply(sh.peer, A(pod), 7777)).toMatch(/^proxy15006:/);
    const acc = (await sh.pod.accepted(proxyIn)).at(-1)!;
    expect(acc.origDst).toEqual({ host: A(pod), port: 7777 });
    expect(acc.peer.host).toBe(A(peer));
  });

  it('steers inbound TCP for a dual-stack app listener to 15006; the app sees its client as a [::] listener does', async () => {
    const app = (await sh.pod.listen({ host: '::', port: 8081, tag: 'app8081v6' })).id;
    expect(await reply(sh.peer, A(pod), 8081)).toMatch(/^proxy15006:/);
    expect((await sh.pod.accepted(proxyIn)).at(-1)!.origDst).toEqual({ host: A(pod), port: 8081 });
    // the proxy's transparent upstream, as in the test below
    const r = await sh.pod.connect({
      host: A(pod), port: 8081, mark: 0x539, transparent: true, bind: { host: A(peer), port: 0 }, send: 'ping', timeoutMs: 2000,
    });
    expect(r.ok && r.reply).toMatch(/^app8081v6:/);
    expect((await sh.pod.accepted(app)).at(-1)!.peer.host).toBe(v6 ? A(peer) : `::ffff:${A(peer)}`);
  });

  it('sends inbound TCP to a dual-stack proxy listener ([::]:15006) with the original destination', async () => {
    expect(await reply(sh.peer, A(pod2), 8080)).toMatch(/^pod2in:/);
    const acc = (await sh.pod2.accepted((await sh.pod2.listenerByTag('pod2in')).id)).at(-1)!;
    expect(acc.origDst).toEqual({ host: A(pod2), port: 8080 });
    expect(acc.peer.host).toBe(v6 ? A(peer) : `::ffff:${A(peer)}`);
    if (!v6) {
      // an IPv6-only listener on 15006 next to the IPv4 one takes no IPv4 connection from it
      const v6only = await sh.pod.listen({ host: '::', port: 15006, v6only: true, tag: 'proxy15006v6only' });
      expect(await reply(sh.peer, A(pod), 8080)).toMatch(/^proxy15006:/);
      await sh.pod.closeListener(v6only.id);
    }
  });

  it('lets inbound TCP to 15008 reach the HBONE listener directly', async () => {
    expect(await reply(sh.peer, A(pod), 15008)).toMatch(/^hbone:/);
  });

  it('never redirects sockets marked 0x539', async () => {
    expect(await reply(sh.pod, A(peer), 80, { mark: 0x539 })).toMatch(/^peer80:/);
  });

  it('leaves loopback traffic and the pod talking to its own IP alone', async () => {
    expect(await reply(sh.pod, LOOP, 8080)).toMatch(/^app8080:/);
    expect(await reply(sh.pod, A(pod), 8080)).toMatch(/^app8080:/);
  });

  it(`leaves health probes from the probe source (${v6 ? PROBE_SOURCE.ipv6 : PROBE_SOURCE.ipv4}) alone`, async () => {
    expect(await reply(sh.node, A(pod), 8080, { bind: { host: PROBE, port: 0 } })).toMatch(/^app8080:/);
  });

  // istio-cni SNATs the node's own connections to pods to the probe source (its host rule); the
  // eBPF backend lets the exact tuple a node socket connected with through (ARCHITECTURE.md)
  it('lets a connection the node itself opens (kubelet probes) reach the app uncaptured', async () => {
    expect(await reply(sh.node, A(pod), 8080)).toMatch(/^app8080:/);
    const app = (await sh.pod.accepted((await sh.pod.listenerByTag('app8080')).id)).at(-1)!;
    expect(app.peer.host).toBe(name === 'ebpf' ? (v6 ? lab.node.gateway6 : lab.node.gateway) : PROBE);
    // another port too: every port of the pod is the node's to probe
    expect(await reply(sh.node, A(pod), 7777)).toMatch(/^error:ECONNREFUSED$/);
  });

  it('captures what the node forwards, even masqueraded to the address its own probes come from', async () => {
    const outside = await routedOutside(lab, { masquerade: true });
    try {
      // its sockets in the lab cgroup too: sockops sees their connect, in a netns that is not the node's
      const ext = await lab.shell(outside.netnsPath, { inCgroup: true });
      // forwarded and masqueraded: a SYN lost on the way is retransmitted after 1 s, so more than 2 s
      expect(await reply(ext, A(pod), 8080, { timeoutMs: 5000 })).toMatch(/^proxy15006:/);
      const acc = (await sh.pod.accepted(proxyIn)).at(-1)!;
      expect(acc.peer.host).toBe(v6 ? lab.node.gateway6 : lab.node.gateway);
      expect(acc.origDst).toEqual({ host: A(pod), port: 8080 });
      ext.kill();
    } finally {
      await outside.destroy();
    }
  });

  it('captures a pod outside the mesh whose sockets the hooks see, as any pod', async () => {
    expect(await reply(sh.other, A(pod), 8080)).toMatch(/^proxy15006:/);
    expect((await sh.pod.accepted(proxyIn)).at(-1)!.peer.host).toBe(A(other));
  });

  it('honours the excluded inbound port, outbound port and outbound CIDR', async () => {
    expect(await reply(sh.peer, A(pod), 9090)).toMatch(/^app9090:/);
    expect(await reply(sh.pod, A(peer), 81)).toMatch(/^peer81:/);
    expect(await reply(sh.pod, A(other), 80)).toMatch(/^other80:/);
  });

  it('leaves namespaces that are not enrolled untouched, the node netns included', async () => {
    expect(await reply(sh.other, A(peer), 80)).toMatch(/^peer80:/);
    expect(await reply(sh.peer, A(other), 80)).toMatch(/^other80:/);
    expect(await reply(sh.node, A(peer), 80)).toMatch(/^peer80:/);
  });

  it('keeps the client IP on the proxy transparent upstream and routes the replies back', async () => {
    const r = await sh.pod.connect({
      host: A(pod), port: 8080, mark: 0x539, transparent: true, bind: { host: A(peer), port: 0 }, send: 'ping', timeoutMs: 2000,
    });
    expect(r.ok && r.reply).toMatch(/^app8080:/);
    const app = (await sh.pod.accepted((await sh.pod.listenerByTag('app8080')).id)).at(-1)!;
    expect(app.peer.host).toBe(A(peer));
  });

  it('gives the original destination to a connection its client closed before the proxy accepted it', async () => {
    await sh.pod.closeListener(proxyOut);
    const held = await sh.pod.listen({ host: ANY, port: 15001, tag: 'proxy15001p', paused: true });
    const r = await sh.pod.connect({ host: A(peer), port: 80, timeoutMs: 2000 });
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    await sh.pod.send(r.connId, 'early', 100); // no answer: nobody accepted yet
    await sh.pod.close(r.connId);
    await sh.pod.resume(held.id);
    proxyOut = held.id;
    let acc: Accepted | undefined;
    await until('the held connection to be accepted', async () => (acc = (await sh.pod.accepted(held.id)).at(-1)) !== undefined, { timeoutMs: 5000 });
    expect(acc!.origDst).toEqual({ host: A(peer), port: 80 });
  });

  it("refuses the proxy's transparent upstream to a closed port of the pod within 1 s", async () => {
    // The kernel's RST has no socket and no mark of its own: it must still route back to the
    // proxy's socket (bound to the client's IP), not out to the client's real address.
    const started = Date.now();
    const r = await sh.pod.connect({
      host: A(pod), port: 8181, mark: 0x539, transparent: true, bind: { host: A(peer), port: 0 }, timeoutMs: 5000,
    });
    expect(r.ok ? 'connected' : r.error).toBe('ECONNREFUSED');
    expect(Date.now() - started).toBeLessThan(1000);
  });

  it('fails closed: no listener means refused or dropped, never delivered around the proxy', async () => {
    await sh.pod.closeListener(proxyOut);
    await sh.pod.closeListener(proxyIn);
    const appBefore = (await sh.pod.accepted((await sh.pod.listenerByTag('app8080')).id)).length;
    const peerBefore = (await sh.peer.accepted((await sh.peer.listenerByTag('peer80')).id)).length;
    expect(await reply(sh.pod, A(peer), 80, { timeoutMs: 1000 })).toMatch(/^error:(ECONNREFUSED|ETIMEDOUT)/);
    expect(await reply(sh.peer, A(pod), 8080, { timeoutMs: 1000 })).toMatch(/^error:(ECONNREFUSED|ETIMEDOUT|ECONNRESET)/);
    expect((await sh.pod.accepted((await sh.pod.listenerByTag('app8080')).id)).length).toBe(appBefore);
    expect((await sh.peer.accepted((await sh.peer.listenerByTag('peer80')).id)).length).toBe(peerBefore);
    // a listener that reopens takes over
    proxyOut = (await sh.pod.listen({ host: ANY, port: 15001, tag: 'proxy15001b' })).id;
    proxyIn = (await sh.pod.listen({ host: ANY, port: 15006, tag: 'proxy15006b' })).id;
    expect(await reply(sh.pod, A(peer), 80)).toMatch(/^proxy15001b:/);
    expect(await reply(sh.peer, A(pod), 8080)).toMatch(/^proxy15006b:/);
  });

  it('keeps established connections when the pod is unenrolled, and captures again on re-enroll', async () => {
    const out = await sh.pod.connect({ host: A(peer), port: 80, send: 'one', timeoutMs: 2000 });
    const inb = await sh.peer.connect({ host: A(pod), port: 8080, send: 'one', timeoutMs: 2000 });
    expect(out.ok && out.reply).toMatch(/^proxy15001b:/);
    expect(inb.ok && inb.reply).toMatch(/^proxy15006b:/);
    if (!out.ok || !inb.ok) return;

    await backend.unenroll(pod.netnsPath);
    expect(await backend.isEnrolled(pod.netnsPath)).toBe(false);
    expect((await sh.pod.send(out.connId, 'two')).reply).toBe('proxy15001b:two');
    expect((await sh.peer.send(inb.connId, 'two')).reply).toBe('proxy15006b:two');
    expect(await reply(sh.pod, A(peer), 80)).toMatch(/^peer80:/);
    expect(await reply(sh.peer, A(pod), 8080)).toMatch(/^app8080:/);

    await backend.enroll(pod.netnsPath, settings());
    expect(await reply(sh.pod, A(peer), 80)).toMatch(/^proxy15001b:/);
    expect(await reply(sh.peer, A(pod), 8080)).toMatch(/^proxy15006b:/);
    await sh.pod.close(out.connId);
    await sh.peer.close(inb.connId);
  });

  it('is idempotent: enrolling twice equals once', async () => {
    await backend.enroll(pod.netnsPath, settings());
    await backend.enroll(pod.netnsPath, settings());
    const listed = (await backend.list()).filter((p) => p.netns === pod.netnsPath);
    expect(listed).toHaveLength(1);
    expect(listed[0]!.settings.excludeInboundPorts).toEqual([9090]);
    expect(listed[0]!.podIps).toEqual([pod.ip4, pod.ip6].filter(Boolean));
    expect(await reply(sh.pod, A(peer), 80)).toMatch(/^proxy15001b:/);
  });

  it('refuses a pod the other backend already captures, and changes nothing', async () => {
    const otherName: BackendName = name === 'ebpf' ? 'iptables' : 'ebpf';
    const rival = await createBackend(otherName, opts);
    await expect(rival.enroll(pod.netnsPath)).rejects.toMatchObject({ code: 'INPOD_ERR_OTHER_BACKEND' });
    expect(await rival.isEnrolled(pod.netnsPath)).toBe(false);
    expect(await reply(sh.pod, A(peer), 80)).toMatch(/^proxy15001b:/);
  });

  it('names the path when the netns does not exist, and changes nothing', async () => {
    await expect(backend.enroll(`/run/netns/${lab.prefix}missing`)).rejects.toMatchObject({
      code: 'INPOD_ERR_NETNS',
      message: expect.stringContaining(`${lab.prefix}missing`),
    });
  });

  if (v6) {
    it('refuses a pod with IPv6 addresses while IPv6 capture is off, and changes nothing', async () => {
      const off = await createBackend(name, { ...opts, ipv6: false });
      const pod4 = await lab.addPod('podoff', family);
      await expect(off.enroll(pod4.netnsPath)).rejects.toMatchObject({ code: 'INPOD_ERR_NETNS', message: expect.stringMatching(/IPv6 capture is off/) });
      expect(await off.isEnrolled(pod4.netnsPath)).toBe(false);
    });
  }

  if (name === 'iptables' && family === 'ipv4') {
    it("writes Istio's ip6tables rules for an IPv4-only pod too, and IPv4's alone where the kernel has no IPv6", async () => {
      const save6 = (p: LabPod): string => execFileSync('nsenter', [`--net=${p.netnsPath}`, 'ip6tables-save'], { encoding: 'utf8' })
        + execFileSync('nsenter', [`--net=${p.netnsPath}`, 'ip6tables-legacy-save'], { encoding: 'utf8' });
      expect(save6(pod)).toContain('-A ISTIO_OUTPUT ! -d ::1/128 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001');
      const v4only = new IptablesBackend({ ...opts, families: [4] });
      const p4 = await lab.addPod('v4only', family);
      await v4only.enroll(p4.netnsPath);
      try {
        expect(save6(p4)).not.toMatch(/ISTIO_/);
        expect(await v4only.isEnrolled(p4.netnsPath)).toBe(true);
      } finally {
        await v4only.unenroll(p4.netnsPath);
      }
    });
  }

  it('works from separate processes: capture set by one CLI call stays after it exits', async () => {
    const pod3 = await lab.addPod('pod3', family);
    const common = ['--backend', name, '--cgroup', lab.cgroupPath, '--pin-root', opts.pinRoot!, '--state-dir', stateDir];
    const enrolled = await cli(['redirect', 'enroll', '--netns', pod3.netnsPath, ...common, ...(v6 ? ['--ipv6'] : [])]);
    expect(enrolled.stderr).toBe('');
    expect(enrolled.code).toBe(0);
    expect(JSON.parse(enrolled.stdout)).toMatchObject({ netns: pod3.netnsPath, backend: name, podIps: [pod3.ip4, pod3.ip6].filter(Boolean) });

    const sh3 = await lab.shell(pod3.netnsPath, { inCgroup: true });
    await sh3.listen({ host: ANY, port: 15001, tag: 'pod3proxy' });
    expect(await reply(sh3, A(peer), 80)).toMatch(/^pod3proxy:/);

    const listed = await cli(['redirect', 'list', ...common]);
    expect(listed.code).toBe(0);
    const pods = JSON.parse(listed.stdout) as { netns: string; backend: string }[];
    expect(pods.map((p) => p.netns).sort()).toEqual([pod.netnsPath, pod2.netnsPath, pod3.netnsPath].sort());

    const un = await cli(['redirect', 'unenroll', '--netns', pod3.netnsPath, ...common]);
    expect(un.code).toBe(0);
    expect(await reply(sh3, A(peer), 80)).toMatch(/^peer80:/);
  });

  it('sends DNS (UDP and TCP to port 53) to 15053 when DNS capture is on, and not otherwise', async () => {
    await sh.peer.udpListen({ host: ANY, port: 53, tag: 'peerdns' });
    // The stand-in DNS proxy, on each loopback: a UDP answer leaves from the address the socket
    // is bound to, and only one from the redirect target matches the query's NAT (an unbound
    // [::] socket would answer from the pod's address). TCP on [::] takes both families.
    await sh.pod2.udpListen({ host: v6 ? '::1' : '127.0.0.1', port: 15053, tag: 'dnsproxy' });
    if (v6 && hasV4) await sh.pod2.udpListen({ host: '127.0.0.1', port: 15053, tag: 'dnsproxy' });
    await sh.pod2.listen({ host: v6 ? '::' : '127.0.0.1', port: 15053, tag: 'dnsproxytcp' });
    const query = { host: A(peer), port: 53, send: 'q', timeoutMs: 2000 };
    expect(await sh.pod2.udp(query)).toMatchObject({ ok: true, reply: 'peerdns:q' });

    await backend.enroll(pod2.netnsPath, { dnsCapture: true });
    // the answer appears to come from the server the app asked
    expect(await sh.pod2.udp(query)).toMatchObject({ ok: true, reply: 'dnsproxy:q', from: { host: A(peer), port: 53 } });
    expect(await sh.pod2.udp({ ...query, connected: true })).toMatchObject({ ok: true, reply: 'dnsproxy:q', from: { host: A(peer), port: 53 } });
    expect(await reply(sh.pod2, A(peer), 53)).toMatch(/^dnsproxytcp:/);
    if (hasV4) {
      // the same from a dual-stack socket to the IPv4-mapped server address
      const mapped = { ...query, host: `::ffff:${peer.ip4}` };
      expect(await sh.pod2.udp(mapped)).toMatchObject({ ok: true, reply: 'dnsproxy:q', from: { host: mapped.host, port: 53 } });
      expect(await sh.pod2.udp({ ...mapped, connected: true })).toMatchObject({ ok: true, reply: 'dnsproxy:q', from: { host: mapped.host, port: 53 } });
      expect(await reply(sh.pod2, mapped.host, 53)).toMatch(/^dnsproxytcp:/);
    }
    // the proxy's own DNS upstream (mark 0x539) goes out
    expect(await sh.pod2.udp({ ...query, mark: 0x539 })).toMatchObject({ ok: true, reply: 'peerdns:q' });

    await backend.enroll(pod2.netnsPath, { dnsCapture: false });
    expect(await sh.pod2.udp(query)).toMatchObject({ ok: true, reply: 'peerdns:q' });
  });

  it('reconciles after a restart: keeps the wanted pods, drops the rest', async () => {
    const fresh = await createBackend(name, opts); // a new process's view: only kernel state
    const left = await fresh.reconcile(new Map([[pod.netnsPath, settings()]]));
    expect(left.map((p) => p.netns)).toEqual([pod.netnsPath]);
    expect(await fresh.isEnrolled(pod2.netnsPath)).toBe(false);
    expect(await reply(sh.pod, A(peer), 80)).toMatch(/^proxy15001b:/);
    expect(await reply(sh.pod2, A(peer), 80)).toMatch(/^peer80:/);
  });
});
