/**
 * The eBPF backend's per-pod map entries (bpf/include/maps.h), for both families: what enroll
 * writes for a pod, what unenroll erases and how list() reads them back. The IPv4 maps keep their
 * layout (inpod_enrolled, inpod_pod_ips, inpod_cidr_excl); a pod's IPv6 side sits beside them
 * (inpod_pod6, inpod_pod_ips6, inpod_cidr6_excl). Pure map work on maps the caller opened.
 */
import type { BpfMap } from '../native/index.js';
import {
  DIR_IN,
  DIR_OUT,
  POD_DNS_CAPTURE,
  decodeCidrKey,
  decodeCidr6Key,
  decodePod,
  decodePod6,
  decodePortKey,
  decodeU64,
  encodeCidrKey,
  encodeCidr6Key,
  encodeIp4Key,
  encodeIp6Key,
  encodePod,
  encodePod6,
  encodePortKey,
  encodeU64,
  readIp4,
  readIp6,
} from '../native/structs.js';
import { DEFAULT_SETTINGS, familyOf, type PodSettings } from './backend.js';

/** The pinned maps of every pod, by role. */
export interface PodMaps {
  enrolled: BpfMap;
  pod6: BpfMap;
  podIps: BpfMap;
  podIps6: BpfMap;
  portExcl: BpfMap;
  cidrExcl: BpfMap;
  cidr6Excl: BpfMap;
}

/** Their pin names. */
export const POD_MAP_PINS: Record<keyof PodMaps, string> = {
  enrolled: 'inpod_enrolled',
  pod6: 'inpod_pod6',
  podIps: 'inpod_pod_ips',
  podIps6: 'inpod_pod_ips6',
  portExcl: 'inpod_port_excl',
  cidrExcl: 'inpod_cidr_excl',
  cidr6Excl: 'inpod_cidr6_excl',
};

export function closePodMaps(maps: PodMaps): void {
  for (const m of Object.values(maps)) m.close();
}

/**
 * Writes everything of a pod but its gate (exclusions, addresses, the IPv6 side), replacing what
 * an earlier enroll wrote; `openGate` then makes the programs see it. Separate so that the caller
 * can attach sk_lookup in between: no connection sees a half-written pod.
 */
export function writePodEntries(maps: PodMaps, cookie: bigint, podIps: string[], s: PodSettings): void {
  const ip6 = podIps.filter((a) => familyOf(a) === 6);
  writeExclusions(maps, cookie, s);
  for (const ip of podIps.filter((a) => familyOf(a) === 4)) maps.podIps.update(encodeIp4Key(ip), encodeU64(cookie));
  for (const ip of ip6) maps.podIps6.update(encodeIp6Key(ip), encodeU64(cookie));
  if (ip6.length) maps.pod6.update(encodeU64(cookie), encodePod6({ ip6: ip6[0]!, probeIp6: s.probeSource6 }));
  else maps.pod6.delete(encodeU64(cookie));
}

/** The pod's inpod_enrolled entry: from now on its connections are captured. An IPv6-only pod's IPv4 is 0.0.0.0. */
export function openGate(maps: PodMaps, cookie: bigint, podIps: string[], s: PodSettings): void {
  const ip4 = podIps.find((a) => familyOf(a) === 4) ?? '0.0.0.0';
  maps.enrolled.update(encodeU64(cookie), encodePod({ ip4, probeIp4: s.probeSource, flags: s.dnsCapture ? POD_DNS_CAPTURE : 0 }));
}

/** Erases a pod's entries, the gate first: new connections go direct at once; established ones are untouched. */
export function erasePodEntries(maps: PodMaps, cookie: bigint): void {
  maps.enrolled.delete(encodeU64(cookie));
  maps.pod6.delete(encodeU64(cookie));
  for (const m of [maps.podIps, maps.podIps6]) {
    for (const k of m.keys()) {
      const v = m.lookup(k);
      if (v && decodeU64(v) === cookie) m.delete(k);
    }
  }
  writeExclusions(maps, cookie, null);
}

/** Replaces the pod's exclusion entries (null: remove them all); each CIDR goes to its family's trie. */
function writeExclusions(maps: PodMaps, cookie: bigint, s: PodSettings | null): void {
  for (const k of maps.portExcl.keys()) if (decodePortKey(k).netns === cookie) maps.portExcl.delete(k);
  for (const k of maps.cidrExcl.keys()) if (decodeCidrKey(k).netns === cookie) maps.cidrExcl.delete(k);
  for (const k of maps.cidr6Excl.keys()) if (decodeCidr6Key(k).netns === cookie) maps.cidr6Excl.delete(k);
  if (!s) return;
  const one = Buffer.from([1]);
  for (const p of s.excludeInboundPorts) maps.portExcl.update(encodePortKey(cookie, p, DIR_IN), one);
  for (const p of s.excludeOutboundPorts) maps.portExcl.update(encodePortKey(cookie, p, DIR_OUT), one);
  for (const c of s.excludeOutboundCidrs) {
    if (familyOf(c) === 4) maps.cidrExcl.update(encodeCidrKey(cookie, c), one);
    else maps.cidr6Excl.update(encodeCidr6Key(cookie, c), one);
  }
}

/** One enrolled pod as the maps hold it: its cookie, addresses and settings. */
export interface PodEntries {
  cookie: bigint;
  podIps: string[];
  settings: PodSettings;
}

/**
 * Every enrolled pod, read back from the maps. The IPv6 probe source of a pod without IPv6
 * addresses is in no map: `probeSource6` gives it (the record of its enroll, else the default).
 */
export function readPods(maps: PodMaps, probeSource6: (cookie: bigint) => string | undefined): PodEntries[] {
  const ips = new Map<bigint, string[]>();
  for (const [m, read] of [[maps.podIps, readIp4], [maps.podIps6, readIp6]] as const) {
    for (const k of m.keys()) {
      const v = m.lookup(k);
      if (!v) continue;
      const c = decodeU64(v);
      ips.set(c, [...(ips.get(c) ?? []), read(k, 0)]);
    }
  }
  const ports = maps.portExcl.keys().map(decodePortKey);
  const cidrs = [...maps.cidrExcl.keys().map(decodeCidrKey), ...maps.cidr6Excl.keys().map(decodeCidr6Key)];
  const out: PodEntries[] = [];
  for (const k of maps.enrolled.keys()) {
    const v = maps.enrolled.lookup(k);
    if (!v) continue;
    const cookie = decodeU64(k);
    const pod = decodePod(v);
    const v6 = maps.pod6.lookup(k);
    const podIps = ips.get(cookie) ?? [pod.ip4];
    out.push({
      cookie,
      podIps,
      settings: {
        podIps,
        probeSource: pod.probeIp4,
        probeSource6: v6 ? decodePod6(v6).probeIp6 : (probeSource6(cookie) ?? DEFAULT_SETTINGS.probeSource6),
        dnsCapture: (pod.flags & POD_DNS_CAPTURE) !== 0,
        excludeInboundPorts: ports.filter((p) => p.netns === cookie && p.dir === DIR_IN).map((p) => p.port).sort((a, b) => a - b),
        excludeOutboundPorts: ports.filter((p) => p.netns === cookie && p.dir === DIR_OUT).map((p) => p.port).sort((a, b) => a - b),
        excludeOutboundCidrs: cidrs.filter((c) => c.netns === cookie).map((c) => c.cidr).sort(),
      },
    });
  }
  return out;
}
