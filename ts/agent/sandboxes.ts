/**
 * The pod sandboxes the agent knows: one per (pod uid, network namespace). A runtime may make a
 * second sandbox for a pod (a fresh netns, same uid) before the first one's DEL, or without it
 * ever reaching the agent; each sandbox is captured, served and released on its own.
 *
 * A netns is named by its cookie (SO_NETNS_COOKIE): a path is not an identity (/run/netns/<name>
 * and /proc/<pid>/ns/net are reused) and neither is an inode (reused once the netns dies), but a
 * cookie is never reused within a boot. Records are persisted (one file per sandbox) so an agent
 * restart finds the netns of every pod; they carry the boot they belong to, and a record of
 * another boot is dropped. Records of the format before sandboxes (one file per uid, no cookie)
 * are migrated on load, with the cookie of their netns as it is now.
 *
 * The store also holds each sandbox's netns open while the agent needs it (one fd per sandbox,
 * opened once: istio-cni's podNetnsCache, cni/pkg/nodeagent/pod_cache.go): the backend, the netns
 * helpers and ZDS all work on that fd, which keeps naming the sandbox's netns whatever its path
 * names later. The agent holds it from the sandbox's capture to its release.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { PodEvent } from '../cni/plugin.js';
import type { PodNetns } from '../redirect/netns.js';

export interface Sandbox {
  uid: string;
  namespace: string;
  name: string;
  /** the netns path the runtime gave (CNI_NETNS), or /proc/<pid>/ns/net when found in /proc */
  netns: string;
  /** netns cookie as a decimal string: this sandbox's identity */
  cookie: string;
  /** CNI_CONTAINERID of its ADD ('' when found in /proc or migrated from the old format) */
  containerId: string;
  /**
   * The pod's addresses, both families (ts/agent/podips.ts): those its CNI result named (ADD),
   * checked against its netns when it is captured; status.podIPs when found in /proc; absent in
   * records written before issue 18.
   */
  ips?: string[];
  /** order of ADDs across all sandboxes: a pod's newest sandbox is the one the proxy serves */
  seq: number;
  /** /proc/sys/kernel/random/boot_id when the cookie was read */
  boot: string;
}

export type NewSandbox = Omit<Sandbox, 'seq' | 'boot'>;

export interface SandboxStoreDeps {
  /** opens the network namespace at `path` (throws if it is not one) */
  open: (path: string) => PodNetns;
  bootId: string;
}

export const sandboxKey = (s: { uid: string; cookie: string }): string => `${s.uid}@${s.cookie}`;

/**
 * Which of a pod's sandboxes a CNI DEL names (pure). `cookie` is that of ev.netns when the path
 * still exists; `alive(s)` whether a sandbox's netns is still at its path. With a netns, the
 * cookie decides; without one (the runtime passes none once the netns is gone), the container
 * id decides, and sandboxes whose netns is gone go too. A live sandbox that the DEL does not
 * positively name is never released.
 */
export function delTargets(mine: Sandbox[], ev: Pick<PodEvent, 'containerId' | 'netns'>, cookie: string | null, alive: (s: Sandbox) => boolean): Sandbox[] {
  if (cookie !== null) return mine.filter((s) => s.cookie === cookie);
  return mine.filter((s) => (ev.containerId !== '' && s.containerId === ev.containerId) || !alive(s));
}

/** A pod's newest sandbox among `mine` (the one the proxy serves), or undefined. */
export function newest(mine: Sandbox[]): Sandbox | undefined {
  return mine.reduce<Sandbox | undefined>((best, s) => (!best || s.seq > best.seq ? s : best), undefined);
}

export class SandboxStore {
  readonly #dir: string;
  readonly #deps: SandboxStoreDeps;
  readonly #all = new Map<string, Sandbox>();
  readonly #held = new Map<string, PodNetns>();
  #seq = 0;

  constructor(dir: string, deps: SandboxStoreDeps) {
    this.#dir = dir;
    this.#deps = deps;
  }

