/**
 * The kernel fast path (bpf/fastpath.bpf.c). Once the proxy has decided a connection and it needs
 * no more work in userspace (plain TCP passthrough, inbound plaintext after the policy check), its
 * two sockets are spliced: a stream verdict program redirects every skb arriving on one out of
 * the other, and no byte of the connection crosses into Node.
 *
 * The contract with the caller: both sockets are connected and no userspace read has touched
 * them (accepted with pauseOnConnect, connected with `paused`), so every byte still to be
 * relayed is in a kernel queue in order, and nothing is waiting in Node's buffers.
 *
 * Switching on, per direction X->Y, never races X's bytes: X and Y first join the target map
 * (no program: nothing changes for them), X's flow entry names Y, and only then X joins the
 * verdict map. A direction whose socket the kernel refuses (SOCKHASH takes only ESTABLISHED
 * sockets: the peer may already have sent its FIN) runs in userspace; the other can still be
 * spliced, since each socket is written by exactly one direction.
 *
 * Closing: Node does not read spliced sockets, so one epoll thread watches them for the peer's
 * FIN or reset. On a FIN from X, Y's write side is shut only after every byte the program
 * redirected from X has entered Y's send queue (the redirect runs asynchronously in a kernel
 * worker: shutting Y at once could overtake bytes still on their way). A reset on either side
 * resets the other. Byte counts come from the flow entries, which are removed at close.
 */
