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
import { PROBE_SOURCE } from '../../ts/istio.js';

const golden = (f: string): string => readFileSync(join(__dirname, 'golden', f), 'utf8');
const none = { raw: false, mangle: false, nat: false };
const exclusions = normalizeSettings({
  excludeInboundPorts: [9090, 8443],
  excludeOutboundPorts: [3306],
  excludeOutboundCidrs: ['10.96.0.0/12', '192.0.2.7', 'FD00:10:96::/108', '2001:db8::7'],
  probeSource: '10.0.0.1',
  probeSource6: 'fd00::1',
});

/**
 * istio cni/pkg/iptables/testdata/default_ipv6.golden, its ip6tables half (the rules Istio
 * restores with ip6tables when IPv6 is enabled and DNS capture is on), in Istio's command form;
 * the probe source there is the test's random IPv6 address.
 */
const ISTIO_DEFAULT_IPV6 = {
  probe: 'e9ac:1e77:90ca:399f:4d6d:ece2:2f9b:3164',
  mangle: [
    '-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff',
    '-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff',
  ],
  nat: [
    '-A ISTIO_PRERT -s e9ac:1e77:90ca:399f:4d6d:ece2:2f9b:3164 -p tcp -m tcp -j ACCEPT',
    '-A ISTIO_OUTPUT -d e9ac:1e77:90ca:399f:4d6d:ece2:2f9b:3164 -p tcp -m tcp -j ACCEPT',
    '-A ISTIO_PRERT ! -d ::1/128 -p tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006',
    '-A ISTIO_OUTPUT ! -o lo -p udp -m mark ! --mark 0x539/0xfff -m udp --dport 53 -j REDIRECT --to-port 15053',
    '-A ISTIO_OUTPUT ! -d ::1/128 -p tcp --dport 53 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15053',
    '-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT',
    '-A ISTIO_OUTPUT ! -d ::1/128 -o lo -j ACCEPT',
    '-A ISTIO_OUTPUT ! -d ::1/128 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001',
  ],
  raw: [
    '-A ISTIO_OUTPUT -p udp -m mark --mark 0x539/0xfff -m udp --dport 53 -j CT --zone 1',
    '-A ISTIO_PRERT -p udp -m mark ! --mark 0x539/0xfff -m udp --sport 53 -j CT --zone 1',
  ],
};

/** Istio's command form and iptables-save's differ only in what save spells out: /128 on a bare
 * address, "-m tcp" before a TCP port, --to-ports. Both sides are reduced to the same words. */
const words = (rule: string): string =>
  rule.replace(/ -m tcp/g, '').replace(/(-[sd] [0-9a-f:]+)\/128/g, '$1').replace('--to-port ', '--to-ports ');

