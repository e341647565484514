/**
 * Istio's in-pod rules: generated text against golden files, then applied for real in a
 * throwaway netns with iptables-legacy and iptables-nft, where iptables-save must print back
 * exactly the rules we wrote (our text is in iptables' own canonical form).
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hostProbeRule, hostRulesInSave, inspectSave, podRules, removalInput, restoreInput } from '../../ts/redirect/iptables-rules.js';
import { HostProbeRules } from '../../ts/redirect/iptables-host.js';
import { normalizeSettings } from '../../ts/redirect/backend.js';
import { runProgram } from '../../ts/util/run.js';

const golden = (f: string): string => readFileSync(join(__dirname, 'golden', f), 'utf8');
const none = { raw: false, mangle: false, nat: false };
const exclusions = normalizeSettings({
  excludeInboundPorts: [9090, 8443],
  excludeOutboundPorts: [3306],
  excludeOutboundCidrs: ['10.96.0.0/12', '192.0.2.7'],
  probeSource: '10.0.0.1',
});

describe('iptables rule generation', () => {
  it.each([
    ['default.rules', restoreInput(podRules(normalizeSettings({})), none)],
    ['dns-capture.rules', restoreInput(podRules(normalizeSettings({ dnsCapture: true })), none)],
    ['exclusions.rules', restoreInput(podRules(exclusions), none)],
    ['reenroll.rules', restoreInput(podRules(normalizeSettings({})), { raw: false, mangle: true, nat: true }, true)],
    ['removal.rules', removalInput(['mangle', 'nat'], ['mangle', 'nat'])],
  ])('matches %s', (file, text) => {
    expect(text).toBe(golden(file));
  });

  it("writes istio-cni's host probe rule per pod IP, in iptables-save's own form", () => {
    // istio cni/pkg/iptables/testdata/hostprobe.golden, with the pod IP where Istio matches its ipset:
    // -A ISTIO_POSTRT -m owner --socket-exists -p tcp -m set --match-set istio-inpod-probes-v4 dst -j SNAT --to-source 169.254.7.127
    expect(hostProbeRule('10.200.1.2', '169.254.7.127')).toBe('-d 10.200.1.2/32 -p tcp -m owner --socket-exists -j SNAT --to-source 169.254.7.127');
    const save = `*nat\n:ISTIO_POSTRT - [0:0]\n-A POSTROUTING -j ISTIO_POSTRT\n-A ISTIO_POSTRT ${hostProbeRule('10.200.1.2', '169.254.7.127')}\nCOMMIT\n`;
    expect(hostRulesInSave(save)).toEqual([{ ip: '10.200.1.2', rule: hostProbeRule('10.200.1.2', '169.254.7.127') }]);
  });

  it('finds chains, jumps and the drain chain in iptables-save output', () => {
    const save = '*mangle\n:PREROUTING ACCEPT [0:0]\n:ISTIO_DRAIN - [0:0]\n:ISTIO_PRERT - [0:0]\n-A PREROUTING -j ISTIO_PRERT\nCOMMIT\n*nat\n:ISTIO_PRERT - [0:0]\nCOMMIT\n';
    expect(inspectSave(save)).toEqual({ chains: ['mangle', 'nat'], jumps: ['mangle'], drain: true });
  });
});

describe.each(['legacy', 'nft'])('rules applied with iptables-%s', (flavor) => {
  const ns = `ipr${randomBytes(2).toString('hex')}`;
  const inNs = (args: string[], input?: string): string =>
    execFileSync('nsenter', [`--net=/run/netns/${ns}`, ...args], { input, encoding: 'utf8' });
  beforeAll(() => execFileSync('ip', ['netns', 'add', ns]));
  afterAll(() => execFileSync('ip', ['netns', 'del', ns]));

  it('prints back exactly the rules written, DNS and exclusions included', () => {
    const rules = podRules(normalizeSettings({ ...exclusions, dnsCapture: true }));
    inNs([`iptables-${flavor}-restore`, '--noflush'], restoreInput(rules, none));
    const saved = inNs([`iptables-${flavor}-save`]).split('\n');
    for (const table of ['raw', 'mangle', 'nat'] as const) {
      for (const line of rules[table]) expect(saved, `${table}: ${line}`).toContain(line);
    }
    expect(saved).toContain('-A PREROUTING -j ISTIO_PRERT');
    // applied twice: still once
    const again = inspectSave(inNs([`iptables-${flavor}-save`]));
    inNs([`iptables-${flavor}-restore`, '--noflush'], restoreInput(rules, { raw: again.jumps.includes('raw'), mangle: again.jumps.includes('mangle'), nat: again.jumps.includes('nat') }));
    const twice = inNs([`iptables-${flavor}-save`]).split('\n');
    expect(twice.filter((l) => l.includes('REDIRECT --to-ports 15001'))).toHaveLength(1);
    expect(twice.filter((l) => l === '-A OUTPUT -j ISTIO_OUTPUT')).toHaveLength(3);
  });

  it('keeps the host probe rules: each once however often added, removed by pod IP, pruned, the chain gone at uninstall', async () => {
    const host = new HostProbeRules(`/run/netns/${ns}`, runProgram, flavor as 'legacy' | 'nft', () => [flavor as 'legacy' | 'nft']);
    const rules = (): string[] => inNs([`iptables-${flavor}-save`, '-t', 'nat']).split('\n').filter((l) => l.startsWith('-A') && l.includes('ISTIO_POSTRT'));
    const rule = (ip: string) => `-A ISTIO_POSTRT ${hostProbeRule(ip, '169.254.7.127')}`;
    await host.add(['10.0.0.5', '10.0.0.6'], '169.254.7.127');
    await host.add(['10.0.0.5', '10.0.0.6'], '169.254.7.127');
    expect(rules()).toEqual(['-A POSTROUTING -j ISTIO_POSTRT', rule('10.0.0.5'), rule('10.0.0.6')]);
    await host.remove(['10.0.0.5']);
    expect(rules()).toEqual(['-A POSTROUTING -j ISTIO_POSTRT', rule('10.0.0.6')]);
    await host.add(['10.0.0.7'], '169.254.7.127');
    await host.prune(new Set(['10.0.0.7']));
    expect(rules()).toEqual(['-A POSTROUTING -j ISTIO_POSTRT', rule('10.0.0.7')]);
    await host.uninstall();
    expect(inNs([`iptables-${flavor}-save`, '-t', 'nat'])).not.toMatch(/ISTIO_POSTRT/);
    await host.uninstall(); // twice: nothing to do
  });

  it('removes everything but the unreferenced drain chain', () => {
    const s = inspectSave(inNs([`iptables-${flavor}-save`]));
    inNs([`iptables-${flavor}-restore`, '--noflush'], removalInput(s.chains, s.jumps));
    const after = inNs([`iptables-${flavor}-save`]);
    expect(after).not.toMatch(/ISTIO_PRERT|ISTIO_OUTPUT/);
    expect(inspectSave(after)).toEqual({ chains: [], jumps: [], drain: true });
  });
});
