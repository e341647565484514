/**
 * `inpod redirect enroll|unenroll|list|uninstall`: the redirection layer driven directly, one
 * process per call. State lives in pins and in the pod netns, so separate invocations compose.
 * The --netns path is opened once per command; every backend call works on that fd.
 */
import { parseArgs } from 'node:util';
import { MeshError } from '../util/errors.js';
import { createBackend } from '../redirect/factory.js';
import { openNetns, type PodNetns } from '../redirect/netns.js';
import type { BackendName, BackendOptions, EnrolledPod, PodSettings } from '../redirect/backend.js';

const OPTIONS = {
  netns: { type: 'string' },
  backend: { type: 'string' },
  cgroup: { type: 'string' },
  'pin-root': { type: 'string' },
  'state-dir': { type: 'string' },
  'pod-ip': { type: 'string', multiple: true },
  'probe-source': { type: 'string' },
  'probe-source6': { type: 'string' },
  ipv6: { type: 'boolean' },
  'dns-capture': { type: 'boolean' },
  'exclude-inbound-ports': { type: 'string' },
  'exclude-outbound-ports': { type: 'string' },
  'exclude-outbound-cidrs': { type: 'string' },
  'host-netns': { type: 'string' },
} as const;

export const REDIRECT_USAGE = `usage:
  inpod redirect enroll   --netns PATH [--backend ebpf|iptables] [--cgroup PATH] [--dns-capture]
                          [--probe-source IP] [--probe-source6 IP] [--exclude-inbound-ports P,P]
                          [--exclude-outbound-ports P,P] [--exclude-outbound-cidrs CIDR,CIDR] [--pod-ip IP]...
                          [--ipv6: capture a pod's IPv6 too; without it a pod with IPv6 addresses is refused]
  inpod redirect unenroll --netns PATH [--backend ebpf|iptables]
  inpod redirect list     [--backend ebpf|iptables]
  inpod redirect uninstall [--backend ebpf|iptables]
common: [--pin-root DIR (default /sys/fs/bpf/inpod)] [--state-dir DIR (default /var/run/inpod)]
        [--host-netns PATH: the node's netns, whose own connections (kubelet's probes) reach pods
         uncaptured; enroll installs it, unenroll and uninstall remove its iptables rules (default: none)]`;

function ports(v: string | undefined, flag: string): number[] | undefined {
  if (v === undefined) return undefined;
  return v.split(',').filter(Boolean).map((p) => {
    const n = Number(p);
    if (!Number.isInteger(n) || n < 1 || n > 65535) throw new MeshError('INPOD_ERR_USAGE', `--${flag}: "${p}" is not a port`);
    return n;
  });
}

function backendName(v: string | undefined): BackendName | undefined {
  if (v === undefined) return undefined;
  if (v !== 'ebpf' && v !== 'iptables') throw new MeshError('INPOD_ERR_USAGE', `--backend ${v}: use ebpf or iptables`);
  return v;
}

/** Runs one redirect subcommand; returns what to print (JSON-able). */
export async function redirectCommand(argv: string[]): Promise<unknown> {
  const [sub, ...rest] = argv;
  const { values: v } = parseArgs({ args: rest, options: OPTIONS, strict: true });
  const opts: BackendOptions = { cgroupPath: v.cgroup, pinRoot: v['pin-root'], stateDir: v['state-dir'], hostNetns: v['host-netns'], ipv6: v.ipv6 };
  const chosen = backendName(v.backend);
  /** The pod's netns, opened once for the whole command (every backend call gets the same fd). */
  const needNetns = (): PodNetns => {
    if (!v.netns) throw new MeshError('INPOD_ERR_USAGE', `redirect ${sub} needs --netns PATH\n${REDIRECT_USAGE}`);
    return openNetns(v.netns);
  };
  switch (sub) {
    case 'enroll': {
      const settings: Partial<PodSettings> = {};
      if (v['pod-ip']) settings.podIps = v['pod-ip'];
      if (v['probe-source']) settings.probeSource = v['probe-source'];
      if (v['probe-source6']) settings.probeSource6 = v['probe-source6'];
      if (v['dns-capture']) settings.dnsCapture = true;
      const inPorts = ports(v['exclude-inbound-ports'], 'exclude-inbound-ports');
      const outPorts = ports(v['exclude-outbound-ports'], 'exclude-outbound-ports');
      if (inPorts) settings.excludeInboundPorts = inPorts;
      if (outPorts) settings.excludeOutboundPorts = outPorts;
      if (v['exclude-outbound-cidrs']) settings.excludeOutboundCidrs = v['exclude-outbound-cidrs'].split(',').filter(Boolean);
      const b = await createBackend(chosen ?? 'ebpf', opts);
      const ns = needNetns();
      try {
        // the host netns is a node-wide setting: written by install, also over an earlier one
        if (opts.hostNetns !== undefined) await b.install();
        return await b.enroll(ns, settings);
      } finally {
        ns.close();
      }
    }
    case 'unenroll': {
      const ns = needNetns();
      try {
        // Without --backend, undo whichever backend captures the pod.
        for (const name of chosen ? [chosen] : (['ebpf', 'iptables'] as const)) {
          const b = await createBackend(name, opts);
          if (!chosen && !(await b.isEnrolled(ns))) continue;
          await b.unenroll(ns);
          return { unenrolled: ns.path, backend: name };
        }
        return { unenrolled: ns.path, backend: null };
      } finally {
        ns.close();
      }
    }
    case 'list': {
      const out: EnrolledPod[] = [];
      for (const name of chosen ? [chosen] : (['ebpf', 'iptables'] as const)) out.push(...(await (await createBackend(name, opts)).list()));
      return out;
    }
    case 'uninstall': {
      for (const name of chosen ? [chosen] : (['ebpf', 'iptables'] as const)) await (await createBackend(name, opts)).uninstall();
      return { uninstalled: true };
    }
    default:
      throw new MeshError('INPOD_ERR_USAGE', REDIRECT_USAGE);
  }
}