describe('iptables rule generation', () => {
  it.each([
    ['default.rules', restoreInput(podRules(normalizeSettings({})), none)],
    ['dns-capture.rules', restoreInput(podRules(normalizeSettings({ dnsCapture: true })), none)],
    ['exclusions.rules', restoreInput(podRules(exclusions), none)],
    ['reenroll.rules', restoreInput(podRules(normalizeSettings({})), { raw: false, mangle: true, nat: true }, true)],
    ['removal.rules', removalInput(['mangle', 'nat'], ['mangle', 'nat'])],
    ['default6.rules', restoreInput(podRules(normalizeSettings({}), 6), none)],
    ['dns-capture6.rules', restoreInput(podRules(normalizeSettings({ dnsCapture: true }), 6), none)],
    ['exclusions6.rules', restoreInput(podRules(exclusions, 6), none)],
  ])('matches %s', (file, text) => {
    expect(text).toBe(golden(file));
  });

  it("writes istio-cni's ip6tables rules (default_ipv6.golden) for IPv6, table by table, in Istio's order", () => {
    const ours = podRules(normalizeSettings({ dnsCapture: true, probeSource6: ISTIO_DEFAULT_IPV6.probe }), 6);
    for (const table of ['mangle', 'nat', 'raw'] as const) {
      // Istio appends to both chains of a table in one sequence; each chain's own order is what counts
      for (const chain of ['ISTIO_PRERT', 'ISTIO_OUTPUT']) {
        const pick = (rules: string[]) => rules.filter((r) => r.startsWith(`-A ${chain} `)).map(words);
        expect(pick(ours[table]), `${table} ${chain}`).toEqual(pick(ISTIO_DEFAULT_IPV6[table]));
      }
    }
  });

  it('gives each family only its own excluded CIDRs, with its own loopback and probe source', () => {
    const v4 = podRules(exclusions, 4).nat.join('\n');
    const v6 = podRules(exclusions, 6).nat.join('\n');
    expect(v4).toContain('-d 10.96.0.0/12 -j ACCEPT');
    expect(v4).not.toMatch(/fd00|2001:db8|::1/);
    expect(v6).toContain('-A ISTIO_OUTPUT -d fd00:10:96::/108 -j ACCEPT');
    expect(v6).toContain('-A ISTIO_OUTPUT -d 2001:db8::7/128 -j ACCEPT');
    expect(v6).toContain('-A ISTIO_PRERT -s fd00::1/128 -p tcp -m tcp -j ACCEPT');
    expect(v6).not.toMatch(/10\.96|192\.0\.2|127\.0\.0\.1|10\.0\.0\.1/);
  });

  it('refuses settings that are no address of either family', () => {
    expect(() => normalizeSettings({ probeSource6: '10.0.0.1' })).toThrow(/IPv6 probe source/);
    expect(() => normalizeSettings({ excludeOutboundCidrs: ['fd00::/129'] })).toThrow(/not a CIDR/);
    expect(() => normalizeSettings({ excludeOutboundCidrs: ['10.0.0.0/33'] })).toThrow(/not a CIDR/);
    expect(normalizeSettings({ excludeOutboundCidrs: ['FD00:0:0::/64'] }).excludeOutboundCidrs).toEqual(['fd00::/64']);
  });

  it("writes istio-cni's host probe rule per pod IP, in iptables-save's own form", () => {
    // istio cni/pkg/iptables/testdata/hostprobe.golden, with the pod IP where Istio matches its ipset:
    // -A ISTIO_POSTRT -m owner --socket-exists -p tcp -m set --match-set istio-inpod-probes-v4 dst -j SNAT --to-source 169.254.7.127
    expect(hostProbeRule('10.200.1.2', '169.254.7.127')).toBe('-d 10.200.1.2/32 -p tcp -m owner --socket-exists -j SNAT --to-source 169.254.7.127');
    const save = `*nat\n:ISTIO_POSTRT - [0:0]\n-A POSTROUTING -j ISTIO_POSTRT\n-A ISTIO_POSTRT ${hostProbeRule('10.200.1.2', '169.254.7.127')}\nCOMMIT\n`;
    expect(hostRulesInSave(save)).toEqual([{ ip: '10.200.1.2', rule: hostProbeRule('10.200.1.2', '169.254.7.127') }]);
  });

  it("writes istio-cni's IPv6 host probe rule per IPv6 pod IP (hostprobe_ipv6.golden)", () => {
    // -A ISTIO_POSTRT -m owner --socket-exists -p tcp -m set --match-set istio-inpod-probes-v6 dst -j SNAT --to-source fd16:9254:7127:1337:ffff:ffff:ffff:ffff
    const rule = hostProbeRule('fd00:200::5', PROBE_SOURCE.ipv6);
    expect(rule).toBe('-d fd00:200::5/128 -p tcp -m owner --socket-exists -j SNAT --to-source fd16:9254:7127:1337:ffff:ffff:ffff:ffff');
    expect(hostRulesInSave(`*nat\n-A ISTIO_POSTRT ${rule}\nCOMMIT\n`)).toEqual([{ ip: 'fd00:200::5', rule }]);
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

  it('prints back exactly the rules written, DNS and exclusions included, IPv6 too', () => {
    const v6 = podRules(normalizeSettings({ ...exclusions, dnsCapture: true }), 6);
    inNs([`ip6tables-${flavor}-restore`, '--noflush'], restoreInput(v6, none));
    const saved6 = inNs([`ip6tables-${flavor}-save`]).split('\n');
    for (const table of ['raw', 'mangle', 'nat'] as const) {
      for (const line of v6[table]) expect(saved6, `ip6 ${table}: ${line}`).toContain(line);
    }
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
    // an IPv6 pod IP's rule goes to ip6tables, SNAT to the IPv6 probe source
    const rules6 = (): string[] => inNs([`ip6tables-${flavor}-save`, '-t', 'nat']).split('\n').filter((l) => l.startsWith('-A') && l.includes('ISTIO_POSTRT'));
    await host.add(['10.0.0.7', 'fd00:200::7'], '169.254.7.127', PROBE_SOURCE.ipv6);
    expect(rules()).toEqual(['-A POSTROUTING -j ISTIO_POSTRT', rule('10.0.0.7')]);
    expect(rules6()).toEqual(['-A POSTROUTING -j ISTIO_POSTRT', `-A ISTIO_POSTRT ${hostProbeRule('fd00:200::7', PROBE_SOURCE.ipv6)}`]);
    await host.remove(['fd00:200::7']);
    expect(rules6()).toEqual(['-A POSTROUTING -j ISTIO_POSTRT']);
    await host.add(['fd00:200::8'], '169.254.7.127', PROBE_SOURCE.ipv6);
    await host.prune(new Set(['10.0.0.7']));
    expect(rules6()).toEqual(['-A POSTROUTING -j ISTIO_POSTRT']);
    await host.uninstall();
    expect(inNs([`iptables-${flavor}-save`, '-t', 'nat'])).not.toMatch(/ISTIO_POSTRT/);
    expect(inNs([`ip6tables-${flavor}-save`, '-t', 'nat'])).not.toMatch(/ISTIO_POSTRT/);
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
