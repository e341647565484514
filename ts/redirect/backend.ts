/**
 * The redirection layer's contract (shared/DESIGN.md, "The redirection contract").
 *
 * A backend captures the traffic of an enrolled pod inside the pod's own network namespace:
 * outbound TCP to the proxy's 15001 listener, inbound TCP to 15006 (15008 untouched), DNS to 15053
 * when asked, with the proxy's own sockets (SO_MARK 0x539), loopback, the pod's own IP and the
 * health-probe source left alone. Both backends give a proxy the same view (ports, marks,
 * SO_ORIGINAL_DST, getsockname), so a proxy cannot tell them apart.
 *
 * All state lives in the kernel (pinned maps and links, or rules inside the netns), never only in
 * the process that called enroll(): a later process, or `inpod redirect list`, sees the same state.
 */

export type BackendName = 'ebpf' | 'iptables';

/** Per-pod capture settings. Ports are host order; addresses are IPv4 or IPv6 strings. */
export interface PodSettings {
  /** The pod's addresses, IPv4 and IPv6 (discovered from the netns when omitted). */
  podIps?: string[];
  /** Source address of kubelet health probes after the host-side SNAT (IPv4). */
  probeSource: string;
  /** The same for IPv6 probes (Istio's HostProbeV6SNATAddress). */
  probeSource6: string;
  /** Capture DNS (UDP and TCP to port 53) to the proxy's 15053. */
  dnsCapture: boolean;
  /** Inbound destination ports never sent to the proxy. */
  excludeInboundPorts: number[];
  /** Outbound destination ports never sent to the proxy. */
  excludeOutboundPorts: number[];
  /** Outbound destination CIDRs ("10.0.0.0/8", "fd00::/8") never sent to the proxy. */
  excludeOutboundCidrs: string[];
}

import { isIP, isIPv4, isIPv6 } from 'node:net';
import { MeshError } from '../util/errors.js';
import { ipText } from '../util/sockaddr.js';
import { PROBE_SOURCE } from '../istio.js';
import type { NetnsRef } from './netns.js';

export type { NetnsRef, PodNetns } from './netns.js';

export const DEFAULT_SETTINGS: PodSettings = Object.freeze({
  probeSource: PROBE_SOURCE.ipv4,
  probeSource6: PROBE_SOURCE.ipv6,
  dnsCapture: false,
  excludeInboundPorts: [],
  excludeOutboundPorts: [],
  excludeOutboundCidrs: [],
}) as PodSettings;

/** One enrolled pod as the kernel state shows it. */
export interface EnrolledPod {
  /** The netns path the pod was enrolled with (as recorded at enrollment). */
  netns: string;
  backend: BackendName;
  /** Network namespace cookie (SO_NETNS_COOKIE), as a decimal string (it is a u64). */
  cookie: string;
  podIps: string[];
  settings: PodSettings;
}

/** Where capture state is kept for a backend instance. */
export interface BackendOptions {
  /** cgroup2 directory the eBPF socket hooks attach to (the cgroup2 root on a node). */
  cgroupPath?: string;
  /** bpffs directory for pins (default /sys/fs/bpf/inpod). */
  pinRoot?: string;
  /** Directory for the backends' records of enrolled pods (default /var/run/inpod). */
  stateDir?: string;
  /**
   * The node's own network namespace (the host's: kubelet's sockets live there), as a path. Its
   * local sockets' connections to an enrolled pod reach the app uncaptured: kubelet's probes
   * (eBPF: recorded at connect, ARCHITECTURE.md; iptables: Istio's host SNAT to the probe source,
   * installed in this netns). Forwarded traffic stays captured. Unset: no netns is the node's,
   * every connection to a pod is captured. The agent passes /proc/1/ns/net unless told otherwise.
   */
  hostNetns?: string;
  /**
   * Capture pods' IPv6 too, dual-stack and IPv6-only pods (istio-cni's ambient.ipv6, AMBIENT_IPV6),
   * where the backend can: RedirectBackend.ipv6 says whether it does. Unset or false, or a backend
   * that cannot: pods with IPv6 addresses are refused at enrollment.
   */
  ipv6?: boolean;
}

