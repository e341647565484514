/** Facts about a pod network namespace, read from outside it. */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { promisify } from 'node:util';
import { MeshError } from '../util/errors.js';
import { NSFS_MAGIC, statfsType } from '../native/index.js';

const run = promisify(execFile);

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

export interface NetnsAddresses {
  ipv4: string[];
  ipv6: string[];
}

/** Global-scope addresses configured inside the netns (via `ip -j addr`, run in it with nsenter). */
export async function netnsAddresses(path: string): Promise<NetnsAddresses> {
  const { stdout } = await run('nsenter', [`--net=${path}`, 'ip', '-j', 'addr', 'show', 'scope', 'global']);
  const links = JSON.parse(stdout || '[]') as { addr_info?: { family: string; local: string }[] }[];
  const out: NetnsAddresses = { ipv4: [], ipv6: [] };
  for (const l of links) {
    for (const a of l.addr_info ?? []) {
      if (a.family === 'inet') out.ipv4.push(a.local);
      else if (a.family === 'inet6') out.ipv6.push(a.local);
    }
  }
  return out;
}

/**
 * The pod's IPv4 addresses. A pod with global IPv6 addresses is refused: IPv6 capture is not
 * implemented yet, and enrolling such a pod would let its IPv6 traffic bypass the proxy.
 */
export async function discoverPodIps(path: string): Promise<string[]> {
  const a = await netnsAddresses(path);
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
 * No iptables involved. Idempotent; `false` removes exactly this.
 */
export async function transparentReturnRouting(path: string, on: boolean, mark: number, table = 100): Promise<void> {
  const rule = `fwmark 0x${mark.toString(16)} lookup ${table}`;
  const script = on
    ? `sysctl -qw net.ipv4.tcp_fwmark_accept=1 && ` +
      `{ ip rule show | grep -q '${rule}' || ip rule add ${rule} pref 32763; } && ` +
      `ip route replace local 0.0.0.0/0 dev lo table ${table}`
    : `sysctl -qw net.ipv4.tcp_fwmark_accept=0; ` +
      `while ip rule show | grep -q '${rule}'; do ip rule del ${rule} || break; done; ` +
      `ip route del local 0.0.0.0/0 dev lo table ${table} 2>/dev/null; true`;
  try {
    await run('nsenter', [`--net=${path}`, 'sh', '-c', script]);
  } catch (e) {
    throw new MeshError('INPOD_ERR_NETNS', `setting up return routing in ${path} failed: ${(e as { stderr?: string }).stderr ?? (e as Error).message}`);
  }
}
