/**
 * Dual-stack and IPv6-only pods through the real CNI chain (issue 18): the Debian bridge plugin
 * with host-local ranges in 10.200.0.0/16 and fd00:200::/64 (one range per family, as a
 * dual-stack cluster's CNI config has them), then inpod-cni, as a runtime runs them, against the
 * agent (in this process, with its real socket, netns handling and address reading; a fake
 * cluster and proxy). The plugin passes the dual-stack prevResult through unchanged and hands the
 * agent both addresses; the agent records both and enrolls the pod with both when the backend
 * captures IPv6, and refuses the pod, through the same chain, while the backend does not (the
 * real eBPF backend on this branch: fail closed, nothing enrolled).
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent } from '../../ts/agent/agent.js';
import type { RedirectBackend } from '../../ts/redirect/backend.js';
import { createBackend } from '../../ts/redirect/factory.js';
import { runCniPlugin } from '../../ts/sim/node.js';
import { FakeBackend, FakeSource, FakeZds } from '../agent/fakes.js';
import { installedPlugin } from '../cni/run.js';
import { Lab } from './lab.js';

interface Result { cniVersion: string; interfaces: { name: string; sandbox?: string }[]; ips: { address: string; gateway?: string; interface?: number }[] }

describe('inpod-cni and the agent with dual-stack pods through bridge + host-local', () => {
  let lab: Lab;
  let dir: string;
  let cniPath: string;
  const netnses: string[] = [];
  const p = (f: string): string => join(dir, f);

  /** The chain's bridge entry: the lab node's bridge, host-local with one range per family asked for. */
  const bridge = (family: 'dual' | 'ipv6') => {
    const { cniVersion: _v, name: _n, ipam: _i, ...rest } = lab.node.netConf() as Record<string, unknown>;
    const v4 = [{ subnet: lab.node.subnet }];
    const v6 = [{ subnet: 'fd00:200::/64' }];
    return { ...rest, ipam: { type: 'host-local', dataDir: p('ipam'), ranges: family === 'dual' ? [v4, v6] : [v6], routes: family === 'dual' ? [{ dst: '0.0.0.0/0' }, { dst: '::/0' }] : [{ dst: '::/0' }] } };
  };
  const inpodEntry = (agentSocket: string) => ({ type: 'inpod-cni', agentSocket, meshView: p('no-view.json'), timeoutSeconds: 20 });
  const envOf = (name: string, uid: string) => ({
    CNI_CONTAINERID: `${lab.prefix}-${name}`, CNI_NETNS: `/run/netns/${lab.prefix}${name}`, CNI_IFNAME: 'eth0',
    CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=mesh;K8S_POD_NAME=${name};K8S_POD_UID=${uid}`,
  });
  /** A pod netns wired by the bridge plugin: its result (what inpod-cni gets as prevResult). */
  async function wire(name: string, uid: string, family: 'dual' | 'ipv6'): Promise<Result> {
    const ns = `${lab.prefix}${name}`;
    execFileSync('ip', ['netns', 'add', ns]);
    netnses.push(ns);
    execFileSync('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    return (await runCniPlugin('bridge', 'ADD', { cniVersion: '1.0.0', name: `${lab.prefix}net`, ...bridge(family) }, envOf(name, uid), lab.node.nodeNetns, cniPath)) as Result;
  }
  /** inpod-cni ADD as the runtime runs it after the bridge; its output, or the CNI error it printed. */
  async function inpodAdd(name: string, uid: string, sock: string, prevResult: Result): Promise<{ out?: unknown; error?: { code: number; msg: string } }> {
    try {
      return { out: await runCniPlugin('inpod-cni', 'ADD', { cniVersion: '1.0.0', name: `${lab.prefix}net`, ...inpodEntry(sock), prevResult }, envOf(name, uid), lab.node.nodeNetns, cniPath) };
    } catch (e) {
      return { error: JSON.parse((e as { cniOutput: string }).cniOutput) as { code: number; msg: string } };
    }
  }
  /** The addresses the kernel gave the pod's eth0, global scope, both families. */
  const kernelAddrs = (name: string): string[] =>
    (JSON.parse(execFileSync('ip', ['-n', `${lab.prefix}${name}`, '-j', 'addr', 'show', 'dev', 'eth0', 'scope', 'global']).toString()) as { addr_info: { local: string }[] }[])[0]!.addr_info.map((a) => a.local).filter(Boolean);
  /** The agent's sandbox records of a pod. */
  const records = (stateDir: string, uid: string): { ips?: string[] }[] =>
    readdirSync(join(stateDir, 'pods')).filter((f) => f.startsWith(uid)).map((f) => JSON.parse(readFileSync(join(stateDir, 'pods', f), 'utf8')) as { ips?: string[] });

  async function startAgent(backend: RedirectBackend, tag: string): Promise<{ agent: Agent; sock: string; stateDir: string; source: FakeSource }> {
    const source = new FakeSource();
    source.setNamespace('mesh', true, false);
    const zds = new FakeZds();
    const agent = new Agent({
      source, backend, stateDir: p(`state-${tag}`), zdsPath: '/unused', pluginSocket: p(`${tag}.sock`), podWaitMs: 0,
      zds: zds.factory, log: pino({ level: 'silent' }),
    });
    await agent.start();
    zds.connect();
    return { agent, sock: p(`${tag}.sock`), stateDir: p(`state-${tag}`), source };
  }

  beforeAll(async () => {
    lab = await Lab.create();
    dir = mkdtempSync(join(tmpdir(), `${lab.prefix}ds`));
    mkdirSync(p('ipam'));
    cniPath = `${dirname(installedPlugin(dir))}:/usr/lib/cni:/opt/cni/bin`;
  }, 30_000);

  afterAll(async () => {
    for (const ns of netnses) {
      try {
        execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
      } catch {
        /* gone */
      }
    }
    await lab?.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  describe('with a backend that captures IPv6', () => {
    const backend = new FakeBackend();
    backend.ipv6 = true;
    let a: Awaited<ReturnType<typeof startAgent>>;
    beforeAll(async () => {
      a = await startAgent(backend, 'v6');
    });
    afterAll(() => a?.agent.stop());

    it('a dual-stack pod: prevResult passed through unchanged, the agent records both IPs and enrolls the pod with both, as its netns holds them', async () => {
      a.source.setPod('mesh', 'dual', { uid: 'u-dual' }, false);
      const prev = await wire('dual', 'u-dual', 'dual');
      expect(prev.ips.map((x) => x.address)).toEqual([expect.stringMatching(/^10\.200\.\d+\.\d+\/24$/), expect.stringMatching(/^fd00:200::[0-9a-f:]+\/64$/)]);
      const r = await inpodAdd('dual', 'u-dual', a.sock, prev);
      expect(r.error).toBeUndefined();
      expect(r.out).toEqual(prev);
      const ips = prev.ips.map((x) => x.address.split('/')[0]);
      expect(records(a.stateDir, 'u-dual').map((x) => x.ips)).toEqual([ips]);
      const enrolled = [...backend.captured.values()].find((v) => v.netns.path === `/run/netns/${lab.prefix}dual`)!;
      expect(enrolled.settings.podIps).toEqual(ips);
      expect([...enrolled.settings.podIps!].sort()).toEqual(kernelAddrs('dual').sort());
      expect(a.agent.enrolled.has('u-dual')).toBe(true);
    }, 30_000);

    it('an IPv6-only pod: enrolled with its one IPv6 address', async () => {
      a.source.setPod('mesh', 'six', { uid: 'u-six' }, false);
      const prev = await wire('six', 'u-six', 'ipv6');
      const r = await inpodAdd('six', 'u-six', a.sock, prev);
      expect(r.error).toBeUndefined();
      const ip6 = prev.ips[0]!.address.split('/')[0];
      expect(ip6).toMatch(/^fd00:200::/);
      expect([...backend.captured.values()].find((v) => v.netns.path === `/run/netns/${lab.prefix}six`)!.settings.podIps).toEqual([ip6]);
    }, 30_000);
  });

  describe('with the real eBPF backend, which does not capture IPv6 on this branch', () => {
    let backend: RedirectBackend;
    let a: Awaited<ReturnType<typeof startAgent>>;
    beforeAll(async () => {
      backend = await createBackend('ebpf', { cgroupPath: lab.cgroupPath, pinRoot: `/sys/fs/bpf/${lab.prefix}inpod`, stateDir: p('state-ebpf') });
      await backend.install();
      a = await startAgent(backend, 'ebpf');
    }, 30_000);
    afterAll(async () => {
      a?.agent.stop();
      await backend?.uninstall().catch(() => {});
    });

    it('a dual-stack pod fails ADD with a CNI error naming its IPv6 address (fail closed): recorded with both IPs, never enrolled', async () => {
      expect(backend.ipv6).toBe(false);
      a.source.setPod('mesh', 'dual4', { uid: 'u-dual4' }, false);
      const prev = await wire('dual4', 'u-dual4', 'dual');
      const ip6 = prev.ips[1]!.address.split('/')[0]!;
      const r = await inpodAdd('dual4', 'u-dual4', a.sock, prev);
      expect(r.error).toMatchObject({ code: 11, msg: expect.stringContaining(`has IPv6 addresses (${ip6}) and the ebpf backend does not capture IPv6`) });
      expect(await backend.list()).toEqual([]);
      expect(a.agent.enrolled.has('u-dual4')).toBe(false);
      expect(records(a.stateDir, 'u-dual4').map((x) => x.ips)).toEqual([prev.ips.map((x) => x.address.split('/')[0])]);
    }, 30_000);
  });
});
