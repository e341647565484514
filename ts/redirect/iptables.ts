/**
 * iptables redirection backend: Istio 1.24's in-pod rules (iptables-rules.ts) installed with
 * iptables-restore and ip6tables-restore inside the pod netns (istio cni/pkg/iptables/iptables.go
 * with IPv6 enabled: BuildV4Restore and BuildV6Restore), plus Istio's
 * `ip rule fwmark <connmark> lookup <table>` (ts/istio.ts) with a local default route there, for
 * each family (iptables_linux.go: forEachInpodMarkIPRule, forEachLoopbackRoute; the IPv6 route
 * only where the netns's loopback has IPv6). iptables-legacy and iptables-nft both work; a pod's rules are found in
 * either. State lives in the netns; a record per pod (path, settings) only serves `list`. The
 * iptables processes enter the netns the caller holds (through /proc/<agent pid>/fd/<fd>), never
 * the path again. With a host netns named (BackendOptions.hostNetns), Istio's host SNAT of
 * kubelet probes is kept there too (iptables-host.ts).
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MeshError } from '../util/errors.js';
import { runProgram, type Runner } from '../util/run.js';
import { normalizeSettings, type BackendOptions, type EnrolledPod, type NetnsRef, type PodNetns, type PodSettings, type RedirectBackend } from './backend.js';
import { listenerHandover, netnsProcPath, openNetns, podAddresses, withNetns } from './netns.js';
import { CONNMARK, FAMILIES, inspectSave, ipt, podRules, removalInput, restoreInput, type Family, type Table } from './iptables-rules.js';
import { HostProbeRules } from './iptables-host.js';
import { ROUTE_TABLE } from '../istio.js';

export type IptablesFlavor = 'legacy' | 'nft';

export interface IptablesOptions extends BackendOptions {
  /** which iptables to write with; 'auto' picks nft when installed (reads always check both) */
  iptables?: IptablesFlavor | 'auto';
  run?: Runner;
  /**
   * The families to write rules for. Default: both, or IPv4 alone on a kernel without IPv6
   * (booted with ipv6.disable=1: no /proc/sys/net/ipv6, ip6tables cannot work and there is no
   * IPv6 to capture), as istio-cni goes on without ip6tables when IPv6 is off.
   */
  families?: readonly Family[];
}

const RULE = `fwmark ${CONNMARK} lookup ${ROUTE_TABLE}`;
/** Run in the pod netns: whether its loopback has IPv6 (Istio skips the IPv6 route otherwise). */
const LO_HAS_V6 = '[ -e /proc/sys/net/ipv6/conf/lo/disable_ipv6 ] && [ "$(cat /proc/sys/net/ipv6/conf/lo/disable_ipv6)" != 1 ]';
const ROUTING_ADD = [
  `ip rule show | grep -q '${RULE}' || ip rule add ${RULE} pref 32764`,
  `ip route replace local 0.0.0.0/0 dev lo table ${ROUTE_TABLE}`,
  `if ${LO_HAS_V6}; then ip -6 rule show | grep -q '${RULE}' || ip -6 rule add ${RULE} pref 32764; ip -6 route replace local ::/0 dev lo table ${ROUTE_TABLE}; fi`,
].join('; ');
const ROUTING_DEL = [
  `while ip rule show | grep -q '${RULE}'; do ip rule del ${RULE} || break; done`,
  `ip route del local 0.0.0.0/0 dev lo table ${ROUTE_TABLE} 2>/dev/null`,
  `while ip -6 rule show 2>/dev/null | grep -q '${RULE}'; do ip -6 rule del ${RULE} || break; done`,
  `ip -6 route del local ::/0 dev lo table ${ROUTE_TABLE} 2>/dev/null`,
  'true',
].join('; ');

/** What one iptables flavor and family holds of a pod's rules. */
interface Found {
  flavor: IptablesFlavor;
  family: Family;
  chains: Table[];
  jumps: Table[];
  drain: boolean;
}

export class IptablesBackend implements RedirectBackend {
  readonly name = 'iptables' as const;
  readonly #run: Runner;
  readonly #flavor: IptablesFlavor;
  readonly #recordDir: string;
  /** Istio's probe SNAT in the node's netns; null when no host netns is named */
  readonly #host: HostProbeRules | null;
  /** BackendOptions.ipv6: pods with IPv6 addresses are enrolled (Istio's ip6tables rules beside the IPv4 ones), else refused */
  readonly ipv6: boolean;
  readonly #families: readonly Family[];

