/**
 * Istio 1.24's in-pod ambient rules, as iptables-restore input (pure: tested against golden
 * files). Applied with --noflush inside the pod netns: the ISTIO_ chains are (re)declared, which
 * flushes them, and refilled, so a second apply replaces the first atomically per table.
 */
import { familyOf, type PodSettings } from './backend.js';
import { MARKS, PORTS } from '../istio.js';

/** A mark as iptables-save prints it, under Istio's mask ("0x539/0xfff"). */
const masked = (mark: number): string => `0x${mark.toString(16)}/0x${MARKS.mask.toString(16)}`;

export const PROXY_MARK = masked(MARKS.proxy);
export const CONNMARK = masked(MARKS.connmark);
const { outbound: OUTBOUND_PORT, inboundPlaintext: INBOUND_PORT, hbone: HBONE_PORT, dns: DNS_PORT } = PORTS;

export type Table = 'raw' | 'mangle' | 'nat';

export type Family = 4 | 6;
export const FAMILIES: readonly Family[] = [4, 6];

/** The iptables command of a family and flavor: iptables-nft, ip6tables-legacy, ... */
export function ipt(family: Family, flavor: 'legacy' | 'nft'): string {
  return `${family === 4 ? 'iptables' : 'ip6tables'}-${flavor}`;
}

/**
 * The rules for one pod and one address family (4: iptables, 6: ip6tables), per table, in
 * iptables-save syntax (without the jump rules). The two families differ only where Istio's
 * AppendVersionedRule does: the loopback address (127.0.0.1/32, ::1/128) and the probe source
 * (PodSettings.probeSource, probeSource6); each family takes the excluded CIDRs of its own.
 */
export function podRules(s: PodSettings, family: Family = 4): Record<Table, string[]> {
  const host = family === 4 ? '/32' : '/128';
  const lo = family === 4 ? '127.0.0.1/32' : '::1/128';
  const probe = `${family === 4 ? s.probeSource : s.probeSource6}${host}`;
  const nat: string[] = [];
  nat.push(`-A ISTIO_PRERT -s ${probe} -p tcp -m tcp -j ACCEPT`);
  for (const p of s.excludeInboundPorts) nat.push(`-A ISTIO_PRERT -p tcp -m tcp --dport ${p} -j ACCEPT`);
  nat.push(`-A ISTIO_PRERT ! -d ${lo} -p tcp -m tcp ! --dport ${HBONE_PORT} -m mark ! --mark ${PROXY_MARK} -j REDIRECT --to-ports ${INBOUND_PORT}`);
  nat.push(`-A ISTIO_OUTPUT -d ${probe} -p tcp -m tcp -j ACCEPT`);
  if (s.dnsCapture) {
    nat.push(`-A ISTIO_OUTPUT ! -o lo -p udp -m mark ! --mark ${PROXY_MARK} -m udp --dport 53 -j REDIRECT --to-ports ${DNS_PORT}`);
    nat.push(`-A ISTIO_OUTPUT ! -d ${lo} -p tcp -m tcp --dport 53 -m mark ! --mark ${PROXY_MARK} -j REDIRECT --to-ports ${DNS_PORT}`);
  }
  for (const p of s.excludeOutboundPorts) nat.push(`-A ISTIO_OUTPUT -p tcp -m tcp --dport ${p} -j ACCEPT`);
  for (const c of s.excludeOutboundCidrs.filter((x) => familyOf(x) === family)) nat.push(`-A ISTIO_OUTPUT -d ${c.includes('/') ? c : `${c}${host}`} -j ACCEPT`);
  nat.push(`-A ISTIO_OUTPUT -p tcp -m mark --mark ${CONNMARK} -j ACCEPT`);
  nat.push(`-A ISTIO_OUTPUT ! -d ${lo} -o lo -j ACCEPT`);
  nat.push(`-A ISTIO_OUTPUT ! -d ${lo} -p tcp -m mark ! --mark ${PROXY_MARK} -j REDIRECT --to-ports ${OUTBOUND_PORT}`);

  const mangle = [
    `-A ISTIO_OUTPUT -m connmark --mark ${CONNMARK} -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff`,
    `-A ISTIO_PRERT -m mark --mark ${PROXY_MARK} -j CONNMARK --set-xmark ${CONNMARK}`,
  ];
  const raw = s.dnsCapture
    ? [
        `-A ISTIO_OUTPUT -p udp -m mark --mark ${PROXY_MARK} -m udp --dport 53 -j CT --zone 1`,
        `-A ISTIO_PRERT -p udp -m mark ! --mark ${PROXY_MARK} -m udp --sport 53 -j CT --zone 1`,
      ]
    : [];
  return { raw, mangle, nat };
}

