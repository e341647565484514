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
 * resets the other. Byte counts come from the flow entries, which are removed at close. Whether
 * every byte before a FIN was relayed is decided by TCP's count of what X received, never by
 * SIOCINQ or by EOF alone: on a socket with a verdict program neither sees the psock's backlog.
 */
import type net from 'node:net';
import { Counter, Gauge, type Registry } from 'prom-client';
import {
  BpfMap,
  BpfObject,
  HupWatcher,
  progAttach,
  recvAll,
  recvPeek,
  sockError,
  socketCookie,
  tcpReceived,
  tcpWritten,
  EPOLLERR,
  EPOLLRDHUP,
} from '../native/index.js';
import { encodeU64, encodeFpFlow, decodeFpFlow, type FpFlow } from '../native/structs.js';
import { SyscallError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { relay as userspaceRelay, relayGone } from './relay.js';
import { fdOf } from './sockets.js';

/** How the bytes of a relayed connection travelled. */
export type RelayPath = 'kernel' | 'mixed' | 'userspace';

export interface RelayResult {
  aToB: number;
  bToA: number;
  /** of those, the bytes the kernel moved (the rest crossed Node) */
  kernelBytes: number;
  error?: Error;
  path: RelayPath;
}

export interface FastPathOptions {
  /** false: every connection takes the userspace path (the operator's off switch) */
  enabled: boolean;
  /**
   * When to splice. null (default): at once, when the proxy hands the connection over. Else a
   * connection starts in userspace and is spliced once it has carried `bytes` or lasted `ms`
   * (PROMOTE_DEFAULT is the proxy's "promote" mode).
   */
  promoteAfter?: { bytes: number; ms: number } | null;
  log: Logger;
  /** where the inpod_fastpath_* metrics go */
  registry?: Registry;
  /** how long a FIN may wait for redirected bytes to drain before the connection is reset */
  drainTimeoutMs?: number;
}

const FP_STAT = { bytes: 0, segs: 1, drop: 2, throttle: 3, lost: 4 } as const;
/** the hang-up watcher's token for the program's ring buffer of throttled flows */
const THROTTLE_TOKEN = 0;
const EOPNOTSUPP = 95;

/**
 * Splicing costs a connection about 30 system calls and a kernel psock set up and torn down: for
 * a connection that carries one small exchange and closes, that is more than relaying it
 * (measured: ~0.7x the connection rate of the userspace path), while long-lived request/response
 * connections gain. A connection is known to be one or the other only once it has run a while:
 * in "promote" mode it starts in userspace and is spliced when it passes either mark. Promotion
 * has to stop reading, copy what is queued and wait for the copies to reach the kernel; under
 * load that is put off (counted) and after PROMOTE_RETRIES tries given up.
 */
export const PROMOTE_DEFAULT = { bytes: 64 * 1024, ms: 50 };
/** A promotion reads what the kernel holds for the proxy; give up (and retry) beyond this. */
const PROMOTE_MAX_COPY = 4 * 1024 * 1024;
const PROMOTE_RETRIES = 5;
/** A demoted direction keeps reading while the kernel's last bytes drain; it holds at most this. */
const HOLD_MAX = 16 * 1024 * 1024;

interface Direction {
  from: net.Socket;
  to: net.Socket;
  kernel: boolean;
  bytes: number;
  done: boolean;
  /* set when the direction goes to the kernel */
  fromFd: number;
  toFd: number;
  fromKey: Buffer;
  /** the hang-up watch on `from` (0: none) */
  token: number;
  /** the userspace relay's listeners, removed when the direction goes to the kernel */
  off?: () => void;
  /** the kernel stopped this direction (its peer fell behind); the rest is relayed in userspace */
  demoted?: boolean;
}

type Handle = { reading?: boolean; readStop?: () => number; readStart?: () => number };
const handleOf = (s: net.Socket): Handle | undefined => (s as unknown as { _handle?: Handle })._handle;

/**
 * Stops Node reading a socket at the libuv level: pause() alone keeps filling its buffer. This
 * and startReading() use the handle's `reading` flag the way net.Socket itself does.
 */
function stopReading(s: net.Socket): void {
  s.pause();
  const h = handleOf(s);
  if (h?.reading && h.readStop) {
    h.reading = false;
    h.readStop();
  }
}

/**
 * Undoes stopReading(). Node may still count a read as outstanding (its stream state does not
 * know the handle stopped), so resume() alone would not restart the handle; starting it twice
 * would fail (EALREADY), hence the flag.
 */
function startReading(s: net.Socket): void {
  const h = handleOf(s);
  if (h && h.reading === false && h.readStart && !s.destroyed) {
    h.reading = true;
    h.readStart();
  }
  s.resume();
}

/**
 * Closes a socket whose write side was ended once Node has handed the kernel every byte written
 * to it. Destroying it at once would drop what Node still holds for a slow reader (the kernel
 * sends its own queue on after close(), Node's buffer it never sees).
 */
function closeWhenFlushed(s: net.Socket): void {
  if (s.destroyed) return;
  if (s.writableFinished) s.destroy();
  else s.once('finish', () => s.destroy());
}

/** One relayed connection: userspace, kernel, or one direction each; from start to cleanup. */
class Splice {
  readonly dirs: [Direction, Direction];
  #over = false;
  #promoting = false;
  #promoteTries = 0;
  #kernelBytes = 0;
  #timer?: NodeJS.Timeout;

  constructor(
    private readonly fp: FastPath,
    readonly a: net.Socket,
    readonly b: net.Socket,
    private readonly done: (r: RelayResult) => void,
  ) {
    const dir = (from: net.Socket, to: net.Socket): Direction => ({
      from, to, kernel: false, bytes: 0, done: false, fromFd: -1, toFd: -1, fromKey: Buffer.alloc(0), token: 0,
    });
    this.dirs = [dir(a, b), dir(b, a)];
    for (const s of [a, b]) s.on('error', (e: Error) => this.abort(e));
  }

  get path(): RelayPath {
    const k = this.dirs.filter((d) => d.kernel).length;
    return k === 2 ? 'kernel' : k === 1 ? 'mixed' : 'userspace';
  }

  get kernel(): boolean {
    return this.dirs.some((d) => d.kernel);
  }

  /** Splices at once (the sockets were never read); what the kernel does not take runs in Node. */
  spliceNow(): void {
    this.#toKernel();
    for (const d of this.dirs) if (!d.kernel) this.#startUser(d);
  }

  /** Starts in userspace; splices once the connection passes `after` (bytes or time). */
  startUser(after: { bytes: number; ms: number }): void {
    for (const d of this.dirs) this.#startUser(d, after.bytes);
    this.#timer = setTimeout(() => void this.#promote(), after.ms);
    this.#timer.unref();
  }

  /**
   * Moves both directions of a connection already relayed in userspace into the kernel. Node
   * stops reading; what it or the kernel already holds for the proxy is written on in userspace
   * (reading the receive queue to empty also leaves no half-read skb for the verdict program,
   * which would send it whole); once those writes have reached the kernel, the sockets join the
   * maps, and every later byte is redirected behind them.
   */
  async #promote(): Promise<void> {
    if (this.#promoting || this.#over || this.kernel || this.dirs.some((d) => d.done)) return;
    if (this.#promoteTries >= PROMOTE_RETRIES) return; // stays in userspace
    if ([this.a, this.b].some((s) => s.destroyed || s.readableEnded || s.writableEnded)) return;
    this.#promoting = true;
    this.#promoteTries++;
    // later tries come from this timer only (not from every chunk that passes the mark)
    clearTimeout(this.#timer);
    const retry = (why: string): void => {
      this.#promoting = false;
      for (const d of this.dirs) if (!d.done) startReading(d.from);
      this.fp.promotionFailed(why);
      if (this.#promoteTries < PROMOTE_RETRIES && !this.#over) {
        this.#timer = setTimeout(() => void this.#promote(), 20 * this.#promoteTries);
        this.#timer.unref();
      }
    };
    for (const s of [this.a, this.b]) stopReading(s);
    if (this.a.readableLength || this.b.readableLength) return retry('busy');
    for (const d of this.dirs) {
      let got;
      try {
        got = recvAll(fdOf(d.from), PROMOTE_MAX_COPY);
      } catch (e) {
        // a reset: this read took the socket's error, so Node would read a clean EOF after it
        return this.abort(e as Error);
      }
      if (got.data.length) {
        d.bytes += got.data.length;
        d.to.write(got.data);
      }
      // a FIN (Node reads it again on resume) or more than we copy: stay in userspace for now
      if (got.eof) return retry('not_established');
      if (got.more) return retry('busy');
    }
    // the copies must be in the kernel before anything is redirected behind them; reading
    // stays stopped meanwhile, so do not wait long
    const flushed = await this.#waitUntil(() => !this.a.writableLength && !this.b.writableLength, 50, 5);
    if (this.#over) return;
    if (!flushed) return retry('busy');
    this.#promoting = false;
    this.#toKernel();
    for (const d of this.dirs) if (!d.kernel && !d.done) startReading(d.from);
  }

  /** Joins the maps (see the top of the file); starts the directions the kernel took. */
  #toKernel(): void {
    this.fp.join(this.dirs);
    for (const d of this.dirs) {
      if (!d.kernel) continue;
      d.off?.();
      this.#startKernel(d);
    }
  }

  #startKernel(d: Direction): void {
    d.token = this.fp.watch(d.fromFd, (revents) => this.#onHup(d, revents));
    this.fp.onThrottle(d.fromKey, () => void this.#demote(d));
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

  /**
   * Relays one direction in Node. With `hold`, what is read is kept until hold resolves (the
   * kernel's earlier bytes must reach Y first), but reading goes on meanwhile (up to HOLD_MAX):
   * a stopped reader could wedge the kernel's queue on X that the other direction also needs.
   */
  #startUser(d: Direction, promoteAtBytes?: number, hold?: Promise<boolean>): void {
    let held: Buffer[] | null = hold ? [] : null;
    let heldBytes = 0;
    let ended = false;
    // one 'drain' listener at a time: the held chunks are written in one go
    let draining = false;
    const write = (chunk: Buffer): void => {
      if (d.to.write(chunk)) return;
      d.from.pause();
      if (draining) return;
      draining = true;
      d.to.once('drain', () => {
        draining = false;
        if (!this.#promoting && (!d.kernel || d.demoted)) d.from.resume();
      });
    };
    const finish = (): void => {
      d.to.end();
      d.done = true;
      this.#maybeFinish();
    };
    const onData = (chunk: Buffer): void => {
      d.bytes += chunk.length;
      if (held) {
        held.push(chunk);
        heldBytes += chunk.length;
        if (heldBytes > HOLD_MAX) d.from.pause();
        return;
      }
      write(chunk);
      if (promoteAtBytes !== undefined && this.#promoteTries === 0 && this.dirs[0].bytes + this.dirs[1].bytes >= promoteAtBytes) void this.#promote();
    };
    const onEnd = (): void => {
      const end = (): void => {
        ended = true;
        if (!held) finish();
      };
      // on a socket the program passed bytes to, Node's EOF can come before the last of them
      if (d.demoted) void this.#readRest(d, onData).then((ok) => ok && end());
      else end();
    };
    d.from.on('data', onData);
    d.from.once('end', onEnd);
    d.off = () => {
      d.from.off('data', onData);
      d.from.off('end', onEnd);
    };
    hold?.then((ok) => {
      const chunks = held ?? [];
      held = null;
      if (!ok || this.#over) return;
      for (const c of chunks) write(c);
      if (ended) finish();
      else if (heldBytes > HOLD_MAX) d.from.resume();
    });
    startReading(d.from);
  }

  #onHup(d: Direction, revents: number): void {
    if (this.#over || d.demoted) return;
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
    try {
      this.fp.rearm(d.fromFd, d.token);
    } catch (e) {
      return this.abort(e as Error);
    }
    void this.#drainThenShut(d);
  }

  /**
   * Polls `cond` (at once, `immediate` more times on the next turns of the event loop, then every
   * millisecond) until it holds (true), the connection is over or `ms` passed (false). The kernel
   * tells nobody when its worker has moved the last skb; polling harder only burns CPU the worker
   * needs.
   */
  async #waitUntil(cond: () => boolean, ms: number, immediate = 2): Promise<boolean> {
    const deadline = Date.now() + ms;
    for (let i = 0; !this.#over; i++) {
      if (cond()) return true;
      if (Date.now() > deadline) return false;
      await new Promise((r) => (i < immediate ? setImmediate(r) : setTimeout(r, 1)));
    }
    return false;
  }

  /**
   * Bytes X's TCP received that neither Node read nor the program redirected. Meaningful once X's
   * FIN has arrived: tcpi_bytes_received follows rcv_nxt, so it counts that FIN as one. The
   * kernel's own count, unlike SIOCINQ, which on a socket with a verdict program reports only the
   * psock's queue for readers (tcp_bpf_ioctl), not skbs still waiting in its backlog.
   */
  #unrelayed(d: Direction, flow = this.fp.flow(d.fromKey)): number {
    return flow ? tcpReceived(d.fromFd) - 1 - d.bytes - flow.bytes : NaN;
  }

  /** Y's socket has taken every byte the program redirected from X (the flow's count). */
  #drained(d: Direction, flow = this.fp.flow(d.fromKey)): boolean {
    return !!flow && tcpWritten(d.toFd) - flow.peerBase >= flow.bytes;
  }

  /**
   * Waits up to drainTimeoutMs for `cond` (a syscall failing in it, or the time running out,
   * resets the connection). True once it holds on a connection still open.
   */
  async #untilDrained(cond: () => boolean, what = 'redirected bytes did not drain'): Promise<boolean> {
    let err: Error | undefined;
    const ok = await this.#waitUntil(() => {
      try {
        return cond();
      } catch (e) {
        err = e as Error;
        return true;
      }
    }, this.fp.drainTimeoutMs);
    if (err) this.abort(err);
    else if (!ok && !this.#over) this.abort(new Error(`fast path: ${what} within ${this.fp.drainTimeoutMs} ms`));
    return ok && !err && !this.#over;
  }

  /** After X's FIN: shuts Y's write side once every byte before the FIN has reached Y's socket. */
  async #drainThenShut(d: Direction): Promise<void> {
    let throttled = false;
    const ok = await this.#untilDrained(() => {
      // stopped by the program: the bytes before the FIN wait with X, and Node relays them
      const flow = this.fp.flow(d.fromKey);
      throttled = !!flow?.throttled;
      // else every byte before the FIN was redirected (the flow's count is final) and Y took it all
      return throttled || (this.#unrelayed(d, flow) === 0 && this.#drained(d, flow));
    });
    if (throttled) return void this.#demote(d);
    if (!ok) return;
    d.to.end();
    d.done = true;
    this.#maybeFinish();
  }

  /**
   * The program stopped redirecting X (Y's socket fell more than INPOD_FP_MAX_INFLIGHT behind):
   * X's later bytes wait on X itself, charged to its receive buffer, so TCP holds the sender
   * back. Once Y has taken everything redirected before, Node reads X (those waiting bytes
   * first, in order) and relays the rest with its own back-pressure.
   */
  async #demote(d: Direction): Promise<void> {
    if (this.#over || d.demoted || !d.kernel || d.done) return;
    d.demoted = true;
    this.fp.unwatch(d);
    this.fp.demoted();
    let release!: (ok: boolean) => void;
    this.#startUser(d, undefined, new Promise<boolean>((r) => (release = r)));
    release(await this.#untilDrained(() => this.#drained(d)));
  }

  /**
   * Node read EOF on X of a demoted direction. The kernel reports EOF as soon as X's FIN has
   * arrived and the psock's queue for readers is empty, but a passed skb goes through the psock's
   * backlog whenever that is not empty (it also holds skbs redirected into X, waiting for room in
   * X's send buffer) or X's receive buffer is full, and reaches the readers' queue only when the
   * psock's worker runs: EOF first, the last bytes after (lost under load before this check).
   * So X is read here, directly (Node's stream has ended), until TCP's count of what X received
   * is all relayed. False: the connection was reset meanwhile or the bytes never came.
   */
  async #readRest(d: Direction, onData: (chunk: Buffer) => void): Promise<boolean> {
    return this.#untilDrained(() => {
      const got = recvAll(d.fromFd, HOLD_MAX);
      if (got.data.length) onData(got.data);
      return this.#unrelayed(d) === 0;
    }, 'the last bytes the kernel passed to the proxy before a FIN did not arrive');
  }

  /** The sweep's check, after the program lost a throttle event (full ring buffer). */
  checkThrottled(): void {
    for (const d of this.dirs) if (d.kernel && !d.demoted && !d.done && this.fp.flow(d.fromKey)?.throttled) void this.#demote(d);
  }

  #maybeFinish(): void {
    if (this.#over || !this.dirs.every((d) => d.done)) return;
    this.#cleanup();
    closeWhenFlushed(this.a);
    closeWhenFlushed(this.b);
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
    clearTimeout(this.#timer);
    for (const d of this.dirs) {
      if (!d.kernel) continue;
      this.fp.unwatch(d);
      const moved = this.fp.flowBytes(d.fromKey);
      d.bytes += moved;
      this.#kernelBytes += moved;
    }
    for (const d of this.dirs) if (d.fromFd >= 0) this.fp.forget(d.fromKey);
    this.fp.ended(this);
  }

  #result(): RelayResult {
    return { aToB: this.dirs[0].bytes, bToA: this.dirs[1].bytes, kernelBytes: this.#kernelBytes, path: this.path };
  }
}

