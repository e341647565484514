/**
 * eBPF redirection backend (shared/DESIGN.md "eBPF backend").
 *
 * Host-level parts (install): the socket hooks (connect4/6, sendmsg4, recvmsg4/6, getpeername4/6,
 * sockops, getsockopt) attached once at the configured cgroup through pinned bpf_links, and the
 * sk_lookup program pinned for per-pod attachment. Per pod (enroll): map updates keyed by the
 * netns cookie plus one pinned sk_lookup link on the pod's netns. Everything lives under the pin
 * root, so a later process (or the CLI) sees and changes the same state, and capture outlives
 * the process that set it up.
 */
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync, unlinkSync, writeFileSync, existsSync } from 'node:fs';
import { basename, join } from 'node:path';
import { MeshError } from '../util/errors.js';
import { MARKS, PORTS } from '../istio.js';
import {
  BpfMap,
  BpfObject,
  linkCreate,
  linkInfo,
  linkUpdate,
  objGet,
  objPin,
  openPath,
  pinnedMapSpec,
  skeleton,
} from '../native/index.js';
import {
  DIR_IN,
  DIR_OUT,
  POD_DNS_CAPTURE,
  decodeCidrKey,
  decodePod,
  decodePortKey,
  decodeTuple,
  decodeU64,
  encodeCidrKey,
  encodeConfig,
  encodeIp4Key,
  encodePod,
  encodePortKey,
  encodeU64,
  readIp4,
  type CaptureConfig,
} from '../native/structs.js';
import {
  normalizeSettings,
  type BackendOptions,
  type EnrolledPod,
  type NetnsRef,
  type PodNetns,
  type PodSettings,
  type RedirectBackend,
} from './backend.js';
import { checkEbpfHost, cgroup2Mount } from './preflight.js';
import { discoverPodIps, listenerHandover, openNetns, transparentReturnRouting, withNetns } from './netns.js';

export const DEFAULT_PIN_ROOT = '/sys/fs/bpf/inpod';

/**
 * Istio's ports and marks (ts/istio.ts), written into every capture program's .rodata at load
 * time: the programs carry no numbers of their own and refuse to load without these
 * (bpf/include/config.h).
 */
export const ISTIO_CONFIG: CaptureConfig = Object.freeze({
  proxyMark: MARKS.proxy,
  spoofMark: MARKS.spoof,
  outboundPort: PORTS.outbound,
  inboundPort: PORTS.inboundPlaintext,
  hbonePort: PORTS.hbone,
  dnsPort: PORTS.dns,
});

/** Program objects (one per bpf/*.bpf.c) and which of their programs attach at the cgroup. */
const CGROUP_PROGS: Record<string, string[]> = {
  connect: ['inpod_connect4', 'inpod_connect6', 'inpod_sendmsg4', 'inpod_recvmsg4', 'inpod_recvmsg6', 'inpod_getpeername4', 'inpod_getpeername6'],
  sockops: ['inpod_sockops'],
  getsockopt: ['inpod_getsockopt'],
};
const SK_LOOKUP_PROG = 'inpod_sk_lookup';

/**
 * The per-connection maps keyed by a connection tuple, whose first field is the netns cookie
 * (bpf/include/maps.h): sockops removes each entry when its handshake ends or its client closes;
 * unenroll purges whatever a pod still has there.
 */
export const TUPLE_MAPS = ['inpod_syn_orig', 'inpod_own_syn'] as const;

/** Maps of earlier versions, replaced by the ones above: unpinned once no program uses them. */
const OBSOLETE_PINS = ['inpod_ck_orig', 'inpod_tup_orig', 'inpod_local'];

interface Maps {
  enrolled: BpfMap;
  podIps: BpfMap;
  portExcl: BpfMap;
  cidrExcl: BpfMap;
}

interface PodRecord {
  netns: string;
  settings: PodSettings;
  podIps: string[];
}