export interface RedirectBackend {
  readonly name: BackendName;
  /**
   * Captures IPv6 (issue 18): a pod with IPv6 addresses, dual-stack or IPv6-only, is enrolled
   * with its IPv6 traffic under the same contract as its IPv4. False: it cannot (or is set not
   * to), and the agent refuses such a pod at enrollment (ts/agent/podips.ts captureAddresses)
   * rather than capture its IPv4 and let its IPv6 around the proxy.
   */
  readonly ipv6: boolean;
  /**
   * Installs the host-level parts (eBPF: programs loaded, attached at the cgroup and pinned, the
   * host netns's cookie written; iptables: the probe SNAT chain in the host netns, when one is
   * named). Idempotent; a second call reuses what is pinned and rewrites the host netns setting.
   */
  install(): Promise<void>;
  /**
   * Captures the pod whose netns `netns` names: held open by the caller (the agent holds one per
   * pod sandbox), or a path that is opened once for the call. Idempotent: enrolling twice equals
   * once (the settings of the last call win). Throws MeshError INPOD_ERR_NETNS if the path is not a
   * network namespace, INPOD_ERR_OTHER_BACKEND if the other backend already captures it; nothing
   * is changed then. The record it leaves (list()) names the netns by the path it was opened from.
   */
  enroll(netns: NetnsRef, settings?: Partial<PodSettings>): Promise<EnrolledPod>;
  /** Stops capturing; established connections are not cut. Unknown pods are a no-op. */
  unenroll(netns: NetnsRef): Promise<void>;
  /** What this backend captures now, read back from the kernel. */
  list(): Promise<EnrolledPod[]>;
  /** Is this netns captured by this backend? */
  isEnrolled(netns: NetnsRef): Promise<boolean>;
  /**
   * After a restart: re-reads kernel state, repairs what is missing for the given pods (enroll is
   * idempotent) and unenrolls captured pods not in `keep` (told apart by netns cookie). Returns
   * the pods left enrolled.
   */
  reconcile(keep: Map<NetnsRef, Partial<PodSettings>>): Promise<EnrolledPod[]>;
  /** Removes the host-level parts (eBPF: links and pins). Pods must be unenrolled first. */
  uninstall(): Promise<void>;
}

/** Fills defaults and validates settings; sorted, deduplicated lists so records compare equal. */
export function normalizeSettings(p: Partial<PodSettings>): PodSettings {
  const s = { ...DEFAULT_SETTINGS, ...p };
  const ports = (xs: number[], what: string): number[] => {
    for (const port of xs) {
      if (!Number.isInteger(port) || port < 1 || port > 65535) throw new MeshError('INPOD_ERR_USAGE', `${what}: ${port} is not a TCP port (1-65535)`);
    }
    return [...new Set(xs)].sort((a, b) => a - b);
  };
  if (!isIPv4(s.probeSource)) throw new MeshError('INPOD_ERR_USAGE', `probe source "${s.probeSource}" is not an IPv4 address`);
  if (!isIPv6(s.probeSource6)) throw new MeshError('INPOD_ERR_USAGE', `IPv6 probe source "${s.probeSource6}" is not an IPv6 address`);
  const cidrs = s.excludeOutboundCidrs.map((c) => {
    const canon = canonicalCidr(c);
    if (!canon) throw new MeshError('INPOD_ERR_USAGE', `excluded CIDR "${c}" is not a CIDR like 10.0.0.0/8 or fd00::/8`);
    return canon;
  });
  return {
    ...s,
    probeSource6: ipText(s.probeSource6),
    podIps: s.podIps?.map((ip) => ipText(ip)),
    excludeInboundPorts: ports(s.excludeInboundPorts, 'excluded inbound port'),
    excludeOutboundPorts: ports(s.excludeOutboundPorts, 'excluded outbound port'),
    excludeOutboundCidrs: [...new Set(cidrs)].sort(),
  };
}

/** "addr" or "addr/len" of either family, canonical; null when it is neither. */
export function canonicalCidr(c: string): string | null {
  const [ip, len, ...rest] = c.split('/');
  const fam = ip ? isIP(ip) : 0;
  if (!fam || rest.length) return null;
  const max = fam === 4 ? 32 : 128;
  if (len !== undefined && !(/^\d+$/.test(len) && Number(len) <= max)) return null;
  return len === undefined ? ipText(ip!) : `${ipText(ip!)}/${Number(len)}`;
}

/** The address family of an address or CIDR: 4 or 6. */
export function familyOf(addrOrCidr: string): 4 | 6 {
  return addrOrCidr.includes(':') ? 6 : 4;
}
