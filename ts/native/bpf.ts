/**
 * eBPF objects, maps, pins and links over the addon (addon/src/bpf.cc). The skeletons
 * (build/*.skel.h) are the contract with bpf/: map names, key and value sizes and programs'
 * attach types are read from them (skeleton()), and a map opened from a pin is checked against
 * its skeleton's declaration, so no size or attach type is typed a second time here.
 */
import { MeshError, SyscallError, check } from '../util/errors.js';
import { addon, type LinkInfoRaw, type MapInfoRaw, type SkelHandle, type SkelMapRaw, type SkelProgRaw } from './addon.js';
import { Fd } from './fd.js';

export type { LinkInfoRaw } from './addon.js';

/** A map as its skeleton declares it. */
export type MapSpec = SkelMapRaw;
/** A program as its skeleton declares it (attachType: enum bpf_attach_type). */
export type ProgSpec = SkelProgRaw;

/** What one skeleton (one bpf/*.bpf.c) declares, as libbpf reports it after open. */
export class SkeletonSpec {
  readonly maps: ReadonlyMap<string, MapSpec>;
  readonly progs: ReadonlyMap<string, ProgSpec>;
  constructor(readonly name: string, maps: MapSpec[], progs: ProgSpec[]) {
    this.maps = new Map(maps.map((m) => [m.name, m]));
    this.progs = new Map(progs.map((p) => [p.name, p]));
  }
  /** The map `name`; throws when this skeleton has none (TypeScript and bpf/ disagree). */
  map(name: string): MapSpec {
    const m = this.maps.get(name);
    if (!m) throw new MeshError('INPOD_ERR_ADDON', `skeleton ${this.name} declares no map ${name} (it has ${[...this.maps.keys()].join(', ')}): bpf/ and ts/ disagree; rebuild with "make build"`);
    return m;
  }
  /** The program `name`; throws when this skeleton has none. */
  prog(name: string): ProgSpec {
    const p = this.progs.get(name);
    if (!p) throw new MeshError('INPOD_ERR_ADDON', `skeleton ${this.name} declares no program ${name} (it has ${[...this.progs.keys()].join(', ')}): bpf/ and ts/ disagree; rebuild with "make build"`);
    return p;
  }
}

const specs = new Map<string, SkeletonSpec>();

/** The skeletons compiled into the addon, one per bpf/*.bpf.c ('connect', 'sk_lookup', ...). */
export function skeletonNames(): string[] {
  return [...addon().skeletons];
}

/** What skeleton `name` declares. Opens it without loading anything (no pin, no kernel object); cached. */
export function skeleton(name: string): SkeletonSpec {
  let s = specs.get(name);
  if (!s) {
    const h = addon().skelOpen(name, null);
    if (typeof h === 'number') throw new SyscallError('bpf_object__open', -h, name);
    try {
      s = new SkeletonSpec(name, addon().skelMaps(h), addon().skelProgs(h));
    } finally {
      addon().skelDestroy(h);
    }
    specs.set(name, s);
  }
  return s;
}

/**
 * The declaration of the map pinned by name as `name`, from every skeleton that shares it
 * (bpf/include/maps.h): they must all agree, else loading one would fail on the others' pin.
 */
export function pinnedMapSpec(name: string): MapSpec {
  const found = skeletonNames().map((s) => skeleton(s).maps.get(name)).filter((m): m is MapSpec => !!m?.pinned);
  const [first] = found;
  if (!first) throw new MeshError('INPOD_ERR_ADDON', `no skeleton pins a map named ${name}: bpf/ and ts/ disagree; rebuild with "make build"`);
  for (const m of found) {
    if (m.type !== first.type || m.keySize !== first.keySize || m.valueSize !== first.valueSize) {
      throw new MeshError('INPOD_ERR_ADDON', `the skeletons declare pinned map ${name} differently (${describe(first)} vs ${describe(m)}); rebuild with "make build"`);
    }
  }
  return first;
}

function describe(m: { type: number; keySize: number; valueSize: number }): string {
  return `type ${m.type}, key ${m.keySize} B, value ${m.valueSize} B`;
}

/** Per-CPU map types: a lookup returns one value per possible CPU, each 8-byte aligned. */
const PERCPU_TYPES = new Set([5 /* PERCPU_HASH */, 6 /* PERCPU_ARRAY */, 10 /* LRU_PERCPU_HASH */, 21 /* PERCPU_CGROUP_STORAGE */]);

