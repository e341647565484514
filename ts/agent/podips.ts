/**
 * A pod's addresses as the agent handles them (pure), both families: what the CNI plugin says
 * the pod got (prevResult.ips, cni/input.h), what the cluster says (status.podIPs), and what the
 * pod's netns really holds, which is what the capture layer is given. As istio-cni: the plugin
 * sends prevResult's IPs (cni/pkg/plugin/plugin.go CmdAdd, cni-watcher.go ReconcileCNIAddEvent),
 * pods found otherwise take status.podIPs, else status.podIP (cni/pkg/util/podutil.go
 * GetPodIPsIfPresent), and a netns found in /proc is the pod's only if it carries one of them
 * (podcgroupns_linux.go netnsPodIPChecker). ZDS carries no addresses (istio's zds.proto
 * WorkloadInfo is name, namespace, service account), so neither does inpod's.
 */
import { isIP } from 'node:net';
import { MeshError } from '../util/errors.js';
import { ipText } from '../util/sockaddr.js';
import type { PodObj } from './policy.js';

/** The global addresses of a netns, as the addon reads them (no loopback, no IPv6 link-local). */
export interface NetnsAddrs {
  ipv4: string[];
  ipv6: string[];
}

/** A pod address as the kernel writes it (the capture layer's form, ipText), or null if it is none. */
export function podAddress(ip: string): string | null {
  if (!isIP(ip) || ip.includes('%')) return null; // a zone (fe80::1%eth0) names no pod address
  return ipText(ip);
}

/** At most this many addresses per pod in an event (a pod has one per family; the plugin sends each once). */
const MAX_EVENT_IPS = 64;

/**
 * The `ips` of a plugin event, checked again: the agent's socket is a boundary of its own. A
 * list of addresses of either family, without prefix length; canonical, each once, IPv4 first.
 * Throws MeshError INPOD_ERR_CNI naming what is wrong.
 */
export function eventIps(x: unknown): string[] {
  if (x === undefined || x === null) return [];
  if (!Array.isArray(x) || x.length > MAX_EVENT_IPS) throw new MeshError('INPOD_ERR_CNI', `the CNI event's ips must be a list of at most ${MAX_EVENT_IPS} addresses; is inpod-cni of another version than the agent?`);
  const out = x.map((ip) => {
    const c = typeof ip === 'string' ? podAddress(ip) : null;
    if (c === null) throw new MeshError('INPOD_ERR_CNI', `the CNI event's ips hold ${JSON.stringify(ip)?.slice(0, 80)}, which is not an IP address; is inpod-cni of another version than the agent?`);
    return c;
  });
  return byFamily(out);
}

/** status.podIPs, both families, else status.podIP; canonical, each once, entries that are not addresses left out. */
export function statusPodIps(pod: PodObj | undefined): string[] {
  const listed = Array.isArray(pod?.status?.podIPs) ? pod!.status!.podIPs!.map((p) => p?.ip) : [];
  const raw = listed.length ? listed : [pod?.status?.podIP];
  return byFamily(raw.map((ip) => (typeof ip === 'string' ? podAddress(ip) : null)).filter((ip): ip is string => ip !== null));
}

/** Does the netns hold at least one of `ips`? (The ownership test of a netns found in /proc.) */
export function holdsAny(have: NetnsAddrs, ips: string[]): boolean {
  const set = new Set([...have.ipv4, ...have.ipv6]);
  return ips.some((ip) => set.has(ip));
}

/**
 * The addresses to capture a sandbox with: every global address its netns holds, both families,
 * so nothing of the pod's reaches it around the capture. Throws MeshError (not retryable):
 * INPOD_ERR_CNI if an address the CNI result named (`claimed`) is not in the netns (the result
 * is not this pod's, or lies); INPOD_ERR_NETNS if the netns has no address yet, or if it has
 * IPv6 addresses and the backend does not capture IPv6 (`ipv6`): the pod is refused rather than
 * enrolled with its IPv6 around the proxy (fail closed). `pod` names the pod in messages.
 */
export function captureAddresses(pod: string, claimed: string[], have: NetnsAddrs, ipv6: { capable: boolean; backend: string }): string[] {
  const all = byFamily([...have.ipv4, ...have.ipv6].map((ip) => podAddress(ip) ?? ip));
  const missing = claimed.filter((ip) => !all.includes(ip));
  if (missing.length) {
    throw new MeshError('INPOD_ERR_CNI', `the CNI result of pod ${pod} names ${missing.join(', ')}, which its network namespace does not hold ` +
      `(it holds ${all.join(', ') || 'no address'}); the plugins before inpod-cni reported another pod's addresses, or the netns is not the pod's`);
  }
  if (all.length === 0) {
    throw new MeshError('INPOD_ERR_NETNS', `pod ${pod} has no IPv4 or IPv6 address in its network namespace yet: inpod-cni must be last in the chain, after the plugin that configures the pod network`);
  }
  const v6 = all.filter((ip) => isIP(ip) === 6);
  if (v6.length && !ipv6.capable) {
    throw new MeshError('INPOD_ERR_NETNS', `pod ${pod} has IPv6 addresses (${v6.join(', ')}) and the ${ipv6.backend} backend does not capture IPv6; ` +
      'inpod refuses the pod rather than let its IPv6 traffic bypass the proxy: give the pod IPv4 only, or leave it out of the mesh');
  }
  return all;
}

/** Each once, IPv4 first, each family in the order given. */
function byFamily(ips: string[]): string[] {
  const uniq = [...new Set(ips)];
  return [...uniq.filter((ip) => isIP(ip) === 4), ...uniq.filter((ip) => isIP(ip) === 6)];
}
