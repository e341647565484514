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
import { inspectSave, podRules, removalInput, restoreInput } from '../../ts/redirect/iptables-rules.js';
import { normalizeSettings } from '../../ts/redirect/backend.js';

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

  it('removes everything but the unreferenced drain chain', () => {
    const s = inspectSave(inNs([`iptables-${flavor}-save`]));
    inNs([`iptables-${flavor}-restore`, '--noflush'], removalInput(s.chains, s.jumps));
    const after = inNs([`iptables-${flavor}-save`]);
    expect(after).not.toMatch(/ISTIO_PRERT|ISTIO_OUTPUT/);
    expect(inspectSave(after)).toEqual({ chains: [], jumps: [], drain: true });
  });
});