export class EbpfBackend implements RedirectBackend {
  /**
   * No IPv6 capture yet, so the agent refuses pods with IPv6 addresses (fail closed, issue 18).
   * TODO(issue 18, capture layer): true with BackendOptions.ipv6 once connect6/sendmsg6, sk_lookup
   * and SO_ORIGINAL_DST answer IPv6 and sockops records the host netns's IPv6 connections (kubelet
   * probes) as it records IPv4 ones (bpf/sockops.bpf.c record_node_connect).
   */
  readonly ipv6: boolean = false;
  readonly name = 'ebpf' as const;
  readonly pinRoot: string;
  readonly cgroupPath: string;
  /** BackendOptions.hostNetns: written into inpod_host_ns by install() */
  readonly hostNetns: string | undefined;
  readonly #recordDir: string;

  constructor(opts: BackendOptions = {}) {
    this.pinRoot = opts.pinRoot ?? DEFAULT_PIN_ROOT;
    this.cgroupPath = opts.cgroupPath ?? defaultCgroup();
    this.hostNetns = opts.hostNetns;
    // Records only remember the netns path and settings for `list`; the maps are the truth.
    const stateDir = opts.stateDir ?? '/var/run/inpod';
    this.#recordDir = join(stateDir, this.pinRoot === DEFAULT_PIN_ROOT ? 'ebpf' : `ebpf-${basename(this.pinRoot)}`);
  }