  constructor(opts: IptablesOptions = {}) {
    this.#run = opts.run ?? runProgram;
    const want = opts.iptables ?? (process.env.INPOD_IPTABLES as IptablesFlavor | undefined) ?? 'auto';
    this.#flavor = want === 'auto' ? (binaryExists('iptables-nft-restore') ? 'nft' : 'legacy') : want;
    this.#recordDir = join(opts.stateDir ?? '/var/run/inpod', 'iptables');
    this.ipv6 = opts.ipv6 ?? false;
    this.#families = opts.families ?? (existsSync('/proc/sys/net/ipv6') ? FAMILIES : [4]);
    const installed = (): IptablesFlavor[] => (['legacy', 'nft'] as const).filter((f) => binaryExists(`iptables-${f}-save`));
    this.#host = opts.hostNetns === undefined ? null : new HostProbeRules(opts.hostNetns, this.#run, this.#flavor, installed);
  }

  /** The probe chain in the host netns, when one is named (pods add their rules at enroll). */
  async install(): Promise<void> {
    await this.#host?.add([], '');
  }
  async uninstall(): Promise<void> {
    for (const p of await this.list()) await this.unenroll(p.netns);
    await this.#host?.uninstall();
  }

  async enroll(netns: NetnsRef, partial: Partial<PodSettings> = {}): Promise<EnrolledPod> {
    return withNetns(netns, (ns) => this.#enroll(ns, partial));
  }

  async #enroll(ns: PodNetns, partial: Partial<PodSettings>): Promise<EnrolledPod> {
    const settings = normalizeSettings(partial);
    const podIps = await podAddresses(ns, settings.podIps, this.ipv6);
    const cookie = ns.cookie;
    // Both families always, as istio-cni with IPv6 enabled: an IPv4-only pod's IPv6 (loopback
    // aside) is captured too, never around the proxy. A pod whose rules live in the other
    // flavour is rewritten there, never duplicated.
    const found = await this.#inspect(ns);
    for (const family of this.#families) {
      const mine = found.filter((f) => f.family === family);
      const flavor = mine.find((f) => f.chains.length > 0)?.flavor ?? this.#flavor;
      const current = mine.find((f) => f.flavor === flavor) ?? { flavor, family, chains: [], jumps: [], drain: false };
      const hasJumps = { raw: current.jumps.includes('raw'), mangle: current.jumps.includes('mangle'), nat: current.jumps.includes('nat') };
      await this.#ipt(ns, flavor, family, restoreInput(podRules(settings, family), hasJumps, current.drain));
    }
    await this.#sh(ns, ROUTING_ADD);
    listenerHandover(ns, true);
    // the pod's rules exempt the probe source first, then the node starts sending probes from it
    await this.#host?.add(podIps, settings.probeSource, settings.probeSource6);
    const pod: EnrolledPod = { netns: ns.path, backend: 'iptables', cookie: cookie.toString(), podIps, settings: { ...settings, podIps } };
    mkdirSync(this.#recordDir, { recursive: true });
    writeFileSync(join(this.#recordDir, `${cookie}.json`), JSON.stringify(pod));
    return pod;
  }

  async unenroll(netns: NetnsRef): Promise<void> {
    await withNetns(netns, async (ns) => {
      if (this.#host) {
        // the node stops SNATing to the probe source before the pod stops exempting it
        const ips = this.#readRecord(ns.cookie)?.podIps ?? (await podAddresses(ns, undefined, true).catch(() => []));
        await this.#host.remove(ips);
      }
      let removed = false;
      for (const f of await this.#inspect(ns)) {
        if (f.chains.length === 0) continue;
        await this.#ipt(ns, f.flavor, f.family, removalInput(f.chains, f.jumps));
        removed = true;
      }
      if (removed) {
        await this.#sh(ns, ROUTING_DEL);
        listenerHandover(ns, false);
      }
      rmSync(join(this.#recordDir, `${ns.cookie}.json`), { force: true });
    });
  }

  /**
   * Is the pod captured by this backend? Every enroll leaves a record (keyed by netns cookie), so
   * a pod without one was never enrolled here and no iptables process is spawned to find out;
   * with a record, the rules in the netns decide. A path that is not a netns (any more) is not.
   */
  async isEnrolled(netns: NetnsRef): Promise<boolean> {
    let ns: PodNetns;
    try {
      ns = typeof netns === 'string' ? openNetns(netns) : netns;
    } catch {
      return false;
    }
    try {
      if (!existsSync(join(this.#recordDir, `${ns.cookie}.json`))) return false;
      return await this.#hasRules(ns);
    } finally {
      if (ns !== netns) ns.close();
    }
  }

  /** IPv4's nat rules decide: enroll writes both families, IPv4 first. */
  async #hasRules(ns: PodNetns): Promise<boolean> {
    return (await this.#inspect(ns, [4])).some((f) => f.chains.includes('nat'));
  }

  async list(): Promise<EnrolledPod[]> {
    if (!existsSync(this.#recordDir)) return [];
    const out: EnrolledPod[] = [];
    for (const f of readdirSync(this.#recordDir).filter((n) => n.endsWith('.json'))) {
      const file = join(this.#recordDir, f);
      let pod: EnrolledPod;
      try {
        pod = JSON.parse(readFileSync(file, 'utf8')) as EnrolledPod;
      } catch {
        rmSync(file, { force: true });
        continue;
      }
      // the record is only a hint: the rules in the netns its path names now (same cookie) decide
      let ns: PodNetns | null = null;
      try {
        ns = openNetns(pod.netns);
      } catch {
        ns = null;
      }
      try {
        const alive = ns !== null && ns.cookie.toString() === pod.cookie && (await this.#hasRules(ns));
        if (alive) out.push(pod);
        else rmSync(file, { force: true });
      } finally {
        ns?.close();
      }
    }
    return out;
  }

  async reconcile(keep: Map<NetnsRef, Partial<PodSettings>>): Promise<EnrolledPod[]> {
    const wanted = new Set<string>();
    for (const [netns, settings] of keep) wanted.add((await this.enroll(netns, settings)).cookie);
    for (const p of await this.list()) if (!wanted.has(p.cookie)) await this.unenroll(p.netns);
    const left = await this.list();
    // probe rules of pods that went while nobody was there to unenroll them
    await this.#host?.prune(new Set(left.flatMap((p) => p.podIps)));
    return left;
  }

  /* ------------------------------------------------------------------ internals */

  #readRecord(cookie: bigint): EnrolledPod | null {
    try {
      return JSON.parse(readFileSync(join(this.#recordDir, `${cookie}.json`), 'utf8')) as EnrolledPod;
    } catch {
      return null;
    }
  }

  async #inspect(ns: PodNetns, families: readonly Family[] = this.#families): Promise<Found[]> {
    const out: Found[] = [];
    for (const family of families) {
      for (const flavor of ['legacy', 'nft'] as const) {
        const cmd = `${ipt(family, flavor)}-save`;
        if (!binaryExists(cmd)) continue;
        const r = await this.#run('nsenter', [`--net=${netnsProcPath(ns)}`, cmd]);
        if (r.code !== 0) throw new MeshError('INPOD_ERR_IPTABLES', `${cmd} in ${ns.path} failed: ${r.stderr.trim()}`);
        out.push({ flavor, family, ...inspectSave(r.stdout) });
      }
    }
    return out;
  }

  async #ipt(ns: PodNetns, flavor: IptablesFlavor, family: Family, input: string): Promise<void> {
    const cmd = `${ipt(family, flavor)}-restore`;
    const r = await this.#run('nsenter', [`--net=${netnsProcPath(ns)}`, cmd, '--noflush'], input);
    if (r.code !== 0) {
      throw new MeshError('INPOD_ERR_IPTABLES', `${cmd} in ${ns.path} failed: ${r.stderr.trim()}\ninput:\n${input}`);
    }
  }

  async #sh(ns: PodNetns, script: string): Promise<void> {
    const r = await this.#run('nsenter', [`--net=${netnsProcPath(ns)}`, 'sh', '-c', script]);
    if (r.code !== 0) throw new MeshError('INPOD_ERR_IPTABLES', `routing setup in ${ns.path} failed: ${r.stderr.trim()}`);
  }
}

const binCache = new Map<string, boolean>();
function binaryExists(name: string): boolean {
  let v = binCache.get(name);
  if (v === undefined) {
    v = ['/usr/sbin', '/sbin', '/usr/bin', '/bin'].some((d) => existsSync(join(d, name)));
    binCache.set(name, v);
  }
  return v;
}