import type net from 'node:net';
import { Counter, Gauge, type Registry } from 'prom-client';
import {
  BpfMap,
  BpfObject,
  HupWatcher,
  progAttach,
  recvPeek,
  sockError,
  socketCookie,
  tcpInq,
  tcpWritten,
  numPossibleCpus,
  EPOLLERR,
  EPOLLRDHUP,
} from '../native/index.js';
import { encodeU64, encodeFpFlow, decodeFpFlow, LAYOUT } from '../native/structs.js';
import { SyscallError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { fdOf, relay as userspaceRelay } from './sockets.js';

/** How the bytes of a relayed connection travelled. */
export type RelayPath = 'kernel' | 'mixed' | 'userspace';

export interface RelayResult {
  aToB: number;
  bToA: number;
  error?: Error;
  path: RelayPath;
}

export interface FastPathOptions {
  /** false: every connection takes the userspace path (the operator's off switch) */
  enabled: boolean;
  log: Logger;
  /** where the inpod_fastpath_* metrics go */
  registry?: Registry;
  /** how long a FIN may wait for redirected bytes to drain before the connection is reset */
  drainTimeoutMs?: number;
}

const FP_STAT = { bytes: 0, segs: 1, drop: 2 } as const;
const EOPNOTSUPP = 95;

interface Direction {
  from: net.Socket;
  to: net.Socket;
  fromFd: number;
  toFd: number;
  fromKey: Buffer;
  kernel: boolean;
  /** tcpWritten(to) before anything could be redirected into it */
  toWritten0: number;
  bytes: number;
  done: boolean;
}

/** One spliced connection, from splice to cleanup. */
class Splice {
  readonly dirs: [Direction, Direction];
  #over = false;
  readonly #tokens: number[] = [];

  constructor(
    private readonly fp: FastPath,
    readonly a: net.Socket,
    readonly b: net.Socket,
    dirs: [Direction, Direction],
    private readonly done: (r: RelayResult) => void,
  ) {
    this.dirs = dirs;
  }

  get path(): RelayPath {
    const k = this.dirs.filter((d) => d.kernel).length;
    return k === 2 ? 'kernel' : k === 1 ? 'mixed' : 'userspace';
  }

  start(): void {
    for (const s of [this.a, this.b]) s.on('error', (e: Error) => this.abort(e));
    for (const d of this.dirs) {
      if (d.kernel) this.#startKernel(d);
      else this.#startUser(d);
    }
  }

  #startKernel(d: Direction): void {
    const token = this.fp.watch(d.fromFd, (revents) => this.#onHup(d, token, revents));
    this.#tokens.push(token);
    // bytes queued before the socket joined the verdict map wait for the next skb; a read runs
    // the program over them now. Nothing may come back: the program never passes to userspace.
    let peeked: number | null;
    try {
      peeked = recvPeek(d.fromFd);
    } catch (e) {
      return this.abort(e as Error);
    }
    if (peeked !== null && peeked > 0) this.abort(new Error('fast path: bytes reached the proxy on a spliced socket'));
  }

  #startUser(d: Direction): void {
    d.from.on('data', (chunk: Buffer) => {
      d.bytes += chunk.length;
      if (!d.to.write(chunk)) {
        d.from.pause();
        d.to.once('drain', () => d.from.resume());
      }
    });
    d.from.once('end', () => {
      d.to.end();
      d.done = true;
      this.#maybeFinish();
    });
    d.from.resume();
  }

  #onHup(d: Direction, token: number, revents: number): void {
    if (this.#over) return;
    let err = 0;
    try {
      err = sockError(d.fromFd);
    } catch (e) {
      return this.abort(e as Error);
    }
    if (err || revents & EPOLLERR) return this.abort(new SyscallError('recv', err || 104, 'peer reset the spliced connection'));
    if (d.done) return; // hang-up after both sides finished: cleanup follows
    if (!(revents & EPOLLRDHUP)) return;
    // keep hearing about a reset of this socket while the other direction runs
    this.fp.rearm(d.fromFd, token);
    void this.#drainThenShut(d);
  }

  /** Waits until Y has taken every byte redirected from X, then shuts Y's write side. */
  async #drainThenShut(d: Direction): Promise<void> {
    const deadline = Date.now() + this.fp.drainTimeoutMs;
    for (let i = 0; ; i++) {
      if (this.#over) return;
      try {
        const redirected = this.fp.flowBytes(d.fromKey);
        if (tcpInq(d.fromFd) === 0 && tcpWritten(d.toFd) - d.toWritten0 >= redirected) break;
      } catch (e) {
        return this.abort(e as Error);
      }
      if (Date.now() > deadline) return this.abort(new Error(`fast path: redirected bytes did not drain within ${this.fp.drainTimeoutMs} ms`));
      await new Promise((r) => (i < 20 ? setImmediate(r) : setTimeout(r, 1)));
    }
    d.to.end();
    d.done = true;
    this.#maybeFinish();
  }

  #maybeFinish(): void {
    if (this.#over || !this.dirs.every((d) => d.done)) return;
    this.#cleanup();
    this.a.destroy();
    this.b.destroy();
    this.done(this.#result());
  }

  /** A reset or failure on either side: reset both (so each peer learns) and report. */
  abort(e: Error): void {
    if (this.#over) return;
    this.#cleanup();
    this.a.resetAndDestroy();
    this.b.resetAndDestroy();
    this.done({ ...this.#result(), error: e });
  }

  #cleanup(): void {
    this.#over = true;
    for (const d of this.dirs) {
      if (d.kernel) {
        this.fp.unwatch(d.fromFd, this.#tokens);
        d.bytes = this.fp.flowBytes(d.fromKey);
      }
    }
    for (const d of this.dirs) this.fp.forget(d.fromKey);
  }

  #result(): RelayResult {
    return { aToB: this.dirs[0].bytes, bToA: this.dirs[1].bytes, path: this.path };
  }
}

export class FastPath {
  readonly enabled: boolean;
  /** why the kernel path is off although enabled (the program or maps could not load) */
  readonly unavailable?: string;
  readonly drainTimeoutMs: number;
  readonly #log: Logger;
  #obj?: BpfObject;
  #srcs?: BpfMap;
  #dsts?: BpfMap;
  #flows?: BpfMap;
  #stats?: BpfMap;
  #watcher?: HupWatcher;
  readonly #handlers = new Map<number, (revents: number) => void>();
  #nextToken = 1;
  #active = 0;
  readonly #fallbacks?: Counter<'reason'>;
  readonly #spliced?: Counter<'path'>;

  constructor(o: FastPathOptions) {
    this.#log = o.log.child({ component: 'fastpath' });
    this.drainTimeoutMs = o.drainTimeoutMs ?? 30_000;
    let unavailable: string | undefined;
    if (o.enabled) {
      try {
        this.#load();
      } catch (e) {
        unavailable = (e as Error).message;
        this.#unload();
        this.#log.warn({ err: unavailable }, 'kernel fast path unavailable; connections take the userspace path');
      }
    }
    this.enabled = o.enabled;
    this.unavailable = unavailable;
    if (o.registry) {
      const reg = [o.registry];
      const self = this;
      new Gauge({ name: 'inpod_fastpath_enabled', help: '1 when spliced connections are moved by the kernel', registers: reg, collect() { this.set(self.active ? 1 : 0); } });
      new Gauge({ name: 'inpod_fastpath_active_connections', help: 'Connections spliced in the kernel right now', registers: reg, collect() { this.set(self.#active); } });
      this.#spliced = new Counter({ name: 'inpod_fastpath_connections_total', help: 'Connections handed to the fast path, by how their bytes travelled (kernel, mixed: one direction in userspace)', labelNames: ['path'], registers: reg });
      this.#fallbacks = new Counter({ name: 'inpod_fastpath_fallback_total', help: 'Connections the fast path handed back to the userspace path, by reason', labelNames: ['reason'], registers: reg });
      const fromBpf = (name: string, help: string, idx: number): void => {
        let last = 0n;
        new Counter({ name, help, registers: reg, collect() {
          const now = self.#stats?.sumPerCpu(idx) ?? 0n;
          if (now > last) this.inc(Number(now - last));
          last = now;
        } });
      };
      fromBpf('inpod_fastpath_bytes_total', 'Bytes the kernel moved between spliced sockets (from the eBPF counters)', FP_STAT.bytes);
      fromBpf('inpod_fastpath_dropped_segments_total', 'Segments the fast path program dropped (no flow or peer socket); should stay 0', FP_STAT.drop);
    }
  }

  /** The kernel path is loaded and switched on. */
  get active(): boolean {
    return !!this.#srcs;
  }

  #load(): void {
    const obj = (this.#obj = BpfObject.open('fastpath', '/sys/fs/bpf', null));
    obj.load();
    const map = (name: string, keySize: number, valueSize: number): BpfMap => new BpfMap(name, obj.mapFd(name), keySize, valueSize);
    const srcs = map('inpod_fp_srcs', 8, 8);
    this.#dsts = map('inpod_fp_dsts', 8, 8);
    this.#flows = map('inpod_fp_flows', 8, LAYOUT.inpod_fp_flow.sizeof);
    this.#stats = map('inpod_fp_stats', 4, 8 * numPossibleCpus());
    const prog = obj.prog('inpod_fp_verdict');
    progAttach(prog.fd, srcs.fd, prog.attachType);
    this.#watcher = new HupWatcher((token, revents) => this.#handlers.get(token)?.(revents));
    this.#srcs = srcs;
  }

  #unload(): void {
    this.#watcher?.close();
    this.#obj?.destroy();
    this.#srcs = this.#dsts = this.#flows = this.#stats = this.#watcher = this.#obj = undefined;
  }

  /**
   * Relays `a` <-> `b` (`a` the side that opened the connection), spliced in the kernel where it
   * can be, else in userspace. Both sockets must be connected and never read (see the top).
   * `done` runs once, when both directions are over or either side failed.
   */
  relay(a: net.Socket, b: net.Socket, done: (r: RelayResult) => void): void {
    if (!this.#srcs) {
      if (this.enabled) this.#fallbacks?.inc({ reason: 'unavailable' });
      return this.#userspace(a, b, done);
    }
    let s: Splice | null;
    try {
      s = this.#splice(a, b, done);
    } catch (e) {
      this.#log.warn({ err: (e as Error).message }, 'splice failed; userspace path');
      this.#fallbacks?.inc({ reason: 'error' });
      s = null;
    }
    if (!s) return this.#userspace(a, b, done);
    this.#active++;
    this.#spliced?.inc({ path: s.path });
    s.start();
  }

  #userspace(a: net.Socket, b: net.Socket, done: (r: RelayResult) => void): void {
    userspaceRelay(a, b, (r) => done({ ...r, path: 'userspace' }));
  }

  #splice(a: net.Socket, b: net.Socket, done: (r: RelayResult) => void): Splice | null {
    const srcs = this.#srcs!;
    const dsts = this.#dsts!;
    const flows = this.#flows!;
    const fa = fdOf(a);
    const fb = fdOf(b);
    const ka = encodeU64(socketCookie(fa));
    const kb = encodeU64(socketCookie(fb));
    const dir = (from: net.Socket, to: net.Socket, fromFd: number, toFd: number, fromKey: Buffer): Direction => ({
      from, to, fromFd, toFd, fromKey, kernel: false, toWritten0: tcpWritten(toFd), bytes: 0, done: false,
    });
    const ab = dir(a, b, fa, fb, ka);
    const ba = dir(b, a, fb, fa, kb);
    const undo = (): void => {
      for (const k of [ka, kb]) {
        srcs.delete(k);
        dsts.delete(k);
        flows.delete(k);
      }
    };
    const refused = (e: unknown): null => {
      undo();
      const errno = e instanceof SyscallError ? e.errno : 0;
      this.#fallbacks?.inc({ reason: errno === EOPNOTSUPP ? 'not_established' : 'kernel_refused' });
      if (errno !== EOPNOTSUPP) this.#log.warn({ err: (e as Error).message }, 'kernel refused a splice; userspace path');
      return null;
    };
    try {
      dsts.update(ka, encodeU64(BigInt(fa)));
      dsts.update(kb, encodeU64(BigInt(fb)));
      flows.update(ka, encodeFpFlow({ peer: decodeKey(kb), bytes: 0, segs: 0 }));
      flows.update(kb, encodeFpFlow({ peer: decodeKey(ka), bytes: 0, segs: 0 }));
    } catch (e) {
      return refused(e);
    }
    let firstErr: unknown;
    for (const d of [ab, ba]) {
      try {
        srcs.update(d.fromKey, encodeU64(BigInt(d.fromFd)));
        d.kernel = true;
      } catch (e) {
        firstErr ??= e;
      }
    }
    if (!ab.kernel && !ba.kernel) return refused(firstErr);
    if (firstErr) this.#fallbacks?.inc({ reason: 'not_established' });
    return new Splice(this, a, b, [ab, ba], (r) => {
      this.#active--;
      done(r);
    });
  }

  /* ---------------------------------------------------------------- used by Splice */

  watch(fd: number, onHup: (revents: number) => void): number {
    const token = this.#nextToken++;
    this.#handlers.set(token, onHup);
    this.#watcher!.watch(fd, token);
    return token;
  }

  rearm(fd: number, token: number): void {
    this.#watcher!.rearmErrors(fd, token);
  }

  unwatch(fd: number, tokens: number[]): void {
    this.#watcher?.unwatch(fd);
    for (const t of tokens) this.#handlers.delete(t);
  }

  flowBytes(key: Buffer): number {
    const v = this.#flows?.lookup(key);
    return v ? decodeFpFlow(v).bytes : 0;
  }

  forget(key: Buffer): void {
    this.#flows?.delete(key);
  }

  /** Entries in the fast path's maps (what a leak test counts). */
  mapEntries(): { srcs: number; dsts: number; flows: number } {
    return { srcs: this.#srcs?.keys().length ?? 0, dsts: this.#dsts?.keys().length ?? 0, flows: this.#flows?.keys().length ?? 0 };
  }

  /** Kernel-wide counters: bytes and skbs redirected, skbs dropped. */
  counters(): { bytes: number; segs: number; drops: number } {
    const c = (i: number): number => Number(this.#stats?.sumPerCpu(i) ?? 0n);
    return { bytes: c(FP_STAT.bytes), segs: c(FP_STAT.segs), drops: c(FP_STAT.drop) };
  }

  get activeConnections(): number {
    return this.#active;
  }

  /** Unloads the program; spliced sockets still open fall out of the maps with them. */
  close(): void {
    this.#unload();
  }
}

function decodeKey(k: Buffer): bigint {
  return k.readBigUInt64LE(0);
}
