/**
 * Finds the network namespace of running pods in /proc, for pods no CNI event told the agent about
 * (they started before it): a process whose cgroup path names the pod uid (the kubelet's pod<uid>
 * cgroup; the systemd driver writes the uid with underscores). One pass over /proc answers for
 * every pod asked about, as istio-cni's PodNetnsProcFinder.FindNetnsForPods does
 * (cni/pkg/nodeagent/podcgroupns_linux.go), so a reconcile scans /proc once, not once per pod.
 */
import { readdirSync, readFileSync } from 'node:fs';

/** What the scan reads of /proc (a fake in tests). */
export interface ProcFs {
  /** the process ids, in /proc's order */
  pids(): string[];
  /** the contents of /proc/<pid>/cgroup, or null if the process is gone */
  cgroup(pid: string): string | null;
  /** the path of the process's netns (/proc/<pid>/ns/net) */
  netns(pid: string): string;
}

export const hostProc: ProcFs = {
  pids: () => readdirSync('/proc').filter((d) => /^\d+$/.test(d)),
  cgroup: (pid) => {
    try {
      return readFileSync(`/proc/${pid}/cgroup`, 'utf8');
    } catch {
      return null;
    }
  },
  netns: (pid) => `/proc/${pid}/ns/net`,
};

/**
 * For each uid, the netns paths (/proc/<pid>/ns/net) of the processes whose cgroup names it, in
 * /proc's order: the caller takes the first that opens as a netns. Uids no process names are
 * absent from the result.
 */
export function scanProc(uids: Iterable<string>, proc: ProcFs = hostProc): Map<string, string[]> {
  const needles = [...new Set(uids)].filter(Boolean).map((uid) => ({ uid, names: [`pod${uid}`, `pod${uid.replace(/-/g, '_')}`] }));
  const found = new Map<string, string[]>();
  if (needles.length === 0) return found;
  for (const pid of proc.pids()) {
    const cg = proc.cgroup(pid);
    if (cg === null || !cg.includes('pod')) continue;
    for (const n of needles) {
      if (n.names.some((name) => cg.includes(name))) found.set(n.uid, [...(found.get(n.uid) ?? []), proc.netns(pid)]);
    }
  }
  return found;
}
