/**
 * Many short IPv6 connections through eBPF capture (issue 18): an IPv6-only pod opens new
 * connections to another pod as fast as it can, each captured to the stand-in proxy's dual-stack
 * listener on [::]:15001, which echoes the bytes back. Every connection must be answered. The
 * capture rewrites each to [::1]:15001 from the pod's own IPv6 address, so the proxy's side is
 * `[::1]:15001 <-> [pod]:P` and ports come round again quickly (TIME_WAIT reuse): the bench's
 * connection-rate row found connections stalled there (answer never acknowledged, the port's next
 * SYN left in SYN-SENT). The cause: the pod's socketless answers to ::1 (RST, TIME_WAIT ACK) were
 * routed out of the pod by the link of its address and dropped (ts/redirect/netns.ts,
 * transparentReturnRouting). Real namespaces, the pod's processes in the lab's child cgroup.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackend } from '../../ts/redirect/factory.js';
import type { RedirectBackend } from '../../ts/redirect/backend.js';
import { Lab, type LabPod, type PodShell, until } from './lab.js';

/** connections every run must answer, all of them */
const CONNECTIONS = 12_000;
/** a narrow ephemeral range, so that every port comes round again a few times (as in the bench) */
const PORTS = '40000 43999';

describe('eBPF capture, IPv6-only pod, connection churn', () => {
  let lab: Lab;
  let backend: RedirectBackend;
  let stateDir: string;
  let pod: LabPod;
  let server: LabPod;
  let sh: PodShell;

  beforeAll(async () => {
    lab = await Lab.create();
    stateDir = mkdtempSync(join(tmpdir(), `${lab.prefix}state`));
    backend = await createBackend('ebpf', { cgroupPath: lab.cgroupPath, pinRoot: `/sys/fs/bpf/${lab.prefix}inpod`, stateDir, ipv6: true });
    [pod, server] = await Promise.all(['pod', 'server'].map((n) => lab.addPod(n, 'ipv6')));
    await backend.install();
    await backend.enroll(pod.netnsPath);
    execFileSync('nsenter', [`--net=${pod.netnsPath}`, 'sysctl', '-qw', `net.ipv4.ip_local_port_range=${PORTS}`, 'net.ipv4.tcp_tw_reuse=1']);
    sh = await lab.shell(pod.netnsPath, { inCgroup: true });
    // the stand-in proxy listens after enrollment, dual-stack as ztunnel does ([::], src/config.rs);
    // it answers and closes first, as an HTTP/1.0 server behind it would
    await sh.listen({ host: '::', port: 15001, tag: 'proxy15001', echo: true, hangup: true });
  });

  afterAll(async () => {
    await backend?.uninstall().catch(() => {});
    await lab?.destroy();
    if (stateDir) rmSync(stateDir, { recursive: true, force: true });
  });

  it("gets the pod's reset for a segment from [::1] to its own IPv6: a connect from [::1] to a closed port is refused, not timed out", async () => {
    // Every captured connection is [::1]:15001 <-> [pod]:P; the kernel answers such a segment
    // without a socket (RST, TIME_WAIT ACK) by the route of the pod address's link. Lost, the
    // proxy's side never learns the pod reset it, and the port's next connection stalls.
    const r = await sh.connect({ host: pod.ip6!, port: 9, bind: { host: '::1' }, timeoutMs: 2000 });
    expect(r).toMatchObject({ ok: false, error: 'ECONNREFUSED' });
  });

  it(`answers every one of ${CONNECTIONS} short IPv6 connections captured to [::1]:15001, none stalled`, async () => {
    // the server pod has no listener: an answer can only come from the capture's listener
    const id = await sh.churnStart({ host: server.ip6!, port: 8080, threads: 4, timeoutMs: 3000 });
    try {
      await until(`${CONNECTIONS} connections answered`, async () => {
        const c = await sh.churnPeek(id);
        return c.answered >= CONNECTIONS || Object.keys(c.errors).length > 0;
      }, { timeoutMs: 120_000, intervalMs: 250 });
    } finally {
      const c = await sh.churnStop(id);
      expect(c.errors).toEqual({});
      expect(c.answered).toBeGreaterThanOrEqual(CONNECTIONS);
    }
  }, 180_000);

  it('takes its ::1 route off the pod link again at unenroll, and adds it back at re-enroll', async () => {
    const onLink = (): boolean => /^local ::1 dev eth0/m.test(execFileSync('nsenter', [`--net=${pod.netnsPath}`, 'ip', '-6', 'route', 'show', 'table', 'local'], { encoding: 'utf8' }));
    expect(onLink()).toBe(true);
    await backend.unenroll(pod.netnsPath);
    expect(onLink()).toBe(false);
    await backend.enroll(pod.netnsPath);
    expect(onLink()).toBe(true);
  });
});
