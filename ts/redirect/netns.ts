/** Facts about a pod network namespace, read from outside it. */
import { existsSync } from 'node:fs';
import { MeshError } from '../util/errors.js';
import { NSFS_MAGIC, netnsAddrs, netnsLocalRoute, netnsWrite, statfsType } from '../native/index.js';


/** Throws INPOD_ERR_NETNS unless `path` is a network namespace file. */
export function assertNetns(path: string): void {
  if (!existsSync(path)) {
    throw new MeshError('INPOD_ERR_NETNS', `network namespace ${path} does not exist: is the pod still running? ` +
      'pass the path the runtime gave (CNI_NETNS), e.g. /run/netns/<name> or /proc/<pid>/ns/net');
  }
  let type: number;
  try {
    type = statfsType(path);
  } catch (e) {
    throw new MeshError('INPOD_ERR_NETNS', `cannot read ${path}: ${(e as Error).message}`);
  }
  if (type !== NSFS_MAGIC) {
    throw new MeshError('INPOD_ERR_NETNS', `${path} is not a network namespace (not an nsfs file); ` +
      'pass a path like /run/netns/<name> or /proc/<pid>/ns/net');
  }
}

/**
 * The pod's IPv4 addresses. A pod with global IPv6 addresses is refused: IPv6 capture is not
 * implemented yet, and enrolling such a pod would let its IPv6 traffic bypass the proxy.
 */
export async function discoverPodIps(path: string): Promise<string[]> {
  const a = netnsAddrs(path);
  if (a.ipv6.length > 0) {
    throw new MeshError('INPOD_ERR_NETNS', `${path} has IPv6 addresses (${a.ipv6.join(', ')}); inpod captures IPv4 only ` +
      'and refuses rather than let IPv6 bypass the proxy: give the pod IPv4 only, or leave it out of the mesh');
  }
  if (a.ipv4.length === 0) {
    throw new MeshError('INPOD_ERR_NETNS', `${path} has no IPv4 address yet: enroll after the CNI plugins ` +
      'configured the pod network (inpod-cni must be last in the chain)');
  }
  return a.ipv4;
}

/**
 * The in-netns routing that lets the proxy's transparent upstream (bound to the client's IP,
 * marked 0x539 and re-marked `spoofMark` by connect4) get the app's replies back: the app's
 * accepted socket inherits the SYN's mark (tcp_fwmark_accept), and that mark routes locally.
 * fwmark_reflect does the same for what the kernel answers without a socket (the RST of a
 * closed port, ICMP errors): without it that reply takes the main table to the client's real
 * address and the proxy waits for its connect timeout. Only locally sent, marked packets carry
 * a mark here (a packet entering over the veth has none), so nothing else changes for the pod.
 * No iptables involved. Idempotent; `false` removes exactly this.
 */
export async function transparentReturnRouting(path: string, on: boolean, mark: number, table = 100): Promise<void> {
  try {
    netnsWrite(path, '/proc/sys/net/ipv4/tcp_fwmark_accept', on ? '1' : '0');
    netnsWrite(path, '/proc/sys/net/ipv4/fwmark_reflect', on ? '1' : '0');
    netnsLocalRoute(path, mark, table, 32763, on);
  } catch (e) {
    throw new MeshError('INPOD_ERR_NETNS', `setting up return routing in ${path} failed: ${(e as Error).message}`, { cause: e });
  }
}
