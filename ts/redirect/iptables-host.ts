/**
 * The iptables backend's part in the node's own netns: Istio's host SNAT of kubelet probes
 * (iptables-rules.ts, HOST_CHAIN), so that probes reach the app under the pod's own rules while
 * forwarded traffic stays captured. One rule per pod IP: added at enroll, removed at unenroll,
 * pruned to the enrolled pods at reconcile; the chain goes at uninstall. The netns is opened by
 * path for each change and entered through this process's fd, as the pods' netns are.
 *
 * A rule left behind (a pod that went without an unenroll) only SNATs the node's own connections
 * to that address: a pod that gets it next sees the node's probes from the probe source, which is
 * what Istio does for every captured pod. It never lets other traffic around a proxy.
 */
import { MeshError } from '../util/errors.js';
import type { Runner } from '../util/run.js';
import { netnsProcPath, withNetns, type PodNetns } from './netns.js';
import { hostAddScript, hostDeleteScript, hostProbeRule, hostRemoveScript, hostRulesInSave, ipt, FAMILIES, type Family } from './iptables-rules.js';
import { familyOf } from './backend.js';
import type { IptablesFlavor } from './iptables.js';

export class HostProbeRules {
  /**
   * @param netnsPath the node's netns (BackendOptions.hostNetns)
   * @param flavor    the iptables the backend writes with
   * @param installed the flavors present on this host (removal looks in each)
   */
  constructor(
    readonly netnsPath: string,
    private readonly run: Runner,
    private readonly flavor: IptablesFlavor,
    private readonly installed: () => IptablesFlavor[],
  ) {}

  /**
   * Makes sure the chain, its jump and one rule per pod IP exist, IPv4 pod IPs' in iptables
   * (SNAT to `probeSource`), IPv6 ones' in ip6tables (SNAT to `probeSource6`). The IPv4 chain is
   * made even with no IPv4 pod IP (install); the IPv6 one once a pod has an IPv6 address. Idempotent.
   */
  async add(podIps: string[], probeSource: string, probeSource6 = ''): Promise<void> {
    const v4 = podIps.filter((ip) => familyOf(ip) === 4);
    const v6 = podIps.filter((ip) => familyOf(ip) === 6);
    await this.#sh(this.flavor, hostAddScript(ipt(4, this.flavor), v4.map((ip) => hostProbeRule(ip, probeSource))), 'adding the probe rules');
    if (v6.length) await this.#sh(this.flavor, hostAddScript(ipt(6, this.flavor), v6.map((ip) => hostProbeRule(ip, probeSource6))), 'adding the IPv6 probe rules');
  }

  /** Removes the rules naming these pod IPs (whatever probe source they SNAT to), in every flavor. */
  async remove(podIps: string[]): Promise<void> {
    const drop = new Set(podIps);
    await this.#each(async (f, fam, rules) => {
      const gone = rules.filter((r) => drop.has(r.ip)).map((r) => r.rule);
      if (gone.length) await this.#sh(f, hostDeleteScript(ipt(fam, f), gone), 'removing probe rules');
    });
  }

  /** Removes the rules of pod IPs not in `keep` (after a restart: pods that went meanwhile). */
  async prune(keep: Set<string>): Promise<void> {
    await this.#each(async (f, fam, rules) => {
      const gone = rules.filter((r) => !keep.has(r.ip)).map((r) => r.rule);
      if (gone.length) await this.#sh(f, hostDeleteScript(ipt(fam, f), gone), 'pruning probe rules');
    });
  }

  /** Removes the chain and its jump, in every flavor and family. */
  async uninstall(): Promise<void> {
    for (const f of this.installed()) {
      for (const fam of FAMILIES) await this.#sh(f, hostRemoveScript(ipt(fam, f)), 'removing the probe chain');
    }
  }

  /** Runs `fn` with the host chain's rules of each flavor and family that has any. */
  async #each(fn: (f: IptablesFlavor, fam: Family, rules: { ip: string; rule: string }[]) => Promise<void>): Promise<void> {
    for (const f of this.installed()) {
      for (const fam of FAMILIES) {
        const save = await this.#in(async (ns) => this.run('nsenter', [`--net=${netnsProcPath(ns)}`, `${ipt(fam, f)}-save`, '-t', 'nat']));
        if (save.code !== 0) throw new MeshError('INPOD_ERR_IPTABLES', `${ipt(fam, f)}-save -t nat in the node netns ${this.netnsPath} failed: ${save.stderr.trim()}`);
        const rules = hostRulesInSave(save.stdout);
        if (rules.length) await fn(f, fam, rules);
      }
    }
  }

  async #sh(f: IptablesFlavor, script: string, what: string): Promise<void> {
    const r = await this.#in((ns) => this.run('nsenter', [`--net=${netnsProcPath(ns)}`, 'sh', '-c', script]));
    if (r.code !== 0) {
      throw new MeshError('INPOD_ERR_IPTABLES', `${what} with iptables-${f} in the node netns ${this.netnsPath} failed: ${r.stderr.trim()}; ` +
        'is iptables usable there (the agent needs CAP_NET_ADMIN in the host netns)?');
    }
  }

  #in<T>(fn: (ns: PodNetns) => Promise<T>): Promise<T> {
    return withNetns(this.netnsPath, fn);
  }
}