  /** Is the host-level part in place for this pin root and cgroup? */
  installed(): boolean {
    return existsSync(this.#pin('progs', SK_LOOKUP_PROG)) && this.#cgroupLinksPresent();
  }

  async install(): Promise<void> {
    checkEbpfHost({ pinRoot: this.pinRoot, cgroupPath: this.cgroupPath });
    mkdirSync(join(this.pinRoot, 'links'), { recursive: true });
    mkdirSync(join(this.pinRoot, 'progs'), { recursive: true });
    const cgid = this.#cgroupId();
    const config = encodeConfig(ISTIO_CONFIG);
    const cg = openPath(this.cgroupPath);
    try {
      for (const [obj, progs] of Object.entries(CGROUP_PROGS)) {
        const o = this.#load(obj, config);
        try {
          for (const name of progs) {
            const prog = o.prog(name);
            // An existing link is upgraded in place: capture never has a gap.
            const pin = this.#pin('links', `cgroup-${cgid}-${name}`);
            const old = objGet(pin);
            if (old) {
              linkUpdate(old.fd, prog.fd);
              old.close();
            } else {
              const link = linkCreate(prog.fd, cg.fd, prog.attachType);
              objPin(link.fd, pin);
              link.close();
            }
          }
        } finally {
          o.destroy();
        }
      }
      const o = this.#load('sk_lookup', config);
      try {
        const prog = o.prog(SK_LOOKUP_PROG);
        const pin = this.#pin('progs', SK_LOOKUP_PROG);
        if (existsSync(pin)) unlinkSync(pin);
        objPin(prog.fd, pin);
        // Pods enrolled by an older program move to this one.
        for (const f of this.#netnsLinkPins()) {
          const link = objGet(f);
          if (link) {
            linkUpdate(link.fd, prog.fd);
            link.close();
          }
        }
      } finally {
        o.destroy();
      }
      // Every program now uses the current maps; the old ones would only pin memory.
      for (const name of OBSOLETE_PINS) rmSync(this.#pin(name), { force: true });
      this.#writeHostNetns();
    } finally {
      cg.close();
    }
  }

  /**
   * Names the node's netns to the programs (inpod_host_ns): its sockets' connections to enrolled
   * pods (kubelet's probes) are recorded at connect and reach the app uncaptured. 0 = none.
   */
  #writeHostNetns(): void {
    let cookie = 0n;
    if (this.hostNetns !== undefined) {
      const ns = openNetns(this.hostNetns);
      cookie = ns.cookie;
      ns.close();
    }
    const m = this.#openMap('inpod_host_ns');
    if (!m) throw new MeshError('INPOD_ERR_NOT_INSTALLED', `map inpod_host_ns is not pinned under ${this.pinRoot} after loading the programs`);
    try {
      m.update(Buffer.alloc(4) /* key 0 of the one-entry array */, encodeU64(cookie));
    } finally {
      m.close();
    }
  }

  async enroll(netns: NetnsRef, partial: Partial<PodSettings> = {}): Promise<EnrolledPod> {
    return withNetns(netns, (ns) => this.#enroll(ns, partial));
  }

  async #enroll(ns: PodNetns, partial: Partial<PodSettings>): Promise<EnrolledPod> {
    const settings = normalizeSettings(partial);
    const podIps = settings.podIps?.length ? settings.podIps : await discoverPodIps(ns);
    const cookie = ns.cookie;
    if (!this.installed()) await this.install();
    await transparentReturnRouting(ns, true, ISTIO_CONFIG.spoofMark);
    listenerHandover(ns, true);
    const maps = this.#maps();
    try {
      // Settings first, the enrolled gate last: no connection sees a half-written pod.
      this.#writeExclusions(maps, cookie, settings);
      for (const ip of podIps) maps.podIps.update(encodeIp4Key(ip), encodeU64(cookie));
      this.#attachNetns(ns);
      maps.enrolled.update(
        encodeU64(cookie),
        encodePod({ ip4: podIps[0]!, probeIp4: settings.probeSource, flags: settings.dnsCapture ? POD_DNS_CAPTURE : 0 }),
      );
    } finally {
      closeMaps(maps);
    }
    this.#writeRecord(cookie, { netns: ns.path, settings: { ...settings, podIps }, podIps });
    return { netns: ns.path, backend: 'ebpf', cookie: cookie.toString(), podIps, settings: { ...settings, podIps } };
  }

  async unenroll(netns: NetnsRef): Promise<void> {
    await withNetns(netns, async (ns) => {
      if (!existsSync(this.#pin('inpod_enrolled'))) return;
      const wasEnrolled = this.#enrolledCookie(ns.cookie);
      this.#unenrollCookie(ns.cookie);
      if (!wasEnrolled) return;
      await transparentReturnRouting(ns, false, ISTIO_CONFIG.spoofMark);
      listenerHandover(ns, false);
    });
  }

  async isEnrolled(netns: NetnsRef): Promise<boolean> {
    if (!existsSync(this.#pin('inpod_enrolled'))) return false;
    return withNetns(netns, (ns) => this.#enrolledCookie(ns.cookie));
  }

  async list(): Promise<EnrolledPod[]> {
    if (!existsSync(this.#pin('inpod_enrolled'))) return [];
    const maps = this.#maps();
    try {
      const ips = new Map<bigint, string[]>();
      for (const k of maps.podIps.keys()) {
        const v = maps.podIps.lookup(k);
        if (!v) continue;
        const c = decodeU64(v);
        ips.set(c, [...(ips.get(c) ?? []), readIp4(k, 0)]);
      }
      const ports = maps.portExcl.keys().map(decodePortKey);
      const cidrs = maps.cidrExcl.keys().map(decodeCidrKey);
      const out: EnrolledPod[] = [];
      for (const k of maps.enrolled.keys()) {
        const v = maps.enrolled.lookup(k);
        if (!v) continue;
        const cookie = decodeU64(k);
        const pod = decodePod(v);
        const rec = this.#readRecord(cookie);
        const podIps = ips.get(cookie) ?? [pod.ip4];
        out.push({
          netns: rec?.netns ?? '',
          backend: 'ebpf',
          cookie: cookie.toString(),
          podIps,
          settings: {
            podIps,
            probeSource: pod.probeIp4,
            dnsCapture: (pod.flags & POD_DNS_CAPTURE) !== 0,
            excludeInboundPorts: ports.filter((p) => p.netns === cookie && p.dir === DIR_IN).map((p) => p.port).sort((a, b) => a - b),
            excludeOutboundPorts: ports.filter((p) => p.netns === cookie && p.dir === DIR_OUT).map((p) => p.port).sort((a, b) => a - b),
            excludeOutboundCidrs: cidrs.filter((c) => c.netns === cookie).map((c) => c.cidr),
          },
        });
      }
      return out;
    } finally {
      closeMaps(maps);
    }
  }

  async reconcile(keep: Map<NetnsRef, Partial<PodSettings>>): Promise<EnrolledPod[]> {
    const wanted = new Set<bigint>();
    for (const [netns, settings] of keep) wanted.add(BigInt((await this.enroll(netns, settings)).cookie));
    for (const pod of await this.list()) {
      const c = BigInt(pod.cookie);
      if (!wanted.has(c)) this.#unenrollCookie(c);
    }
    return this.list();
  }

  async uninstall(): Promise<void> {
    for (const pod of await this.list()) this.#unenrollCookie(BigInt(pod.cookie));
    // Unpinning the last reference to a link detaches it.
    rmSync(this.pinRoot, { recursive: true, force: true });
    rmSync(this.#recordDir, { recursive: true, force: true });
  }

  /* ------------------------------------------------------------------ internals */

  #unenrollCookie(cookie: bigint): void {
    const maps = this.#maps();
    try {
      // The gate first: new connections go direct at once; established ones are untouched.
      maps.enrolled.delete(encodeU64(cookie));
      for (const k of maps.podIps.keys()) {
        const v = maps.podIps.lookup(k);
        if (v && decodeU64(v) === cookie) maps.podIps.delete(k);
      }
      this.#writeExclusions(maps, cookie, null);
    } finally {
      closeMaps(maps);
    }
    this.#purgeConnections(cookie);
    // which inbound slot is the newest (the listeners' entries go with their sockets)
    const slot = this.#openMap('inpod_inbound_slot');
    if (slot) {
      try {
        slot.delete(encodeU64(cookie));
      } finally {
        slot.close();
      }
    }
    const pin = this.#pin('links', `netns-${cookie}`);
    if (existsSync(pin)) unlinkSync(pin);
    rmSync(join(this.#recordDir, `${cookie}.json`), { force: true });
  }

  /**
   * Deletes the pod's per-connection tuple entries. Runs after the enrolled gate is gone, so
   * sockops records nothing new for the pod meanwhile; connections still in their handshake
   * then lose nothing they need (an unenrolled netns has no sk_lookup link and no capture).
   */
  #purgeConnections(cookie: bigint): void {
    for (const name of TUPLE_MAPS) {
      const m = this.#openMap(name);
      if (!m) continue;
      try {
        for (const k of m.keys()) if (decodeTuple(k).netns === cookie) m.delete(k);
      } finally {
        m.close();
      }
    }
  }

  /** Replaces the pod's exclusion entries (null: remove them all). */
  #writeExclusions(maps: Maps, cookie: bigint, s: PodSettings | null): void {
    for (const k of maps.portExcl.keys()) if (decodePortKey(k).netns === cookie) maps.portExcl.delete(k);
    for (const k of maps.cidrExcl.keys()) if (decodeCidrKey(k).netns === cookie) maps.cidrExcl.delete(k);
    if (!s) return;
    const one = Buffer.from([1]);
    for (const p of s.excludeInboundPorts) maps.portExcl.update(encodePortKey(cookie, p, DIR_IN), one);
    for (const p of s.excludeOutboundPorts) maps.portExcl.update(encodePortKey(cookie, p, DIR_OUT), one);
    for (const c of s.excludeOutboundCidrs) maps.cidrExcl.update(encodeCidrKey(cookie, c), one);
  }

  #enrolledCookie(cookie: bigint): boolean {
    const m = this.#openMap('inpod_enrolled');
    if (!m) return false;
    try {
      return m.lookup(encodeU64(cookie)) !== null;
    } finally {
      m.close();
    }
  }

  #attachNetns(ns: PodNetns): void {
    const pin = this.#pin('links', `netns-${ns.cookie}`);
    const existing = objGet(pin);
    if (existing) {
      const alive = linkInfo(existing.fd).netnsIno !== 0;
      existing.close();
      if (alive) return;
      unlinkSync(pin); // the netns this cookie named is gone; a new link replaces it
    }
    const prog = objGet(this.#pin('progs', SK_LOOKUP_PROG));
    if (!prog) throw new MeshError('INPOD_ERR_NOT_INSTALLED', `sk_lookup program not pinned under ${this.pinRoot}; run install first`);
    try {
      const link = linkCreate(prog.fd, ns.fd, skeleton('sk_lookup').prog(SK_LOOKUP_PROG).attachType);
      objPin(link.fd, pin);
      link.close();
    } finally {
      prog.close();
    }
  }

  #load(obj: string, config: Buffer): BpfObject {
    const o = BpfObject.open(obj, this.pinRoot, config);
    try {
      o.load();
      return o;
    } catch (e) {
      o.destroy();
      throw new MeshError('INPOD_ERR_KERNEL', `loading ${obj}.bpf.o failed: ${(e as Error).message}. If an older inpod ` +
        `left incompatible maps, run "inpod redirect uninstall" (pins under ${this.pinRoot})`, { cause: e });
    }
  }

  /** The per-pod maps, all open or none (close them with closeMaps). */
  #maps(): Maps {
    const opened: BpfMap[] = [];
    const open = (name: string): BpfMap => {
      const m = this.#openMap(name);
      if (!m) throw new MeshError('INPOD_ERR_NOT_INSTALLED', `map ${name} is not pinned under ${this.pinRoot}: run "inpod redirect enroll" or the agent to install`);
      opened.push(m);
      return m;
    };
    try {
      return {
        enrolled: open('inpod_enrolled'),
        podIps: open('inpod_pod_ips'),
        portExcl: open('inpod_port_excl'),
        cidrExcl: open('inpod_cidr_excl'),
      };
    } catch (e) {
      for (const m of opened) m.close();
      throw e;
    }
  }

  /** The map pinned as `name`, checked against this build's skeletons; null when not pinned. */
  #openMap(name: string): BpfMap | null {
    return BpfMap.pinned(this.#pin(name), pinnedMapSpec(name));
  }

  #pin(...parts: string[]): string {
    return join(this.pinRoot, ...parts);
  }

  #cgroupId(): bigint {
    return statSync(this.cgroupPath, { bigint: true }).ino;
  }

  #cgroupLinksPresent(): boolean {
    let cgid: bigint;
    try {
      cgid = this.#cgroupId();
    } catch {
      return false;
    }
    return Object.values(CGROUP_PROGS).flat().every((p) => existsSync(this.#pin('links', `cgroup-${cgid}-${p}`)));
  }

  #netnsLinkPins(): string[] {
    const dir = this.#pin('links');
    if (!existsSync(dir)) return [];
    return readdirSync(dir).filter((f) => f.startsWith('netns-')).map((f) => join(dir, f));
  }

  #writeRecord(cookie: bigint, rec: PodRecord): void {
    mkdirSync(this.#recordDir, { recursive: true });
    writeFileSync(join(this.#recordDir, `${cookie}.json`), JSON.stringify(rec));
  }

  #readRecord(cookie: bigint): PodRecord | null {
    try {
      return JSON.parse(readFileSync(join(this.#recordDir, `${cookie}.json`), 'utf8')) as PodRecord;
    } catch {
      return null;
    }
  }
}

function closeMaps(maps: Maps): void {
  for (const m of Object.values(maps)) m.close();
}

function defaultCgroup(): string {
  try {
    return cgroup2Mount(readFileSync('/proc/mounts', 'utf8')) ?? '/sys/fs/cgroup';
  } catch {
    return '/sys/fs/cgroup';
  }
}