export class FastPath {
  readonly enabled: boolean;
  /** why the kernel path is off although enabled (the program or maps could not load) */
  readonly unavailable?: string;
  readonly drainTimeoutMs: number;
  readonly promoteAfter: { bytes: number; ms: number } | null;
  readonly #log: Logger;
  #obj?: BpfObject;
  #srcs?: BpfMap;
  #dsts?: BpfMap;
  #flows?: BpfMap;
  #stats?: BpfMap;
  #watcher?: HupWatcher;
  readonly #handlers = new Map<number, (revents: number) => void>();
  /** socket cookie (as a number) of a kernel direction -> what to do when the program throttles it */
  readonly #throttle = new Map<number, () => void>();
  readonly #splices = new Set<Splice>();
  #sweep?: NodeJS.Timeout;
  #demotedCount?: Counter;
  #nextToken = 1;
  #active = 0;
  readonly #fallbacks?: Counter<'reason'>;
  readonly #deferred?: Counter<'reason'>;
  readonly #spliced?: Counter<'path'>;

  constructor(o: FastPathOptions) {
    this.#log = o.log.child({ component: 'fastpath' });
    this.drainTimeoutMs = o.drainTimeoutMs ?? 30_000;
    this.promoteAfter = o.promoteAfter ?? null;
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
      this.#spliced = new Counter({ name: 'inpod_fastpath_connections_total', help: 'Connections spliced, by how their bytes travel (kernel; mixed: one direction stayed in userspace)', labelNames: ['path'], registers: reg });
      this.#fallbacks = new Counter({ name: 'inpod_fastpath_fallback_total', help: 'Connections the kernel would not take, relayed in userspace instead, by reason', labelNames: ['reason'], registers: reg });
      this.#demotedCount = new Counter({ name: 'inpod_fastpath_demoted_total', help: 'Spliced directions handed back to userspace because the receiving side fell behind (kernel back-pressure)', registers: reg });
      this.#deferred = new Counter({ name: 'inpod_fastpath_promotion_deferred_total', help: 'Promotions of a userspace connection to the kernel put off (retried), by reason', labelNames: ['reason'], registers: reg });
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
    const srcs = obj.map('inpod_fp_srcs');
    this.#dsts = obj.map('inpod_fp_dsts');
    this.#flows = obj.map('inpod_fp_flows');
    this.#stats = obj.map('inpod_fp_stats');
    const prog = obj.prog('inpod_fp_verdict');
    progAttach(prog.fd, srcs.fd, prog.attachType);
    this.#watcher = new HupWatcher((token, revents, cookie) => {
      try {
        if (token === THROTTLE_TOKEN) this.#throttle.get(cookie!)?.();
        else this.#handlers.get(token)?.(revents);
      } catch (e) {
        this.#log.warn({ err: (e as Error).message }, 'fast path: hang-up handler failed');
      }
    });
    this.#watcher.ringbuf(obj.map('inpod_fp_events').fd, THROTTLE_TOKEN);
    // a throttle event the ring buffer had no room for is counted by the program; only then are
    // the open connections' flows looked at (not every connection's, every second)
    let lost = 0n;
    this.#sweep = setInterval(() => {
      const now = this.#stats?.sumPerCpu(FP_STAT.lost) ?? 0n;
      if (now === lost) return;
      lost = now;
      for (const s of this.#splices) s.checkThrottled();
    }, 1000);
    this.#sweep.unref();
    this.#srcs = srcs;
  }

  #unload(): void {
    clearInterval(this.#sweep);
    this.#watcher?.close();
    this.#obj?.destroy();
    this.#srcs = this.#dsts = this.#flows = this.#stats = this.#watcher = this.#obj = undefined;
  }

  /**
   * Relays `a` <-> `b` (`a` the side that opened the connection): spliced in the kernel where it
   * can be (at once, or once the connection proves long-lived or bulky: `promoteAfter`), else in
   * userspace. Both sockets must be connected and never read yet (see the top of the file).
   * `done` runs once, when both directions are over or either side failed.
   */
  relay(a: net.Socket, b: net.Socket, done: (r: RelayResult) => void): void {
    const gone = relayGone(a, b);
    if (gone) return done({ aToB: 0, bToA: 0, error: gone, kernelBytes: 0, path: 'userspace' });
    if (!this.#srcs) {
      if (this.enabled) this.#fallbacks?.inc({ reason: 'unavailable' });
      userspaceRelay(a, b, (r) => done({ ...r, kernelBytes: 0, path: 'userspace' }));
      return;
    }
    const s: Splice = new Splice(this, a, b, (r) => {
      if (s.kernel) this.#active--;
      done(r);
    });
    this.#splices.add(s);
    if (this.promoteAfter) s.startUser(this.promoteAfter);
    else s.spliceNow();
  }

  /**
   * Puts each direction's sockets in the maps (targets, flows, then the verdict map); marks the
   * directions the kernel took. Both sockets must have been read to empty (or never read), and
   * every userspace write to them must be in the kernel already.
   */
  join(dirs: [Direction, Direction]): void {
    const srcs = this.#srcs!;
    const dsts = this.#dsts!;
    const flows = this.#flows!;
    const [ab, ba] = dirs;
    let keys: Buffer[] = [];
    const refused = (e: unknown): void => {
      for (const k of keys) {
        srcs.delete(k);
        dsts.delete(k);
        flows.delete(k);
      }
      for (const d of dirs) d.kernel = false;
      const errno = e instanceof SyscallError ? e.errno : 0;
      this.#fallbacks?.inc({ reason: errno === EOPNOTSUPP ? 'not_established' : 'kernel_refused' });
      if (errno !== EOPNOTSUPP) this.#log.warn({ err: (e as Error).message }, 'kernel refused a splice; userspace path');
    };
    try {
      for (const [d, other] of [[ab, ba], [ba, ab]] as const) {
        d.fromFd = fdOf(d.from);
        d.toFd = fdOf(other.from);
        d.fromKey = encodeU64(socketCookie(d.fromFd));
      }
      keys = [ab.fromKey, ba.fromKey];
      for (const d of dirs) dsts.update(d.fromKey, encodeU64(BigInt(d.fromFd)));
      // peerBase: what Y had taken before anything could be redirected into it
      for (const [d, other] of [[ab, ba], [ba, ab]] as const) {
        flows.update(d.fromKey, encodeFpFlow({ peer: decodeKey(other.fromKey), bytes: 0, segs: 0, peerBase: tcpWritten(d.toFd), throttled: 0 }));
      }
    } catch (e) {
      return refused(e);
    }
    let firstErr: unknown;
    for (const d of dirs) {
      try {
        srcs.update(d.fromKey, encodeU64(BigInt(d.fromFd)));
        d.kernel = true;
      } catch (e) {
        firstErr ??= e;
      }
    }
    if (!ab.kernel && !ba.kernel) return refused(firstErr);
    // one direction stays in userspace; its socket is written by the kernel direction only
    if (firstErr) this.#fallbacks?.inc({ reason: 'not_established' });
    this.#active++;
    this.#spliced?.inc({ path: ab.kernel && ba.kernel ? 'kernel' : 'mixed' });
  }

  promotionFailed(reason: string): void {
    this.#deferred?.inc({ reason });
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

  /** Stops watching the direction's socket (idempotent). */
  unwatch(d: Direction): void {
    if (!d.token) return;
    this.#watcher?.unwatch(d.fromFd);
    this.#handlers.delete(d.token);
    d.token = 0;
  }

  flow(key: Buffer): FpFlow | null {
    const v = this.#flows?.lookup(key);
    return v ? decodeFpFlow(v) : null;
  }

  flowBytes(key: Buffer): number {
    return this.flow(key)?.bytes ?? 0;
  }

  onThrottle(key: Buffer, fn: () => void): void {
    this.#throttle.set(Number(decodeKey(key)), fn);
  }

  forget(key: Buffer): void {
    this.#flows?.delete(key);
    this.#throttle.delete(Number(decodeKey(key)));
  }

  ended(s: Splice): void {
    this.#splices.delete(s);
  }

  demoted(): void {
    this.#demotedCount?.inc();
  }

  /** Entries in the fast path's maps (what a leak test counts). */
  mapEntries(): { srcs: number; dsts: number; flows: number } {
    return { srcs: this.#srcs?.keys().length ?? 0, dsts: this.#dsts?.keys().length ?? 0, flows: this.#flows?.keys().length ?? 0 };
  }

  /** Kernel-wide counters: bytes and skbs redirected, skbs dropped, flows throttled. */
  counters(): { bytes: number; segs: number; drops: number; throttles: number } {
    const c = (i: number): number => Number(this.#stats?.sumPerCpu(i) ?? 0n);
    return { bytes: c(FP_STAT.bytes), segs: c(FP_STAT.segs), drops: c(FP_STAT.drop), throttles: c(FP_STAT.throttle) };
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
