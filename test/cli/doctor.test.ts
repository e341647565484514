/** `inpod doctor` finds a missing mount, a missing CNI entry and a leftover Istio chain, each with its fix. */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inpod } from '../cli.js';

interface Check {
  name: string;
  ok: boolean;
  detail: string;
  fix?: string;
}

describe('inpod doctor', () => {
  const ns = `doc${randomBytes(2).toString('hex')}`;
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'inpod-doctor-'));
    execFileSync('ip', ['netns', 'add', ns]);
    // a leftover from istio-cni: its chain, still in the pod netns
    execFileSync('nsenter', [`--net=/run/netns/${ns}`, 'iptables-nft', '-t', 'nat', '-N', 'ISTIO_OUTPUT']);
  });
  afterAll(() => {
    execFileSync('ip', ['netns', 'del', ns]);
    rmSync(dir, { recursive: true, force: true });
  });

  async function doctor(...args: string[]): Promise<{ code: number; checks: Check[] }> {
    const r = await inpod('doctor', '--json', '--agent-health', '', '--proxy-readiness', '', ...args);
    return { code: r.code, checks: JSON.parse(r.stdout) as Check[] };
  }
  const find = (checks: Check[], name: string): Check => checks.find((c) => c.name.startsWith(name))!;

  it('reports each problem with its fix, and exits non-zero', async () => {
    writeFileSync(join(dir, '10-calico.conflist'), JSON.stringify({ cniVersion: '1.0.0', name: 'k8s', plugins: [{ type: 'calico' }] }));
    const { code, checks } = await doctor('--bpffs', dir, '--cni-conf-dir', dir, '--netns', `/run/netns/${ns}`);
    expect(code).toBe(1);
    expect(find(checks, 'bpffs mounted')).toMatchObject({ ok: false, fix: expect.stringContaining(`mount -t bpf bpf ${dir}`) });
    expect(find(checks, 'inpod-cni in the CNI config')).toMatchObject({ ok: false, detail: expect.stringContaining('not chained'), fix: expect.stringMatching(/start the inpod agent/) });
    expect(find(checks, 'Istio iptables chains')).toMatchObject({ ok: false, detail: 'ISTIO_OUTPUT', fix: expect.stringContaining('inpod redirect unenroll') });
    expect(find(checks, 'kernel version').ok).toBe(true);
  });

  it('passes the same checks once the conditions are fixed', async () => {
    writeFileSync(join(dir, '10-calico.conflist'), JSON.stringify({ cniVersion: '1.0.0', name: 'k8s', plugins: [{ type: 'calico' }, { type: 'inpod-cni' }] }));
    execFileSync('nsenter', [`--net=/run/netns/${ns}`, 'iptables-nft', '-t', 'nat', '-X', 'ISTIO_OUTPUT']);
    const { checks } = await doctor('--bpffs', '/sys/fs/bpf', '--cni-conf-dir', dir, '--netns', `/run/netns/${ns}`);
    for (const name of ['bpffs mounted', 'inpod-cni in the CNI config', 'Istio iptables chains', 'cgroup2 mounted', 'kernel BTF', 'eBPF helper bpf_get_netns_cookie in sock_ops']) {
      expect(find(checks, name).ok, name).toBe(true);
    }
  });
});
