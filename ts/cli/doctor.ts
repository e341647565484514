/**
 * `inpod doctor`: checks this host and prints each check with pass/fail and the fix. The facts
 * come from the filesystem, the kernel and the running processes; the paths are settings so a
 * test can point the checks at scratch directories and namespaces.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { execFileSync } from 'node:child_process';
import { kernelAtLeast, MIN_KERNEL, PROG_HELPERS, PROG_TYPES, cgroup2Mount } from '../redirect/preflight.js';
import { BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC, addon, statfsType } from '../native/index.js';
import { primaryConfig, PLUGIN_TYPE } from '../cni/conflist.js';
import { PORTS } from '../istio.js';
import { release } from 'node:os';

export interface Check {
  name: string;
  ok: boolean;
  detail: string;
  fix?: string;
  /** a feature that is off by default: reported as "warn", not a failure of the node */
  optional?: boolean;
}

export interface DoctorOptions {
  bpffs: string;
  cgroup?: string;
  cniConfDir: string;
  netns: string[]; // pod namespaces to inspect for leftover Istio chains
  agentHealth?: string; // host:port
  proxyReadiness?: string; // host:port
}

function fsType(p: string): number | null {
  try {
    return statfsType(p);
  } catch {
    return null;
  }
}

export async function runChecks(o: DoctorOptions): Promise<Check[]> {
  const out: Check[] = [];
  const rel = release();
  out.push({ name: 'kernel version', ok: kernelAtLeast(rel, MIN_KERNEL), detail: rel, fix: `upgrade to Linux ${MIN_KERNEL} or newer, or run the agent with --backend iptables` });
  out.push({ name: 'kernel BTF', ok: existsSync('/sys/kernel/btf/vmlinux'), detail: '/sys/kernel/btf/vmlinux', fix: 'use a kernel built with CONFIG_DEBUG_INFO_BTF=y' });
  for (const [name, type] of Object.entries(PROG_TYPES)) {
    let ok = false;
    try {
      ok = addon().probeProgType(type) === 1;
    } catch {
      ok = false;
    }
    out.push({ name: `eBPF program type ${name}`, ok, detail: ok ? 'loadable' : 'not supported by this kernel', fix: 'upgrade the kernel or use --backend iptables' });
  }
  for (const { prog, helper, id, since } of PROG_HELPERS) {
    let ok = false;
    try {
      ok = addon().probeHelper(PROG_TYPES[prog]!, id) === 1;
    } catch {
      ok = false;
    }
    out.push({ name: `eBPF helper ${helper} in ${prog} programs`, ok, detail: ok ? 'available' : `not offered by this kernel (mainline since ${since})`, fix: `upgrade to Linux ${MIN_KERNEL} or newer, or use --backend iptables` });
  }
  let skSkb = false;
  try {
    skSkb = addon().probeProgType(14 /* BPF_PROG_TYPE_SK_SKB */) === 1;
  } catch {
    skSkb = false;
  }
  out.push({ name: 'eBPF program type sk_skb (kernel fast path)', ok: skSkb, optional: true, detail: skSkb ? 'loadable' : 'not supported by this kernel',
    fix: 'inpod ztunnel --fast-path on cannot splice here and relays in userspace; a kernel with CONFIG_BPF_STREAM_PARSER=y can' });
  out.push({ name: 'bpffs mounted', ok: fsType(o.bpffs) === BPF_FS_MAGIC, detail: o.bpffs, fix: `mount -t bpf bpf ${o.bpffs} (in Kubernetes: mount the host's /sys/fs/bpf into the agent)` });
  const cg = o.cgroup ?? cgroup2Mount(readFileSync('/proc/mounts', 'utf8'));
  out.push({ name: 'cgroup2 mounted', ok: !!cg && fsType(cg) === CGROUP2_SUPER_MAGIC, detail: cg ?? 'no cgroup2 mount in /proc/mounts', fix: 'mount cgroup2 (mount -t cgroup2 none /sys/fs/cgroup) or boot with systemd.unified_cgroup_hierarchy=1' });
  if (cg && fsType(cg) === CGROUP2_SUPER_MAGIC) {
    let others = '';
    try {
      others = execFileSync('bpftool', ['cgroup', 'show', cg], { encoding: 'utf8', timeout: 5000 }).split('\n').slice(1).filter((l) => l.trim() && !/inpod_/.test(l)).join('; ');
    } catch {
      others = '';
    }
    out.push({ name: 'other programs at the cgroup hooks', ok: others === '', detail: others || 'none besides inpod', fix: 'another mesh or a CNI socket load balancer is attached at the same hooks; check the order with bpftool cgroup show' });
  }
  const primary = primaryConfig(o.cniConfDir);
  let chained = false;
  let last = false;
  if (primary) {
    try {
      const doc = JSON.parse(readFileSync(primary, 'utf8')) as { plugins?: { type: string }[] };
      const types = (doc.plugins ?? []).map((p) => p.type);
      chained = types.includes(PLUGIN_TYPE);
      last = types.at(-1) === PLUGIN_TYPE;
    } catch {
      chained = false;
    }
  }
  out.push({
    name: 'inpod-cni in the CNI config',
    ok: chained && last,
    detail: primary ? `${primary}: ${chained ? (last ? 'chained last' : 'chained, but other plugins run after it') : 'not chained'}` : `no CNI config in ${o.cniConfDir}`,
    fix: 'start the inpod agent (it chains inpod-cni last into the primary conflist); until then new ambient pods start uncaptured',
  });
  for (const ns of o.netns) {
    let save = '';
    try {
      save = ['legacy', 'nft'].map((f) => {
        try {
          return execFileSync('nsenter', [`--net=${ns}`, `iptables-${f}-save`], { encoding: 'utf8', timeout: 5000 });
        } catch {
          return '';
        }
      }).join('\n');
    } catch {
      save = '';
    }
    const leftovers = [...new Set(save.split('\n').filter((l) => /^:ISTIO_/.test(l)).map((l) => l.split(' ')[0]!.slice(1)))];
    out.push({ name: `Istio iptables chains in ${ns}`, ok: leftovers.length === 0, detail: leftovers.length ? leftovers.join(', ') : 'none', fix: `left by istio-cni or an iptables-mode enrollment: run "inpod redirect unenroll --netns ${ns} --backend iptables", or remove the ISTIO_ chains` });
  }
  for (const [name, addr, path] of [['agent', o.agentHealth, '/healthz/ready'], ['proxy', o.proxyReadiness, '/healthz/ready']] as const) {
    if (!addr) continue;
    let ok = false;
    let detail = '';
    try {
      const r = await fetch(`http://${addr}${path}`, { signal: AbortSignal.timeout(2000) });
      ok = r.status === 200;
      detail = `${addr}: ${r.status} ${(await r.text()).trim()}`;
    } catch (e) {
      detail = `${addr}: ${(e as Error).message}`;
    }
    out.push({ name: `${name} up and connected`, ok, detail, fix: name === 'agent' ? 'start the inpod agent DaemonSet; see its logs' : 'start the inpod ztunnel DaemonSet; it connects to the agent over /var/run/ztunnel/ztunnel.sock' });
  }
  return out;
}

