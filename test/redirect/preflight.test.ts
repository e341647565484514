import { describe, expect, it } from 'vitest';
import { checkEbpfHost, cgroup2Mount, kernelAtLeast, type HostFacts } from '../../ts/redirect/preflight.js';
import { BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC } from '../../ts/native/index.js';

const good: HostFacts = {
  kernelRelease: () => '6.18.44-test',
  exists: () => true,
  fsType: (p) => (p.startsWith('/sys/fs/bpf') ? BPF_FS_MAGIC : p.startsWith('/cg') ? CGROUP2_SUPER_MAGIC : 0xef53),
  progTypeSupported: () => true,
  helperSupported: () => true,
};
const opts = { pinRoot: '/sys/fs/bpf/inpod', cgroupPath: '/cg' };

function failure(host: Partial<HostFacts>, o = opts): { code: string; message: string } {
  try {
    checkEbpfHost(o, { ...good, ...host });
  } catch (e) {
    return e as { code: string; message: string };
  }
  throw new Error('expected a failure');
}

describe('eBPF backend start-up checks', () => {
  it('accepts a host with every requirement', () => {
    expect(() => checkEbpfHost(opts, good)).not.toThrow();
  });

  it('names the kernel version and the way out on an old kernel', () => {
    const e = failure({ kernelRelease: () => '5.4.0-150-generic' });
    expect(e.code).toBe('INPOD_ERR_KERNEL');
    expect(e.message).toMatch(/5\.4\.0.*older than 5\.15.*--backend iptables/);
  });

  it('says how to get BTF when /sys/kernel/btf/vmlinux is missing', () => {
    const e = failure({ exists: (p) => p !== '/sys/kernel/btf/vmlinux' });
    expect(e.code).toBe('INPOD_ERR_BTF');
    expect(e.message).toMatch(/CONFIG_DEBUG_INFO_BTF/);
  });

  it('says how to mount bpffs when the pin root is not on it', () => {
    const e = failure({}, { pinRoot: '/tmp/inpod', cgroupPath: '/cg' });
    expect(e.code).toBe('INPOD_ERR_BPFFS');
    expect(e.message).toMatch(/mount -t bpf bpf \/sys\/fs\/bpf/);
  });

  it('names the cgroup path and how to find cgroup2 when it is not cgroup2', () => {
    const e = failure({}, { pinRoot: '/sys/fs/bpf/inpod', cgroupPath: '/sys/fs/cgroup/cpu' });
    expect(e.code).toBe('INPOD_ERR_CGROUP');
    expect(e.message).toMatch(/\/sys\/fs\/cgroup\/cpu is not a cgroup2.*grep cgroup2 \/proc\/mounts/);
  });

  it('reports a missing program type by name', () => {
    const e = failure({ progTypeSupported: (t) => t !== 30 });
    expect(e.code).toBe('INPOD_ERR_KERNEL');
    expect(e.message).toMatch(/sk_lookup/);
  });

  it('names a helper a program type lacks, e.g. the netns cookie in sockops before 5.15', () => {
    const e = failure({ helperSupported: (t, h) => !(t === 13 && h === 122) });
    expect(e.code).toBe('INPOD_ERR_KERNEL');
    expect(e.message).toMatch(/bpf_get_netns_cookie to sock_ops programs.*since 5\.15.*--backend iptables/);
  });

  it('compares kernel versions numerically', () => {
    expect(kernelAtLeast('5.10.0', '5.10')).toBe(true);
    expect(kernelAtLeast('5.9.16', '5.10')).toBe(false);
    expect(kernelAtLeast('6.1.0-18-amd64', '5.10')).toBe(true);
  });

  it('finds the cgroup2 mount in a hybrid layout', () => {
    const mounts = 'cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n';
    expect(cgroup2Mount(mounts)).toBe('/sys/fs/cgroup/unified');
    expect(cgroup2Mount('proc /proc proc rw 0 0\n')).toBeNull();
  });
});
