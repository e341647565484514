/**
 * Start-up checks for the eBPF backend. Each failure is one MeshError that names the cause and
 * the fix. The facts are injected so that every branch is testable without breaking the host.
 */
import { existsSync } from 'node:fs';
import { release } from 'node:os';
import { dirname } from 'node:path';
import { MeshError } from '../util/errors.js';
import { BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC, addon, statfsType } from '../native/index.js';

/**
 * sk_lookup needs 5.9; bpf_link for cgroups 5.7; cgroup getsockopt and getpeername 5.8; the
 * netns cookie in sockops programs 5.15 (the last to arrive, so the minimum).
 */
export const MIN_KERNEL = '5.15';

export const PROG_TYPES: Record<string, number> = {
  sock_ops: 13,
  cgroup_sock_addr: 18,
  cgroup_sockopt: 25,
  sk_lookup: 30,
};

/**
 * Helpers the programs call that a kernel offers to some program types only, and later than
 * the program type itself (probed, not inferred from the version: distributions backport).
 */
export const PROG_HELPERS: { prog: string; helper: string; id: number; since: string }[] = [
  { prog: 'sock_ops', helper: 'bpf_get_netns_cookie', id: 122, since: '5.15' },
  { prog: 'sock_ops', helper: 'bpf_sk_storage_get', id: 107, since: '5.3' },
  { prog: 'sock_ops', helper: 'bpf_sock_ops_cb_flags_set', id: 59, since: '4.16' },
  { prog: 'sock_ops', helper: 'bpf_skc_to_tcp6_sock', id: 136, since: '5.9' },
  { prog: 'cgroup_sock_addr', helper: 'bpf_sk_storage_get', id: 107, since: '5.3' },
  { prog: 'cgroup_sockopt', helper: 'bpf_sk_storage_get', id: 107, since: '5.3' },
  { prog: 'cgroup_sockopt', helper: 'bpf_get_netns_cookie', id: 122, since: '5.15' },
];

export interface HostFacts {
  kernelRelease(): string;
  exists(path: string): boolean;
  fsType(path: string): number | null;
  progTypeSupported(type: number): boolean;
  helperSupported(progType: number, helper: number): boolean;
}

export const realHost: HostFacts = {
  kernelRelease: () => release(),
  exists: (p) => existsSync(p),
  fsType: (p) => {
    try {
      return statfsType(p);
    } catch {
      return null;
    }
  },
  progTypeSupported: (t) => addon().probeProgType(t) === 1,
  helperSupported: (t, h) => addon().probeHelper(t, h) === 1,
};

export function kernelAtLeast(rel: string, min: string): boolean {
  const [a = 0, b = 0] = rel.split(/[.-]/).map((x) => Number.parseInt(x, 10));
  const [ma = 0, mb = 0] = min.split('.').map(Number);
  return a > ma || (a === ma && b >= mb);
}

/** Throws the first unmet requirement. `pinRoot` may not exist yet; its parent must be bpffs. */
export function checkEbpfHost(opts: { pinRoot: string; cgroupPath: string }, host: HostFacts = realHost): void {
  const rel = host.kernelRelease();
  if (!kernelAtLeast(rel, MIN_KERNEL)) {
    throw new MeshError(
      'INPOD_ERR_KERNEL',
      `kernel ${rel} is older than ${MIN_KERNEL}, which the eBPF backend needs (sk_lookup, cgroup sockopt hooks, ` +
        'the netns cookie in sockops); ' +
        'upgrade the node kernel or run with --backend iptables',
    );
  }
  if (!host.exists('/sys/kernel/btf/vmlinux')) {
    throw new MeshError(
      'INPOD_ERR_BTF',
      'kernel BTF is missing (/sys/kernel/btf/vmlinux): use a kernel built with CONFIG_DEBUG_INFO_BTF=y, ' +
        'or run with --backend iptables',
    );
  }
  const bpffsDir = host.exists(opts.pinRoot) ? opts.pinRoot : dirname(opts.pinRoot);
  if (host.fsType(bpffsDir) !== BPF_FS_MAGIC) {
    throw new MeshError(
      'INPOD_ERR_BPFFS',
      `${bpffsDir} is not a bpf filesystem, so pins under ${opts.pinRoot} would not survive: ` +
        'mount it with "mount -t bpf bpf /sys/fs/bpf" (in Kubernetes, mount the host\'s /sys/fs/bpf into the agent)',
    );
  }
  if (host.fsType(opts.cgroupPath) !== CGROUP2_SUPER_MAGIC) {
    throw new MeshError(
      'INPOD_ERR_CGROUP',
      `${opts.cgroupPath} is not a cgroup2 directory: pass --cgroup with the cgroup v2 mount ` +
        '(find it with: grep cgroup2 /proc/mounts), or boot with systemd.unified_cgroup_hierarchy=1',
    );
  }
  for (const [name, type] of Object.entries(PROG_TYPES)) {
    if (!host.progTypeSupported(type)) {
      throw new MeshError(
        'INPOD_ERR_KERNEL',
        `this kernel (${rel}) cannot load ${name} programs; the eBPF backend needs them: ` +
          'upgrade the kernel or run with --backend iptables',
      );
    }
  }
  for (const { prog, helper, id, since } of PROG_HELPERS) {
    if (!host.helperSupported(PROG_TYPES[prog]!, id)) {
      throw new MeshError(
        'INPOD_ERR_KERNEL',
        `this kernel (${rel}) does not offer ${helper} to ${prog} programs (mainline has it since ${since}); ` +
          'the eBPF backend needs it: upgrade the kernel or run with --backend iptables',
      );
    }
  }
}

/** The cgroup2 mount point of this host, from /proc/mounts (never hard-coded). */
export function cgroup2Mount(mounts: string): string | null {
  for (const line of mounts.split('\n')) {
    const f = line.split(' ');
    if (f[2] === 'cgroup2' && f[1]) return f[1];
  }
  return null;
}
