/**
 * iptables redirection backend: Istio 1.24's in-pod rules (iptables-rules.ts) installed with
 * iptables-restore inside the pod netns, plus Istio's `ip rule fwmark <connmark> lookup <table>`
 * (ts/istio.ts) with a local default route there. iptables-legacy and iptables-nft both work; a pod's rules are found in
 * either. State lives in the netns; a record per pod (path, settings) only serves `list`.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MeshError } from '../util/errors.js';
import { runProgram, type Runner } from '../util/run.js';
import { netnsCookie } from '../native/index.js';
import { normalizeSettings, type BackendOptions, type EnrolledPod, type PodSettings, type RedirectBackend } from './backend.js';
import { assertNetns, discoverPodIps } from './netns.js';
import { CONNMARK, inspectSave, podRules, removalInput, restoreInput, type Table } from './iptables-rules.js';
import { ROUTE_TABLE } from '../istio.js';

export type IptablesFlavor = 'legacy' | 'nft';

export interface IptablesOptions extends BackendOptions {
  /** which iptables to write with; 'auto' picks nft when installed (reads always check both) */
  iptables?: IptablesFlavor | 'auto';
  run?: Runner;
}

const RULE = `fwmark ${CONNMARK} lookup ${ROUTE_TABLE}`;

export class IptablesBackend implements RedirectBackend {
  readonly name = 'iptables' as const;
  readonly #run: Runner;
  readonly #flavor: IptablesFlavor;
  readonly #recordDir: string;

  constructor(opts: IptablesOptions = {}) {
    this.#run = opts.run ?? runProgram;
    const want = opts.iptables ?? (process.env.INPOD_IPTABLES as IptablesFlavor | undefined) ?? 'auto';
    this.#flavor = want === 'auto' ? (binaryExists('iptables-nft-restore') ? 'nft' : 'legacy') : want;
    this.#recordDir = join(opts.stateDir ?? '/var/run/inpod', 'iptables');
  }

  async install(): Promise<void> {}
  async uninstall(): Promise<void> {
    for (const p of await this.list()) await this.unenroll(p.netns);
  }

  async enroll(netnsPath: string, partial: Partial<PodSettings> = {}): Promise<EnrolledPod> {
    assertNetns(netnsPath);
    const settings = normalizeSettings(partial);
    const podIps = settings.podIps?.length ? settings.podIps : await discoverPodIps(netnsPath);
    const cookie = netnsCookie(netnsPath);
    // a pod whose rules live in the other flavour is rewritten there, never duplicated
    const found = await this.#inspect(netnsPath);
    const flavor = found.find((f) => f.chains.length > 0)?.flavor ?? this.#flavor;
    const current = found.find((f) => f.flavor === flavor) ?? { flavor, chains: [], jumps: [], drain: false };
    const hasJumps = { raw: current.jumps.includes('raw'), mangle: current.jumps.includes('mangle'), nat: current.jumps.includes('nat') };
    await this.#ipt(netnsPath, flavor, restoreInput(podRules(settings), hasJumps, current.drain));
    await this.#sh(netnsPath, `ip rule show | grep -q '${RULE}' || ip rule add ${RULE} pref 32764; ip route replace local 0.0.0.0/0 dev lo table ${ROUTE_TABLE}`);
    const pod: EnrolledPod = { netns: netnsPath, backend: 'iptables', cookie: cookie.toString(), podIps, settings: { ...settings, podIps } };
    mkdirSync(this.#recordDir, { recursive: true });
    writeFileSync(join(this.#recordDir, `${cookie}.json`), JSON.stringify(pod));
    return pod;
  }

  async unenroll(netnsPath: string): Promise<void> {
    assertNetns(netnsPath);
    for (const f of await this.#inspect(netnsPath)) {
      if (f.chains.length === 0) continue;
      await this.#ipt(netnsPath, f.flavor, removalInput(f.chains, f.jumps));
      await this.#sh(netnsPath, `while ip rule show | grep -q '${RULE}'; do ip rule del ${RULE} || break; done; ip route del local 0.0.0.0/0 dev lo table ${ROUTE_TABLE} 2>/dev/null; true`);
    }
    rmSync(join(this.#recordDir, `${netnsCookie(netnsPath)}.json`), { force: true });
  }

  /**
   * Is the pod captured by this backend? Every enroll leaves a record (keyed by netns cookie), so
   * a pod without one was never enrolled here and no iptables process is spawned to find out;
   * with a record, the rules in the netns decide.
   */
  async isEnrolled(netnsPath: string): Promise<boolean> {
    if (!existsSync(netnsPath)) return false;
    let cookie: bigint;
    try {
      cookie = netnsCookie(netnsPath);
    } catch {
      return false;
    }
    if (!existsSync(join(this.#recordDir, `${cookie}.json`))) return false;
    return this.#hasRules(netnsPath);
  }

  async #hasRules(netnsPath: string): Promise<boolean> {
    return (await this.#inspect(netnsPath)).some((f) => f.chains.includes('nat'));
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
      // the record is only a hint: the rules in the netns decide
      const alive = existsSync(pod.netns) && netnsCookie(pod.netns).toString() === pod.cookie && (await this.#hasRules(pod.netns));
      if (alive) out.push(pod);
      else rmSync(file, { force: true });
    }
    return out;
  }

  async reconcile(keep: Map<string, Partial<PodSettings>>): Promise<EnrolledPod[]> {
    for (const [path, settings] of keep) await this.enroll(path, settings);
    for (const p of await this.list()) if (!keep.has(p.netns)) await this.unenroll(p.netns);
    return this.list();
  }

  /* ------------------------------------------------------------------ internals */

  async #inspect(netnsPath: string): Promise<{ flavor: IptablesFlavor; chains: Table[]; jumps: Table[]; drain: boolean }[]> {
    const out = [];
    for (const flavor of ['legacy', 'nft'] as const) {
      if (!binaryExists(`iptables-${flavor}-save`)) continue;
      const r = await this.#run('nsenter', [`--net=${netnsPath}`, `iptables-${flavor}-save`]);
      if (r.code !== 0) throw new MeshError('INPOD_ERR_IPTABLES', `iptables-${flavor}-save in ${netnsPath} failed: ${r.stderr.trim()}`);
      out.push({ flavor, ...inspectSave(r.stdout) });
    }
    return out;
  }

  async #ipt(netnsPath: string, flavor: IptablesFlavor, input: string): Promise<void> {
    const r = await this.#run('nsenter', [`--net=${netnsPath}`, `iptables-${flavor}-restore`, '--noflush'], input);
    if (r.code !== 0) {
      throw new MeshError('INPOD_ERR_IPTABLES', `iptables-${flavor}-restore in ${netnsPath} failed: ${r.stderr.trim()}\ninput:\n${input}`);
    }
  }

  async #sh(netnsPath: string, script: string): Promise<void> {
    const r = await this.#run('nsenter', [`--net=${netnsPath}`, 'sh', '-c', script]);
    if (r.code !== 0) throw new MeshError('INPOD_ERR_IPTABLES', `routing setup in ${netnsPath} failed: ${r.stderr.trim()}`);
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