export async function doctorCommand(argv: string[]): Promise<number> {
  const { values: v } = parseArgs({
    args: argv,
    options: {
      bpffs: { type: 'string', default: '/sys/fs/bpf' },
      cgroup: { type: 'string' },
      'cni-conf-dir': { type: 'string', default: '/etc/cni/net.d' },
      netns: { type: 'string', multiple: true },
      'agent-health': { type: 'string', default: '127.0.0.1:15022' },
      'proxy-readiness': { type: 'string', default: `127.0.0.1:${PORTS.readiness}` },
      json: { type: 'boolean' },
    },
    strict: true,
  });
  const netns = v.netns ?? (existsSync('/run/netns') ? readdirSync('/run/netns').map((n) => join('/run/netns', n)) : []);
  const checks = await runChecks({ bpffs: v.bpffs!, cgroup: v.cgroup, cniConfDir: v['cni-conf-dir']!, netns, agentHealth: v['agent-health'] || undefined, proxyReadiness: v['proxy-readiness'] || undefined });
  if (v.json) process.stdout.write(`${JSON.stringify(checks, null, 2)}\n`);
  else {
    for (const c of checks) {
      process.stdout.write(`${c.ok ? 'pass' : c.optional ? 'warn' : 'FAIL'}  ${c.name}: ${c.detail}\n`);
      if (!c.ok && c.fix) process.stdout.write(`      fix: ${c.fix}\n`);
    }
  }
  return checks.every((c) => c.ok || c.optional) ? 0 : 1;
}