const TABLES: Table[] = ['raw', 'mangle', 'nat'];

/**
 * iptables-restore --noflush input installing `rules`. `hasJumps[table]` says whether the
 * PREROUTING/OUTPUT jumps into the ISTIO_ chains already exist (then they are not added twice).
 */
export function restoreInput(rules: Record<Table, string[]>, hasJumps: Record<Table, boolean>, hasDrain = false): string {
  const out: string[] = [];
  for (const t of TABLES) {
    if (rules[t].length === 0 && !hasJumps[t]) continue;
    out.push(`*${t}`, ':ISTIO_PRERT - [0:0]', ':ISTIO_OUTPUT - [0:0]');
    if (t === 'mangle' && hasDrain) out.push(`:${DRAIN_CHAIN} - [0:0]`, `-X ${DRAIN_CHAIN}`);
    if (!hasJumps[t]) out.push('-A PREROUTING -j ISTIO_PRERT', '-A OUTPUT -j ISTIO_OUTPUT');
    out.push(...rules[t], 'COMMIT');
  }
  return `${out.join('\n')}\n`;
}

/**
 * Connection tracking in a netns stays on only while a rule needs it; removing the REDIRECTs
 * would switch it off and with it the NAT of connections already redirected, cutting them. So
 * unenroll leaves one unreferenced chain whose only rule needs conntrack (it sees no packet),
 * and the next enroll removes it.
 */
export const DRAIN_CHAIN = 'ISTIO_DRAIN';
const DRAIN_RULE = `-A ${DRAIN_CHAIN} -m conntrack --ctstate DNAT -j RETURN`;

/**
 * iptables-restore --noflush input removing the ISTIO_ chains of `present` tables and the jumps
 * that exist, leaving the drain chain in mangle.
 */
export function removalInput(present: Table[], jumps: Table[]): string {
  const out: string[] = [];
  for (const t of present) {
    out.push(`*${t}`, ':ISTIO_PRERT - [0:0]', ':ISTIO_OUTPUT - [0:0]');
    if (t === 'mangle') out.push(`:${DRAIN_CHAIN} - [0:0]`, DRAIN_RULE);
    if (jumps.includes(t)) out.push('-D PREROUTING -j ISTIO_PRERT', '-D OUTPUT -j ISTIO_OUTPUT');
    out.push('-X ISTIO_PRERT', '-X ISTIO_OUTPUT', 'COMMIT');
  }
  return `${out.join('\n')}\n`;
}

/** Parses iptables-save output: which tables have the ISTIO_PRERT chain, and with jumps. */
export function inspectSave(save: string): { chains: Table[]; jumps: Table[]; drain: boolean } {
  const chains: Table[] = [];
  const jumps: Table[] = [];
  let drain = false;
  let table: Table | null = null;
  for (const line of save.split('\n')) {
    if (line.startsWith('*')) table = line.slice(1).trim() as Table;
    else if (table && TABLES.includes(table)) {
      if (line.startsWith(':ISTIO_PRERT ') && !chains.includes(table)) chains.push(table);
      if (line === '-A PREROUTING -j ISTIO_PRERT' && !jumps.includes(table)) jumps.push(table);
      if (table === 'mangle' && line.startsWith(`:${DRAIN_CHAIN} `)) drain = true;
    }
  }
  return { chains, jumps, drain };
}

