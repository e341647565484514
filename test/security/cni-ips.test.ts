/**
 * The pod IPs in CNI stdin (issue 18): prevResult.ips is what the capture layer takes as the
 * pod's addresses (inbound steering, host probe rules), so whoever writes the plugin before
 * inpod-cni, or the conflist, is an attacker here. Each case names what it tried; each must be
 * refused with the CNI spec's code for a bad network configuration (7) before the agent hears of
 * the pod, as the static plugin runs on a host (build/inpod-cni installed by the agent's installer).
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeAgent, installedPlugin, runCni } from '../cni/run.js';

const CNI_BIN = installedPlugin();
const SOCK = `${dirname(CNI_BIN)}/agent.sock`;
let agent: FakeAgent;
beforeAll(async () => {
  agent = new FakeAgent(SOCK);
  await agent.listen();
});
afterAll(async () => {
  await agent.close();
  rmSync(dirname(CNI_BIN), { recursive: true, force: true });
});

const NETNS = '/var/run/netns/pod-a';
const ENV = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c0ffee', CNI_NETNS: NETNS, CNI_IFNAME: 'eth0', CNI_ARGS: 'K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_UID=u1' };
const IFACES = [{ name: 'cni0' }, { name: 'veth9' }, { name: 'eth0', sandbox: NETNS }];
const conf = (ips: unknown, interfaces: unknown = IFACES): string =>
  JSON.stringify({ cniVersion: '1.0.0', name: 'k8s', type: 'inpod-cni', agentSocket: SOCK, meshView: '/nonexistent/view.json', prevResult: { cniVersion: '1.0.0', interfaces, ips } });
const v4 = { address: '10.200.1.5/24', interface: 2 };

describe('inpod-cni refuses pod IPs no pod can have (code 7, the agent never asked)', () => {
  it.each([
    ['names the IPv6 loopback ::1 as the pod\'s second address', [v4, { address: '::1/128', interface: 2 }], /::1\/128" is unspecified, loopback or IPv4-compatible/],
    ['names the unspecified address ::', [{ address: '::/0', interface: 2 }], /unspecified, loopback or IPv4-compatible/],
    ['names a link-local fe80:: address', [v4, { address: 'fe80::1/64', interface: 2 }], /link-local \(fe80::\/10\)/],
    ['names a multicast group ff02::1', [{ address: 'ff02::1/128', interface: 2 }], /multicast \(ff00::\/8\)/],
    ['hides an IPv4 address in IPv4-mapped IPv6 (::ffff:10.200.1.9)', [v4, { address: '::ffff:10.200.1.9/128', interface: 2 }], /IPv4-mapped/],
    ['claims the IPv6 health-probe source, so its traffic would pass as the node\'s probes', [v4, { address: 'fd16:9254:7127:1337:ffff:ffff:ffff:ffff/64', interface: 2 }], /the IPv6 health-probe source/],
    ['claims the IPv4 health-probe source 169.254.7.127', [{ address: '169.254.7.127/32', interface: 2 }], /link-local \(169\.254\.0\.0\/16/],
    ['names 127.0.0.1', [{ address: '127.0.0.1/8', interface: 2 }], /a loopback address/],
    ['writes an IPv6 address with a zone (fe80::1%eth0)', [{ address: 'fd00:200::5%eth0/64', interface: 2 }], /address must be an address with prefix length/],
    ['gives a prefix length of 129', [{ address: 'fd00:200::5/129', interface: 2 }], /address must be an address with prefix length/],
    ['gives a prefix length with a leading zero (/064)', [{ address: 'fd00:200::5/064', interface: 2 }], /address must be an address with prefix length/],
    ['gives an IPv6 address without prefix length', [{ address: 'fd00:200::5', interface: 2 }], /address must be an address with prefix length/],
    ['gives an address with two "::"', [{ address: 'fd00::200::5/64', interface: 2 }], /address must be an address with prefix length/],
    ['labels an IPv6 address version "4"', [{ version: '4', address: 'fd00:200::5/64' }], /ips\[0\]\.version must be "6"/],
    ['gives an IPv6 address an IPv4 gateway', [{ address: 'fd00:200::5/64', gateway: '10.200.1.1', interface: 2 }], /ips\[0\]\.gateway must be an IPv6 address/],
    ['points an IP at interface 7 of 3', [v4, { address: 'fd00:200::5/64', interface: 7 }], /ips\[1\]\.interface must be the index of an entry of prevResult\.interfaces/],
    ['points an IP at interface -1', [{ address: 'fd00:200::5/64', interface: -1 }], /ips\[0\]\.interface must be the index/],
    ['gives an interface index as a string', [{ address: 'fd00:200::5/64', interface: '2' }], /ips\[0\]\.interface must be the index/],
  ])('%s', async (_what, ips, msg) => {
    agent.requests.length = 0;
    const r = await runCni(CNI_BIN, ENV, conf(ips));
    expect(r.code).toBe(1);
    const err = JSON.parse(r.stdout) as { code: number; msg: string };
    expect(err.code).toBe(7);
    expect(err.msg).toMatch(msg);
    expect(agent.requests).toEqual([]);
  });

  it('puts a second pod\'s IPv6 address on an interface in another (real) netns: refused as not the pod\'s address; the same netns spelled another way passes', async () => {
    // two real network namespaces, named with a per-run prefix and removed whatever happens
    const [a, b] = ['a', 'b'].map((x) => `h18ag${randomBytes(3).toString('hex')}${x}`);
    try {
      for (const n of [a, b]) execFileSync('ip', ['netns', 'add', n]);
      const env = { ...ENV, CNI_NETNS: `/run/netns/${a}` };
      const ifaces = [{ name: 'veth9' }, { name: 'eth0', sandbox: `/run/netns/${a}` }, { name: 'eth0', sandbox: `/run/netns/${b}` }];
      agent.requests.length = 0;
      const r = await runCni(CNI_BIN, env, conf([{ address: '10.200.1.5/24', interface: 1 }, { address: 'fd00:200::9/64', interface: 2 }], ifaces));
      expect(JSON.parse(r.stdout)).toMatchObject({ code: 7, msg: expect.stringMatching(new RegExp(`fd00:200::9/64" is on interface 2 \\(eth0\\) in sandbox "/run/netns/${b}", not in the pod's network namespace`)) });
      expect(agent.requests).toEqual([]);
      const same = await runCni(CNI_BIN, env, conf([{ address: 'fd00:200::9/64', interface: 1 }], [{ name: 'veth9' }, { name: 'eth0', sandbox: `/var/run/netns/${a}` }]));
      expect(same.code, same.stdout).toBe(0);
    } finally {
      for (const n of [a, b]) {
        try {
          execFileSync('ip', ['netns', 'del', n!], { stdio: 'ignore' });
        } catch {
          /* not made */
        }
      }
    }
  });

  it('puts the node\'s own IPv6 address on the host-side veth of a result that names the pod\'s interfaces: refused', async () => {
    const r = await runCni(CNI_BIN, ENV, conf([v4, { address: 'fd00:200::1/64', interface: 1 }]));
    expect(JSON.parse(r.stdout)).toMatchObject({ code: 7, msg: expect.stringMatching(/is on interface 1 \(veth9\) on the host side \(no sandbox\)/) });
  });

  it('a result naming no sandbox at all (only host-side interfaces, as some plugins report) is passed on: the agent checks the addresses against the pod\'s netns', async () => {
    agent.requests.length = 0;
    const r = await runCni(CNI_BIN, ENV, conf([{ address: 'fd00:200::5/64', interface: 0 }], [{ name: 'cali123' }]));
    expect(r.code, r.stdout).toBe(0);
    expect((agent.requests[0]!.body as { ips: string[] }).ips).toEqual(['fd00:200::5']);
  });
});
