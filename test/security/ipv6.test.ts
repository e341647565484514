/**
 * Issue 18, tried as an attacker: IPv6 paths around the proxy. Every pod's eth0 has a link-local
 * IPv6 address (fe80::/10), IPv4-only pods too, and an app can always open a native IPv6 socket;
 * neither may carry a byte between an enrolled pod and anything else around the proxy. A plain
 * Python listener stands in for the proxy (dual-stack [::], as ztunnel listens), as in the
 * conformance suite. Under iptables Istio's ip6tables rules REDIRECT both (an outbound socket
 * scoped to eth0 then cannot reach ::1 and never connects); under eBPF connect6 sends the outbound
 * one to the proxy and sk_lookup drops an inbound SYN to a link-local address (it names no netns
 * the program could look up: bpf/sk_lookup.bpf.c).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackend } from '../../ts/redirect/factory.js';
import type { BackendName, RedirectBackend } from '../../ts/redirect/backend.js';
import { Lab, type LabPod, type PodShell, until } from '../netns/lab.js';

/** The link-local address of `dev` in the netns at `netnsPath` (non-tentative: usable). */
function linkLocal(netnsPath: string, dev: string): string | null {
  const out = execFileSync('nsenter', [`--net=${netnsPath}`, 'ip', '-6', '-o', 'addr', 'show', 'dev', dev, 'scope', 'link', '-tentative'], { encoding: 'utf8' });
  return /inet6 (fe80::[0-9a-f:]+)\//.exec(out)?.[1] ?? null;
}

describe.each(['ebpf', 'iptables'] as BackendName[])('IPv6 around the proxy, %s backend', (name) => {
  let lab: Lab;
  let backend: RedirectBackend;
  let stateDir: string;
  let pod: LabPod; // enrolled, IPv4 only (IPv6 capture off): its link-local is its only IPv6
  let attacker: LabPod; // not enrolled, on the same bridge
  let sh: { pod: PodShell; attacker: PodShell; node: PodShell };
  let podLL: string;
  let nodeLL: string;

  const appCount = async (): Promise<number> => (await sh.pod.accepted((await sh.pod.listenerByTag('app')).id)).length;

  beforeAll(async () => {
    lab = await Lab.create();
    stateDir = mkdtempSync(join(tmpdir(), `${lab.prefix}state`));
    backend = await createBackend(name, { cgroupPath: lab.cgroupPath, pinRoot: `/sys/fs/bpf/${lab.prefix}inpod`, stateDir });
    [pod, attacker] = await Promise.all(['pod', 'attacker'].map((n) => lab.addPod(n)));
    sh = {
      pod: await lab.shell(pod.netnsPath, { inCgroup: true }),
      attacker: await lab.shell(attacker.netnsPath, { inCgroup: true }),
      node: await lab.shell(lab.nodeNetnsPath, { inCgroup: false }),
    };
    await sh.pod.listen({ host: '::', port: 8080, tag: 'app' });
    await sh.node.listen({ host: '::', port: 8888, tag: 'node8888' });
    // before enrollment both link-local paths work (so what follows tests capture, not DAD)
    await until('the link-local addresses to be usable', () => !!(podLL = linkLocal(pod.netnsPath, 'eth0')!) && !!(nodeLL = linkLocal(lab.nodeNetnsPath, lab.node.bridge)!), { timeoutMs: 5000 });
    await until('the app to answer over link-local IPv6', async () => {
      const r = await sh.attacker.connect({ host: `${podLL}%eth0`, port: 8080, send: 'x', timeoutMs: 500 });
      return r.ok && r.reply === 'app:x';
    }, { timeoutMs: 5000 });
    await until('the node to answer the pod over link-local IPv6', async () => {
      const r = await sh.pod.connect({ host: `${nodeLL}%eth0`, port: 8888, send: 'x', timeoutMs: 500 });
      return r.ok && r.reply === 'node8888:x';
    }, { timeoutMs: 5000 });
    await backend.install();
    await backend.enroll(pod.netnsPath);
    await sh.pod.listen({ host: '::', port: 15001, tag: 'proxy15001' });
    await sh.pod.listen({ host: '::', port: 15006, tag: 'proxy15006' });
  });

  afterAll(async () => {
    await backend?.uninstall().catch(() => {});
    await lab?.destroy();
    if (stateDir) rmSync(stateDir, { recursive: true, force: true });
  });

  it("connects to an enrolled pod's link-local address from its bridge: never reaches the app", async () => {
    const before = await appCount();
    const r = await sh.attacker.connect({ host: `${podLL}%eth0`, port: 8080, send: 'x', timeoutMs: 1000 });
    if (name === 'iptables') expect(r.ok && r.reply).toBe('proxy15006:x'); // REDIRECTed, as Istio's ip6tables rules do
    else expect(r.ok ? r.reply : r.error).toMatch(/^(ETIMEDOUT|ECONNREFUSED|ECONNRESET)$/); // dropped: no netns to steer to
    expect(await appCount()).toBe(before);
  });

  it('connects from an enrolled IPv4-only pod over native IPv6 (the node, link-local): never reaches the node', async () => {
    const before = (await sh.node.accepted((await sh.node.listenerByTag('node8888')).id)).length;
    const r = await sh.pod.connect({ host: `${nodeLL}%eth0`, port: 8888, send: 'x', timeoutMs: 1000 });
    // eBPF: connect6 sends it to the proxy's [::1]:15001. iptables: REDIRECTed to ::1, which a
    // socket scoped to eth0 cannot reach: it never connects (as under Istio's own rules)
    if (name === 'ebpf') expect(r.ok && r.reply).toBe('proxy15001:x');
    else expect(r.ok ? r.reply : r.error).toMatch(/^(ETIMEDOUT|ECONNREFUSED|ENETUNREACH|EHOSTUNREACH)$/);
    expect((await sh.node.accepted((await sh.node.listenerByTag('node8888')).id)).length).toBe(before);
  });
});