/**
 * istio-cni's host rule for kubelet probes (istio cni/pkg/iptables/iptables.go AppendHostRules,
 * testdata/hostprobe.golden), installed in the node's netns: a TCP connection that a local socket
 * (`--socket-exists`: kubelet, never a forwarded packet) opens to a captured pod leaves with the
 * probe source, which the pod's own rules let through (ISTIO_PRERT -s <probe source> ACCEPT).
 * Istio matches an ipset of the pod IPs; here each pod IP is one rule that enroll adds and
 * unenroll removes, so no ipset tool is needed (the chain is walked once per new connection
 * the node itself opens).
 */
export const HOST_CHAIN = 'ISTIO_POSTRT';

/**
 * One pod IP's rule, in iptables-save's own form (after "-A ISTIO_POSTRT "): an IPv4 pod IP's for
 * iptables with the IPv4 probe source, an IPv6 one's for ip6tables with the IPv6 probe source
 * (testdata/hostprobe_ipv6.golden: istio-inpod-probes-v6 SNATs to fd16:9254:7127:1337:ffff:ffff:ffff:ffff).
 */
export function hostProbeRule(podIp: string, probeSource: string): string {
  return `-d ${podIp}${familyOf(podIp) === 4 ? '/32' : '/128'} -p tcp -m owner --socket-exists -j SNAT --to-source ${probeSource}`;
}

/** The rules of the host chain in `iptables-save -t nat` output, with the pod IP each names. */
export function hostRulesInSave(save: string): { ip: string; rule: string }[] {
  const out: { ip: string; rule: string }[] = [];
  for (const line of save.split('\n')) {
    const m = /^-A ISTIO_POSTRT (-d (\d+\.\d+\.\d+\.\d+|[0-9a-f:]+)\/(?:32|128) .*)$/.exec(line.trim());
    if (m) out.push({ ip: m[2]!, rule: m[1]! });
  }
  return out;
}

/**
 * A shell script (run inside the node's netns, `ipt` the iptables command) that makes sure the
 * chain and its jump from nat POSTROUTING exist (first, as Istio inserts it) and then `rules`,
 * each once. Concurrent runs may add a jump or a rule twice, which changes nothing (SNAT ends the
 * chain) and removal takes every copy; `-w` waits for the xtables lock.
 */
export function hostAddScript(ipt: string, rules: string[]): string {
  const t = `${ipt} -w -t nat`;
  return [
    `${t} -N ${HOST_CHAIN} 2>/dev/null || true`,
    `${t} -C POSTROUTING -j ${HOST_CHAIN} 2>/dev/null || ${t} -I POSTROUTING 1 -j ${HOST_CHAIN}`,
    ...rules.map((r) => `${t} -C ${HOST_CHAIN} ${r} 2>/dev/null || ${t} -A ${HOST_CHAIN} ${r}`),
  ].join('\n');
}

/** A shell script removing every copy of `rules` from the host chain. */
export function hostDeleteScript(ipt: string, rules: string[]): string {
  const t = `${ipt} -w -t nat`;
  return [...rules.map((r) => `while ${t} -C ${HOST_CHAIN} ${r} 2>/dev/null; do ${t} -D ${HOST_CHAIN} ${r} || exit 1; done`), 'true'].join('\n');
}

/** A shell script removing the host chain and its jumps (uninstall). */
export function hostRemoveScript(ipt: string): string {
  const t = `${ipt} -w -t nat`;
  return [
    `while ${t} -C POSTROUTING -j ${HOST_CHAIN} 2>/dev/null; do ${t} -D POSTROUTING -j ${HOST_CHAIN} || exit 1; done`,
    `if ${t} -S ${HOST_CHAIN} >/dev/null 2>&1; then ${t} -F ${HOST_CHAIN} && ${t} -X ${HOST_CHAIN}; fi`,
  ].join('\n');
}