  /** Reads the records: drops unreadable ones and those of another boot, migrates the old format. */
  load(): void {
    if (!existsSync(this.#dir)) return;
    for (const f of readdirSync(this.#dir)) {
      const file = join(this.#dir, f);
      let r: Partial<Sandbox>;
      try {
        r = JSON.parse(readFileSync(file, 'utf8')) as Partial<Sandbox>;
      } catch {
        rmSync(file, { force: true });
        continue;
      }
      if (typeof r.uid !== 'string' || typeof r.netns !== 'string') {
        rmSync(file, { force: true });
      } else if (r.cookie === undefined) {
        // the format before sandboxes: { uid, namespace, name, netns }, one per uid
        rmSync(file, { force: true });
        const cookie = this.cookieAt(r.netns);
        if (cookie !== null) this.add({ uid: r.uid, namespace: r.namespace ?? '', name: r.name ?? '', netns: r.netns, cookie, containerId: '' }, 0);
      } else if (r.boot !== this.#deps.bootId) {
        rmSync(file, { force: true }); // cookies of another boot name nothing now
      } else {
        const s = r as Sandbox;
        this.#all.set(sandboxKey(s), s);
        this.#seq = Math.max(this.#seq, s.seq);
      }
    }
  }

  /** Records a sandbox (again): it becomes its pod's newest unless `seq` says otherwise. */
  add(s: NewSandbox, seq = ++this.#seq): Sandbox {
    const rec: Sandbox = { ...s, seq, boot: this.#deps.bootId };
    this.#all.set(sandboxKey(rec), rec);
    mkdirSync(this.#dir, { recursive: true });
    writeFileSync(this.#file(rec), JSON.stringify(rec));
    return rec;
  }

  /** Forgets the sandbox: its record, and its netns if held. */
  forget(s: Sandbox): void {
    this.drop(s);
    this.#all.delete(sandboxKey(s));
    rmSync(this.#file(s), { force: true });
  }

  all(): Sandbox[] {
    return [...this.#all.values()];
  }

  /** The sandboxes of a pod, oldest first. */
  ofPod(uid: string): Sandbox[] {
    return this.all().filter((s) => s.uid === uid).sort((a, b) => a.seq - b.seq);
  }

  /** Opens the netns at `path` (one open), or null if there is none (gone, not a netns). */
  open(path: string): PodNetns | null {
    if (!path || !existsSync(path)) return null;
    try {
      return this.#deps.open(path);
    } catch {
      return null;
    }
  }

  /** The cookie of the netns at `path`, or null if there is none (gone, not a netns). One open. */
  cookieAt(path: string): string | null {
    const ns = this.open(path);
    ns?.close();
    return ns ? ns.cookie.toString() : null;
  }

  /** Is the sandbox's netns still at its path? (one open) */
  alive(s: Sandbox): boolean {
    return this.cookieAt(s.netns) === s.cookie;
  }

  /**
   * Holds `ns` as the sandbox's netns (it must be the sandbox's: same cookie). If one is held
   * already, that one stays (it may be in use) and `ns` is closed, as istio-cni's pod cache keeps
   * the netns it has for the same inode. Returns the held one.
   */
  hold(s: Sandbox, ns: PodNetns): PodNetns {
    const have = this.#held.get(sandboxKey(s));
    if (have && !have.closed) {
      if (have !== ns) ns.close();
      return have;
    }
    this.#held.set(sandboxKey(s), ns);
    return ns;
  }

  /** The sandbox's netns if it is held open. */
  held(s: Sandbox): PodNetns | undefined {
    const ns = this.#held.get(sandboxKey(s));
    return ns && !ns.closed ? ns : undefined;
  }

  /**
   * The sandbox's netns: the held one, or its path opened now if the path still names it (same
   * cookie), and then held. Null when its netns is no longer at its path.
   */
  netnsOf(s: Sandbox): PodNetns | null {
    const have = this.held(s);
    if (have) return have;
    const ns = this.open(s.netns);
    if (!ns) return null;
    if (ns.cookie.toString() !== s.cookie) {
      ns.close(); // the path names another netns now
      return null;
    }
    return this.hold(s, ns);
  }

  /** Closes the sandbox's held netns, if any; the record stays. */
  drop(s: Sandbox): void {
    this.#held.get(sandboxKey(s))?.close();
    this.#held.delete(sandboxKey(s));
  }

  /** Closes every held netns (the agent stops). */
  closeAll(): void {
    for (const ns of this.#held.values()) ns.close();
    this.#held.clear();
  }

  #file(s: Sandbox): string {
    return join(this.#dir, `${encodeURIComponent(s.uid)}@${s.cookie}.json`);
  }
}