/**
 * A bpf map that owns its fd. Its type and sizes are the kernel's (BPF_OBJ_GET_INFO_BY_FD),
 * and every key and value is checked against them before the syscall: the kernel reads exactly
 * keySize/valueSize bytes from whatever buffer it is given.
 */
export class BpfMap {
  readonly #fd: Fd;
  readonly type: number;
  readonly keySize: number;
  readonly valueSize: number;
  readonly maxEntries: number;
  /** bytes of one value as lookup returns and update takes it (per-CPU maps: one per possible CPU) */
  readonly valueBytes: number;

  private constructor(readonly name: string, fd: Fd, info: MapInfoRaw) {
    this.#fd = fd;
    this.type = info.type;
    this.keySize = info.keySize;
    this.valueSize = info.valueSize;
    this.maxEntries = info.maxEntries;
    this.valueBytes = PERCPU_TYPES.has(info.type) ? Math.ceil(info.valueSize / 8) * 8 * numPossibleCpus() : info.valueSize;
  }

  /** Takes ownership of `fd`, a map (closed here if it is not one). `name` is for messages. */
  static fromFd(fd: Fd, name: string): BpfMap {
    const info = addon().mapInfo(fd.fd);
    if (typeof info === 'number') {
      fd.close();
      throw new SyscallError('bpf(BPF_OBJ_GET_INFO_BY_FD)', -info, name);
    }
    return new BpfMap(name, fd, info);
  }

  /**
   * Opens the map pinned at `path`, which must be the map `spec` declares (type, key and value
   * size): a pin left by another inpod version is refused, not misread. Null when nothing is pinned there.
   */
  static pinned(path: string, spec: MapSpec): BpfMap | null {
    const fd = objGet(path);
    if (!fd) return null;
    const m = BpfMap.fromFd(fd, spec.name);
    if (m.type !== spec.type || m.keySize !== spec.keySize || m.valueSize !== spec.valueSize) {
      m.close();
      throw new MeshError('INPOD_ERR_KERNEL', `the map pinned at ${path} (${describe(m)}) is not the ${spec.name} this build declares ` +
        `(${describe(spec)}): it was pinned by another inpod version. Run "inpod redirect uninstall" to remove the old pins, then install again`);
    }
    return m;
  }

  /** The raw fd, borrowed: valid until close(). */
  get fd(): number {
    return this.#fd.fd;
  }
  get closed(): boolean {
    return this.#fd.closed;
  }
  /** Idempotent. A pinned map lives on in its pin. */
  close(): void {
    this.#fd.close();
  }

  update(key: Buffer, value: Buffer, flags = 0): void {
    this.#sized('key', key, this.keySize);
    this.#sized('value', value, this.valueBytes);
    check('bpf(BPF_MAP_UPDATE_ELEM)', addon().mapUpdate(this.fd, key, value, flags), this.name);
  }
  /** The value, or null if the key is absent. */
  lookup(key: Buffer): Buffer | null {
    this.#sized('key', key, this.keySize);
    const r = addon().mapLookup(this.fd, key, this.valueBytes);
    if (r === -2) return null;
    return check('bpf(BPF_MAP_LOOKUP_ELEM)', r, this.name);
  }
  /** Deletes the key; returns false if it was absent. */
  delete(key: Buffer): boolean {
    this.#sized('key', key, this.keySize);
    const r = addon().mapDelete(this.fd, key);
    if (r === -2) return false;
    check('bpf(BPF_MAP_DELETE_ELEM)', r, this.name);
    return true;
  }
  /** Sum of a per-CPU array slot (values are u64 per possible CPU). */
  sumPerCpu(index: number): bigint {
    const key = Buffer.alloc(4);
    key.writeUInt32LE(index);
    const v = this.lookup(key);
    let sum = 0n;
    if (v) for (let off = 0; off + 8 <= v.length; off += 8) sum += v.readBigUInt64LE(off);
    return sum;
  }
  keys(): Buffer[] {
    const out: Buffer[] = [];
    let cur: Buffer | null = null;
    for (;;) {
      const r: Buffer | number = addon().mapNextKey(this.fd, cur, this.keySize);
      if (r === -2) return out;
      cur = check('bpf(BPF_MAP_GET_NEXT_KEY)', r, this.name);
      out.push(cur);
    }
  }

  #sized(what: string, b: Buffer, size: number): void {
    if (b.length !== size) throw new RangeError(`${this.name}: a ${what} of ${b.length} bytes, the map's are ${size}`);
  }
}

