/**
 * One connection through the fast path, from start to cleanup: the shared userspace relay
 * (../relay.ts) carries what Node carries, the kernel what it takes, and each direction's state
 * is a Direction (direction.ts), changed only by its transitions.
 *
 * The contract with the caller: both sockets are connected and no userspace read has touched
 * them (accepted with pauseOnConnect, connected with `paused`), so every byte still to be
 * relayed is in a kernel queue in order, and nothing is waiting in Node's buffers.
 *
 * Switching on (maps.ts join) never races X's bytes: X and Y are first redirect targets, X's
 * flow names Y, and only then X joins the verdict map. A direction the kernel refuses (SOCKHASH
 * takes only ESTABLISHED sockets: the peer may have sent its FIN) runs in userspace; the other
 * can still be spliced, since each socket is written by exactly one direction.
 *
 * Closing: Node does not read spliced sockets, so the watcher's thread reports the peer's FIN or
 * reset. On a FIN from X, Y's write side is shut only after every byte the program redirected
 * from X has entered Y's send queue (the redirect runs in a kernel worker: shutting Y at once
 * could overtake bytes on their way). A reset on either side resets the other. Whether every
 * byte before a FIN was relayed is decided by TCP's count of what X received, never by SIOCINQ
 * or by EOF alone: on a socket with a verdict program neither sees the psock's backlog.
 */
import type net from 'node:net';
import { EPOLLERR, EPOLLRDHUP, recvAll, recvPeek, sockError, tcpReceived, tcpWritten } from '../../native/index.js';
import type { FpFlow } from '../../native/structs.js';
import { MeshError, SyscallError } from '../../util/errors.js';
import type { Logger } from '../../util/log.js';
import { Relay, type Pump, type RelayCounts } from '../relay.js';
import { fdOf } from '../sockets.js';
import { Direction } from './direction.js';
import type { Ends, FastPathMaps } from './maps.js';
import type { DeferReason, FastPathMetrics } from './metrics.js';
import type { FastPathWatcher } from './watcher.js';

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

/** What a splice uses of the fast path's loaded parts. */
export interface SpliceEnv {
  maps: FastPathMaps;
  watcher: FastPathWatcher;
  metrics: FastPathMetrics;
  log: Logger;
  /** how long a FIN may wait for redirected bytes to drain before the connection is reset */
  drainTimeoutMs: number;
}

/** A promotion reads what the kernel holds for the proxy; give up (and retry) beyond this. */
const PROMOTE_MAX_COPY = 4 * 1024 * 1024;
export const PROMOTE_RETRIES = 5;
/** A handed-back direction keeps reading while the kernel's last bytes drain; it holds at most this. */
const HOLD_MAX = 16 * 1024 * 1024;
const EOPNOTSUPP = 95;
const ECONNRESET = 104;

/** One direction: its state, its userspace pump, its sockets in the maps once joined. */
interface Way {
  readonly dir: Direction;
  readonly pump: Pump;
  readonly from: net.Socket;
  /** set by the join (also a refused one: its flow is forgotten at the end) */
  ends?: Ends;
  /** the hang-up watch on X while spliced */
  watch?: number;
  /** bytes the program redirected, read at the end */
  kernelBytes: number;
}

export class Splice {
  readonly #env: SpliceEnv;
  readonly #relay: Relay;
  readonly #ways: [Way, Way];
  #promoteTries = 0;
  #timer?: NodeJS.Timeout;