/** A loaded skeleton (one bpf/*.bpf.c object) whose maps are pinned by name under pinRoot. */
export class BpfObject {
  #h: SkelHandle | null;
  readonly #maps = new Map<string, BpfMap>();
  private constructor(readonly name: string, h: SkelHandle) {
    this.#h = h;
  }
  /**
   * `config`: the object's load-time settings, written into its .rodata before load (the capture
   * programs' struct inpod_config, the fast path's struct inpod_fp_config); null leaves them zero.
   */
  static open(name: string, pinRoot: string, config: Buffer | null): BpfObject {
    const h = addon().skelOpen(name, pinRoot);
    if (typeof h === 'number') throw new SyscallError('bpf_object__open', -h, name);
    const o = new BpfObject(name, h);
    if (config) check('skel rodata', addon().skelSetConfig(h, config), name);
    return o;
  }
  private get h(): SkelHandle {
    if (!this.#h) throw new SyscallError('use', 9, `bpf object ${this.name} destroyed`);
    return this.#h;
  }
  load(): void {
    const r = addon().skelLoad(this.h);
    if (r < 0) {
      const log = addon().libbpfLog().trim().split('\n').slice(-12).join('\n');
      throw new SyscallError('bpf_object__load', -r, `${this.name}${log ? `:\n${log}` : ''}`);
    }
  }
  /** A loaded program: its fd (the object's, valid until destroy()) and expected attach type. */
  prog(name: string): { fd: number; attachType: number } {
    return check('bpf_object__find_program_by_name', addon().skelProg(this.h, name), name);
  }
  /** A loaded map. The object owns it: destroy() closes it (pinned maps live on in their pins). */
  map(name: string): BpfMap {
    let m = this.#maps.get(name);
    if (!m || m.closed) {
      m = BpfMap.fromFd(new Fd(check('bpf_object__find_map_by_name', addon().skelMap(this.h, name), name)), name);
      this.#maps.set(name, m);
    }
    return m;
  }
  /** Closes the object's fds and its maps; pinned maps and links keep working. Idempotent. */
  destroy(): void {
    for (const m of this.#maps.values()) m.close();
    this.#maps.clear();
    if (this.#h) addon().skelDestroy(this.#h);
    this.#h = null;
  }
}

export function objPin(fd: number, path: string): void {
  check('bpf(BPF_OBJ_PIN)', addon().objPin(fd, path), path);
}
/** Opens a pinned object; null if the pin does not exist. */
export function objGet(path: string): Fd | null {
  const r = addon().objGet(path);
  if (r === -2) return null;
  return new Fd(check('bpf(BPF_OBJ_GET)', r, path));
}
export function linkCreate(progFd: number, targetFd: number, attachType: number): Fd {
  return new Fd(check('bpf(BPF_LINK_CREATE)', addon().linkCreate(progFd, targetFd, attachType)));
}
/** Attaches without a link (a stream verdict onto a SOCKHASH); it lasts as long as the target. */
export function progAttach(progFd: number, targetFd: number, attachType: number): void {
  check('bpf(BPF_PROG_ATTACH)', addon().progAttach(progFd, targetFd, attachType));
}
export function linkUpdate(linkFd: number, progFd: number): void {
  check('bpf(BPF_LINK_UPDATE)', addon().linkUpdate(linkFd, progFd));
}
export function linkInfo(fd: number): LinkInfoRaw {
  return check('bpf(BPF_OBJ_GET_INFO_BY_FD)', addon().linkInfo(fd));
}
/** What one BPF_PROG_TEST_RUN gave back: the program's return value, its context and packet after the run. */
export interface TestRun {
  retval: number;
  ctx: Buffer | null;
  data: Buffer | null;
}
/**
 * Runs a loaded program once in the kernel on `ctx` (the program type's context struct, e.g.
 * struct bpf_sk_lookup) and/or `data` (a packet), against the maps it holds: for tests of a
 * program's decisions without traffic. Throws SyscallError with the kernel's errno: EINVAL for a
 * context it refuses, ENOTSUPP (524) for a program type it cannot test-run.
 */
export function progTestRun(progFd: number, o: { ctx?: Buffer; data?: Buffer }): TestRun {
  return check('bpf(BPF_PROG_TEST_RUN)', addon().progTestRun(progFd, o.ctx ?? null, o.data ?? null));
}
export function numPossibleCpus(): number {
  return check('libbpf_num_possible_cpus', addon().numPossibleCpus());
}