  /**
   * `a` is the side that opened the connection. `promoteAfter`: the mark of bytes a connection
   * started with startUser() is promoted at (its time mark is startUser's). `done` runs once.
   */
  constructor(env: SpliceEnv, a: net.Socket, b: net.Socket, done: (r: RelayResult) => void, promoteAfter: { bytes: number } | null) {
    this.#env = env;
    // the byte mark promotes only before the first try: later tries come from their timer
    const mark = promoteAfter && {
      bytes: promoteAfter.bytes,
      reached: (): void => {
        if (this.#promoteTries === 0) this.#guard(() => this.#promote());
      },
    };
    this.#relay = new Relay(a, b, (r) => done(this.#result(r)), {
      eof: (p) => this.#guard(() => this.#eof(p)),
      closing: () => this.#closing(),
      ...(mark ? { mark } : {}),
    });
    const way = (name: string, pump: Pump, from: net.Socket): Way => ({ dir: new Direction(name), pump, from, kernelBytes: 0 });
    this.#ways = [way('client -> server', this.#relay.ab, a), way('server -> client', this.#relay.ba, b)];
  }

  get path(): RelayPath {
    const k = this.#ways.filter((w) => w.dir.spliced).length;
    return k === 2 ? 'kernel' : k === 1 ? 'mixed' : 'userspace';
  }

  /** The kernel took at least one direction. */
  get kernel(): boolean {
    return this.#ways.some((w) => w.dir.spliced);
  }

  /** Splices at once (the sockets were never read); what the kernel does not take runs in Node. */
  spliceNow(): void {
    this.#guard(() => {
      this.#toKernel();
      for (const w of this.#ways) {
        if (w.dir.state !== 'idle') continue;
        w.dir.relay();
        w.pump.start();
      }
    });
  }

  /** Starts in userspace; promotes the connection after `ms` (or at the byte mark). */
  startUser(ms: number): void {
    this.#guard(() => {
      for (const w of this.#ways) {
        w.dir.relay();
        w.pump.start();
      }
      this.#schedule(ms);
    });
  }

  /** Resets both sides and reports `e` (once). */
  abort(e: Error): void {
    this.#relay.abort(e);
  }

  /** The watcher's sweep, after the program lost a throttle event (full ring buffer). */
  checkThrottled(): void {
    for (const w of this.#ways) {
      if (w.ends && w.dir.can('throttle') && this.#env.maps.flow(w.ends)?.throttled) this.#guard(() => this.#demote(w));
    }
  }

  /**
   * Runs a step; what it throws (or rejects with) resets the connection. A transition the
   * Direction table does not allow lands here: a defect, logged, never let out of the proxy.
   */
  #guard(step: () => void | Promise<void>): void {
    const failed = (e: unknown): void => {
      const err = e instanceof Error ? e : new Error(String(e));
      if (this.#relay.over) return;
      this.#env.log.warn({ err: err.message }, 'fast path: connection reset after a failure');
      this.abort(err);
    };
    try {
      step()?.catch(failed);
    } catch (e) {
      failed(e);
    }
  }

  #schedule(ms: number): void {
    this.#timer = setTimeout(() => this.#guard(() => this.#promote()), ms);
    this.#timer.unref();
  }

  /**
   * Moves both directions of a connection relayed in userspace into the kernel. Node stops
   * reading; what it or the kernel already holds for the proxy is written on in userspace
   * (reading the receive queue to empty also leaves no half-read skb for the verdict program,
   * which would send it whole); once those writes have reached the kernel, the sockets join the
   * maps, and every later byte is redirected behind them. Put off when busy, five tries at most.
   */
  async #promote(): Promise<void> {
    const { a, b } = this.#relay;
    // only a connection wholly in Node, both directions running
    if (this.#relay.over || !this.#ways.every((w) => w.dir.state === 'user')) return;
    if (this.#promoteTries >= PROMOTE_RETRIES) return; // stays in userspace
    if ([a, b].some((s) => s.destroyed || s.readableEnded || s.writableEnded)) return;
    this.#promoteTries++;
    // later tries come from this timer only (not from every chunk that passes the mark)
    clearTimeout(this.#timer);
    for (const w of this.#ways) {
      w.dir.pause();
      w.pump.stop();
    }
    if (a.readableLength || b.readableLength) return this.#putOff('busy');
    for (const w of this.#ways) {
      let got;
      try {
        got = recvAll(fdOf(w.from), PROMOTE_MAX_COPY);
      } catch (e) {
        // a reset: this read took the socket's error, so Node would read a clean EOF after it
        return this.abort(e as Error);
      }
      if (got.data.length) w.pump.push(got.data);
      // a FIN (Node reads it again on resume) or more than we copy: stay in userspace for now
      if (got.eof) return this.#putOff('not_established');
      if (got.more) return this.#putOff('busy');
    }
    // the copies must be in the kernel before anything is redirected behind them; reading
    // stays stopped meanwhile, so do not wait long
    const flushed = await this.#waitUntil(() => !a.writableLength && !b.writableLength, 50, 5);
    if (this.#relay.over) return;
    if (!flushed) return this.#putOff('busy');
    this.#toKernel();
    for (const w of this.#ways) {
      if (w.dir.state !== 'paused') continue;
      w.dir.resume();
      w.pump.start();
    }
  }

  /** A promotion did not happen now: Node relays on, and it is tried again later. */
  #putOff(why: DeferReason): void {
    for (const w of this.#ways) {
      w.dir.resume();
      w.pump.start();
    }
    this.#env.metrics.deferred(why);
    if (this.#promoteTries < PROMOTE_RETRIES && !this.#relay.over) this.#schedule(20 * this.#promoteTries);
  }

  /** Joins the maps (maps.ts join has the order); the directions the kernel took start there. */
  #toKernel(): void {
    const { maps, metrics, log } = this.#env;
    const j = maps.join(this.#ways[0].from, this.#ways[1].from);
    if (j.ends) [this.#ways[0].ends, this.#ways[1].ends] = j.ends;
    if (!j.taken[0] && !j.taken[1]) {
      const errno = j.refused instanceof SyscallError ? j.refused.errno : 0;
      metrics.fallback(errno === EOPNOTSUPP ? 'not_established' : 'kernel_refused');
      if (errno !== EOPNOTSUPP) log.warn({ err: (j.refused as Error)?.message }, 'kernel refused a splice; userspace path');
      return;
    }
    // one direction stays in userspace; its socket is written by the kernel direction only
    if (j.refused) metrics.fallback('not_established');
    metrics.spliced(j.taken[0] && j.taken[1] ? 'kernel' : 'mixed');
    for (const i of [0, 1] as const) if (j.taken[i]) this.#startKernel(this.#ways[i], j.ends![i]);
  }

  #startKernel(w: Way, e: Ends): void {
    w.dir.splice();
    w.pump.stop();
    const { watcher } = this.#env;
    w.watch = watcher.watch(e, (revents) => this.#guard(() => this.#onHup(w, e, revents)));
    watcher.onThrottle(e, () => this.#guard(() => this.#demote(w)));
    // bytes queued before the socket joined the verdict map wait for the next skb; a read runs
    // the program over them now. Nothing may come back: the program never passes to userspace.
    let peeked: number | null;
    try {
      peeked = recvPeek(e.fromFd);
    } catch (err) {
      return this.abort(err as Error);
    }
    if (peeked !== null && peeked > 0) this.abort(new MeshError('INPOD_ERR_FASTPATH', 'fast path: bytes reached the proxy on a spliced socket'));
  }

  /** The watcher reports X: a reset (both sides reset) or, while spliced, X's FIN. */
  #onHup(w: Way, e: Ends, revents: number): void {
    const s = w.dir.state;
    // handed back: Node reads X now and hears of its end itself
    if (this.#relay.over || !this.#live() || !(s === 'kernel' || s === 'draining' || s === 'done')) return;
    let err = 0;
    try {
      err = sockError(e.fromFd);
    } catch (x) {
      return this.abort(x as Error);
    }
    if (err || revents & EPOLLERR) return this.abort(new SyscallError('recv', err || ECONNRESET, 'peer reset the spliced connection'));
    if (s !== 'kernel' || !(revents & EPOLLRDHUP)) return; // after the FIN: only errors matter
    // keep hearing about a reset of this socket while the other direction runs
    try {
      this.#env.watcher.rearm(e, w.watch!);
    } catch (x) {
      return this.abort(x as Error);
    }
    w.dir.fin();
    this.#guard(() => this.#drainThenShut(w, e));
  }

  /** After X's FIN: shuts Y's write side once every byte before the FIN has reached Y's socket. */
  async #drainThenShut(w: Way, e: Ends): Promise<void> {
    let throttled = false;
    const ok = await this.#untilDrained(() => {
      // stopped by the program: the bytes before the FIN wait with X, and Node relays them
      const flow = this.#env.maps.flow(e);
      throttled = !!flow?.throttled;
      // else every byte before the FIN was redirected (the flow's count is final) and Y took it all
      return throttled || (this.#unrelayed(w, e, flow) === 0 && this.#drained(e, flow));
    });
    if (!ok || w.dir.state !== 'draining') return; // reset, or handed back meanwhile
    if (throttled) return this.#demote(w);
    w.dir.shut();
    w.pump.end();
  }

  /**
   * The program stopped redirecting X (Y's socket fell more than the in-flight bound behind):
   * X's later bytes wait on X itself, charged to its receive buffer, so TCP holds the sender
   * back. Once Y has taken everything redirected before, Node relays X (those waiting bytes
   * first, in order) with its own back-pressure. Meanwhile Node reads X ahead (up to HOLD_MAX):
   * a stopped reader could wedge the kernel's queue on X that the other direction also needs.
   */
  async #demote(w: Way): Promise<void> {
    if (this.#relay.over || !w.dir.can('throttle')) return; // late event: handed back or over
    const e = w.ends!;
    w.dir.throttle();
    this.#env.watcher.unwatch(e, w.watch!);
    w.watch = undefined;
    this.#env.metrics.demoted();
    w.pump.hold(HOLD_MAX);
    w.pump.start();
    if (await this.#untilDrained(() => this.#drained(e))) w.pump.release();
  }

  /** The relay saw X's end in Node. */
  #eof(p: Pump): void {
    const w = p === this.#ways[0].pump ? this.#ways[0] : this.#ways[1];
    if (w.dir.state !== 'handedBack') {
      w.dir.shut(); // from 'user'; anything else is a defect (Node reads no other direction)
      return w.pump.end();
    }
    w.dir.eof();
    const e = w.ends!;
    this.#guard(async () => {
      if (!(await this.#readRest(w, e))) return;
      w.dir.shut();
      w.pump.end();
    });
  }

  /**
   * Node read EOF on X of a handed-back direction. The kernel reports EOF as soon as X's FIN has
   * arrived and the psock's queue for readers is empty, but a passed skb goes through the psock's
   * backlog whenever that is not empty (it also holds skbs redirected into X, waiting for room in
   * X's send buffer) or X's receive buffer is full, and reaches the readers' queue only when the
   * psock's worker runs: EOF first, the last bytes after (lost under load before this check).
   * So X is read here, directly (Node's stream has ended), until TCP's count of what X received
   * is all relayed. False: the connection was reset meanwhile or the bytes never came.
   */
  #readRest(w: Way, e: Ends): Promise<boolean> {
    return this.#untilDrained(() => {
      const got = recvAll(e.fromFd, HOLD_MAX);
      if (got.data.length) w.pump.push(got.data);
      return this.#unrelayed(w, e) === 0;
    }, 'the last bytes the kernel passed to the proxy before a FIN did not arrive');
  }

  /**
   * Bytes X's TCP received that neither Node read nor the program redirected. Meaningful once X's
   * FIN has arrived: tcpi_bytes_received follows rcv_nxt, so it counts that FIN as one. The
   * kernel's own count, unlike SIOCINQ, which on a socket with a verdict program reports only the
   * psock's queue for readers (tcp_bpf_ioctl), not skbs still waiting in its backlog.
   */
  #unrelayed(w: Way, e: Ends, flow: FpFlow | null = this.#env.maps.flow(e)): number {
    return flow ? tcpReceived(e.fromFd) - 1 - w.pump.bytes - flow.bytes : NaN;
  }

  /** Y's socket has taken every byte the program redirected from X (the flow's count). */
  #drained(e: Ends, flow: FpFlow | null = this.#env.maps.flow(e)): boolean {
    return !!flow && tcpWritten(e.toFd) - flow.peerBase >= flow.bytes;
  }

  /**
   * Polls `cond` (at once, `immediate` more times on the next turns of the event loop, then every
   * millisecond) until it holds (true), the connection is over or `ms` passed (false). The kernel
   * tells nobody when its worker has moved the last skb; polling harder only burns CPU the worker
   * needs.
   */
  async #waitUntil(cond: () => boolean, ms: number, immediate = 2): Promise<boolean> {
    const deadline = Date.now() + ms;
    for (let i = 0; !this.#relay.over; i++) {
      // `cond` reads the sockets' fds: never once a socket is closed (its fd may be another's)
      if (!this.#live()) {
        this.abort(new MeshError('INPOD_ERR_FASTPATH', 'fast path: a spliced socket was closed while its connection was relayed'));
        return false;
      }
      if (cond()) return true;
      if (Date.now() > deadline) return false;
      await new Promise((r) => (i < immediate ? setImmediate(r) : setTimeout(r, 1)));
    }
    return false;
  }

  /** Both sockets are open, so the fds the splice reads directly are still theirs. */
  #live(): boolean {
    return !this.#relay.a.destroyed && !this.#relay.b.destroyed;
  }

  /**
   * Waits up to drainTimeoutMs for `cond` (a syscall failing in it, or the time running out,
   * resets the connection). True once it holds on a connection still open.
   */
  async #untilDrained(cond: () => boolean, what = 'redirected bytes did not drain'): Promise<boolean> {
    let err: Error | undefined;
    const ms = this.#env.drainTimeoutMs;
    const ok = await this.#waitUntil(() => {
      try {
        return cond();
      } catch (e) {
        err = e as Error;
        return true;
      }
    }, ms);
    if (err) this.abort(err);
    else if (!ok && !this.#relay.over) this.abort(new MeshError('INPOD_ERR_FASTPATH', `fast path: ${what} within ${ms} ms`));
    return ok && !err && !this.#relay.over;
  }

  /** The relay is over: stop watching, read what the kernel moved, forget the flows. */
  #closing(): void {
    clearTimeout(this.#timer);
    const { maps, watcher, metrics, log } = this.#env;
    try {
      for (const w of this.#ways) {
        if (!w.ends) continue;
        if (w.watch !== undefined) watcher.unwatch(w.ends, w.watch);
        w.watch = undefined;
        if (w.dir.spliced) w.kernelBytes = maps.flow(w.ends)?.bytes ?? 0;
        maps.forget(w.ends);
        watcher.forget(w.ends);
      }
    } catch (e) {
      log.warn({ err: (e as Error).message }, 'fast path: cleanup of a connection failed');
    }
    if (this.kernel) metrics.unspliced();
  }

  #result(r: RelayCounts): RelayResult {
    const [ab, ba] = this.#ways;
    const out: RelayResult = { aToB: r.aToB + ab.kernelBytes, bToA: r.bToA + ba.kernelBytes, kernelBytes: ab.kernelBytes + ba.kernelBytes, path: this.path };
    if (r.error) out.error = r.error;
    return out;
  }
}
