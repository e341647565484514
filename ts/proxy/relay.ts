/**
 * The userspace relay: one connection's bytes copied by Node between two duplex streams, both
 * ways (two sockets, or an HBONE stream and a socket). HBONE tunnels always take it; the kernel
 * fast path (fastpath/) uses it for every direction the kernel does not carry.
 *
 * Per direction X -> Y (a Pump):
 * - back-pressure: when Y's buffer (RELAY_BUFFER_BYTES in Node) is full X is not read until Y drains,
 *   so a receiver that stops reading holds the sender back (TCP's window closes behind X);
 * - half-close: X's end (FIN, END_STREAM) ends Y's write side after every byte before it, and
 *   the other direction goes on;
 * - `bytes` counts what was read from X (and written, held, or waiting for the turn's end, for Y);
 * - writes to a socket are coalesced: the first chunk X delivers in a turn of the event loop is written to Y
 *   at once (a request/response pays no wait), the chunks after it in the same turn are written
 *   together at the end of that turn, one writev. An HBONE stream delivers a TLS read of 64 KiB
 *   as DATA pieces cut at the 16 KiB TLS records, some of a few bytes (measured: 8 writes per 64
 *   KiB, half of them under 40 bytes, each its own TCP segment under TCP_NODELAY); coalesced, that
 *   is two writes. Anything that must see Y's bytes in order (an end, stop(), a direct push(), hold())
 *   writes what waits first. An HTTP/2 stream is written as chunks come: its session already
 *   sends what every stream queued in a turn together, at the turn's end.
 * A reset or error on either side, or either side closed while the relay still runs, resets
 * both (a socket with RST, a stream by destroy(): RST_STREAM), so neither peer takes a cut stream
 * for a whole one. (Node ends an HTTP/2 stream's readable side on RST_STREAM too, but says
 * 'aborted' first: that is a reset here, not an end.) `done` runs once: when both directions
 * have ended, or at the reset. The relay closes its sockets itself, Node does not: after a clean
 * end once Node has handed the kernel what it still holds for them.
 *
 * Lean by design, the proxy holds one per open connection: a Relay and two Pumps, and listeners
 * shared by every relay that find their pump through a symbol on the stream. No closure per
 * connection or per chunk (Node's pipe() makes about ten per direction).
 */
import net from 'node:net';
import type { Duplex } from 'node:stream';

/** What a relay reports: the bytes each way, and the error that ended it, if one did. */
export interface RelayCounts {
  aToB: number;
  bToA: number;
  error?: Error;
}

/** How the kernel fast path takes part in a relay it composes (fastpath/splice.ts). */
export interface RelayHooks {
  /** X's end reached Node: runs instead of ending Y at once (the hook calls pump.end() itself). */
  eof?(p: Pump): void;
  /** Runs once, when the relay is over, before its sides are closed or reset. */
  closing?(): void;
  /** Runs once, when the bytes relayed both ways first reach `bytes`. */
  mark?: { bytes: number; reached(): void };
}

/**
 * What a relay lets wait in Node for Y before it stops reading X (Y's writable high-water mark).
 * Node's default, 16 KiB, is below one socket read (64 KiB): every read of a bulk transfer
 * paused X and restarted it on Y's drain (a readStop/readStart and two epoll_ctl per read). This
 * is ztunnel's largest copy buffer (src/copy.rs JUMBO_BUFFER_SIZE, 256 KiB; its HTTP/2 server's
 * send buffer, src/proxy/h2/server.rs max_send_buffer_size, is 400 KiB): what one direction may
 * hold is this plus one read.
 */
export const RELAY_BUFFER_BYTES = 256 * 1024;

const NO_HOOKS: RelayHooks = Object.freeze({});
const noop = (): void => {};
const kReads = Symbol('inpod.relay.reads');
const kWrites = Symbol('inpod.relay.writes');
/** A stream in a relay: it knows the pump that reads it and the pump that writes it. */
type Side = Duplex & { [kReads]?: Pump; [kWrites]?: Pump };

// The listeners, shared by every relay: `this` is the stream that emitted.
function onData(this: Side, chunk: Buffer): void {
  this[kReads]!.take(chunk);
}
function onEnd(this: Side): void {
  this[kReads]!.eof();
}
function onDrain(this: Side): void {
  this[kWrites]!.drained();
}
function onError(this: Side, e: Error): void {
  this[kReads]!.relay.abort(e);
}
/** An HTTP/2 stream the peer reset (RST_STREAM) or whose connection went away: Node emits 'aborted' first, then an 'end'. */
function onAborted(this: Side): void {
  this[kReads]!.relay.abort(new Error('the peer reset the stream'));
}
function onClose(this: Side): void {
  this[kReads]!.relay.abort(new Error('one side closed before the relay ended'));
}
function destroySelf(this: Duplex): void {
  this.destroy();
}

/**
 * Turns of the event loop, as the relays see them: `turn` moves on at the end of each turn in
 * which a pump wrote (one setImmediate for all of them), and the pumps in `due` write what they
 * coalesced then.
 */
let turn = 0;
let armed = false;
let due: Pump[] = [];
function endTurn(): void {
  armed = false;
  turn++;
  const list = due;
  due = [];
  for (const p of list) p.flush();
}
function arm(): void {
  if (armed) return;
  armed = true;
  setImmediate(endTurn);
}

type Handle = { reading?: boolean; readStop?: () => number; readStart?: () => number };
const handleOf = (s: Duplex): Handle | undefined => (s as unknown as { _handle?: Handle })._handle;

/**
 * Stops Node reading a socket at the libuv level: pause() alone keeps filling its buffer. This
 * and startReading() use the handle's `reading` flag the way net.Socket itself does.
 */
export function stopReading(s: Duplex): void {
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
export function startReading(s: Duplex): void {
  const h = handleOf(s);
  if (h && h.reading === false && h.readStart && !s.destroyed) {
    h.reading = true;
    h.readStart();
  }
  s.resume();
}

/**
 * The relay decides when its sockets close (at its end, or at a reset). Node would close a
 * socket as soon as both its sides are done, i.e. at its 'end' when its write side had
 * finished: under the fast path, which reads a handed-back socket's fd directly after that
 * 'end' until its last bytes are in, the fd would close (and its number could be reused) under
 * that read.
 */
function keepOpen(s: net.Socket): void {
  const states = s as unknown as { _readableState: { autoDestroy: boolean }; _writableState: { autoDestroy: boolean } };
  states._readableState.autoDestroy = false;
  states._writableState.autoDestroy = false;
}

/**
 * Raises `s`'s writable high-water mark to RELAY_BUFFER_BYTES. Node takes it only at
 * construction, and an HTTP/2 stream is constructed inside Node; Writable reads the state's
 * field at every write.
 */
function bufferUpTo(s: Duplex): void {
  const w = (s as unknown as { _writableState?: { highWaterMark: number } })._writableState;
  if (w && w.highWaterMark < RELAY_BUFFER_BYTES) w.highWaterMark = RELAY_BUFFER_BYTES;
}

/** Resets a side: a TCP socket with RST, anything else (an HTTP/2 stream) by destroy(). */
function reset(s: Duplex): void {
  if (s.destroyed) return;
  if (s instanceof net.Socket) {
    try {
      s.resetAndDestroy();
      return;
    } catch {
      /* not a TCP handle: destroy() below */
    }
  }
  s.destroy();
}

/**
 * Closes a socket whose write side ended, at once when Node holds nothing more for it (the
 * kernel sends what it has, then the FIN), else once Node has handed the kernel the rest.
 */
function closeWhenFlushed(s: Duplex): void {
  if (s.destroyed || !(s instanceof net.Socket)) return;
  if (s.writableLength === 0) s.destroy();
  else s.once('finish', destroySelf);
}

/** One direction of a relay, X (`from`) -> Y (`to`). */
export class Pump {
  /** bytes read from X (written to Y, or held for it) */
  bytes = 0;
  #state: 'idle' | 'flowing' | 'stopped' | 'ended' = 'idle';
  /** hold(): chunks kept for Y until release() */
  #held?: Buffer[];
  #heldBytes = 0;
  #holdMax = Infinity;
  /** end() came while holding: Y ends after the held bytes */
  #endAfterHold = false;
  /** X waits for Y to drain */
  #blocked = false;
  /** the turn in which this direction last wrote to Y at once */
  #turn = -1;
  /** Y is a socket: writes are coalesced (an HTTP/2 stream's are by its session already) */
  readonly #coalesce: boolean;
  /** chunks coalesced in this turn, written at its end */
  #batch?: Buffer[];

  constructor(readonly relay: Relay, readonly from: Duplex, readonly to: Duplex) {
    (from as Side)[kReads] = this;
    (to as Side)[kWrites] = this;
    this.#coalesce = to instanceof net.Socket;
  }

  /** Y's write side was ended by this direction. */
  get ended(): boolean {
    return this.#state === 'ended';
  }

  /** Node reads X and writes Y. From idle or stopped; otherwise nothing changes. */
  start(): void {
    if (this.#state !== 'idle' && this.#state !== 'stopped') return;
    this.#state = 'flowing';
    this.from.on('data', onData);
    this.from.once('end', onEnd);
    startReading(this.from);
  }

  /** Node stops reading X, at the handle (the kernel fast path takes X, or reads it itself). */
  stop(): void {
    if (this.#state !== 'flowing') return;
    this.flush();
    this.#state = 'stopped';
    stopReading(this.from);
    this.from.off('data', onData);
    this.from.off('end', onEnd);
  }

  /**
   * Counts a chunk of X's and writes it to Y now (or holds it), after whatever waits for the end
   * of the turn. Chunks read from X's fd directly (by the fast path) come in here, so Y sees one
   * ordered stream, and is written when the caller looks at Y's buffer next.
   */
  push(chunk: Buffer): void {
    this.flush();
    this.#count(chunk);
    if (!this.#hold(chunk)) this.#write(chunk);
    this.relay.counted();
  }

  /** A chunk Node read from X: written at once if it is this turn's first, else at the turn's end. */
  take(chunk: Buffer): void {
    this.#count(chunk);
    if (this.#hold(chunk)) {
      /* kept for release() */
    } else if (!this.#coalesce) {
      this.#write(chunk);
    } else if (this.#batch) {
      this.#batch.push(chunk);
    } else if (this.#turn === turn) {
      this.#batch = [chunk];
      due.push(this);
      arm();
    } else {
      this.#turn = turn;
      arm();
      this.#write(chunk);
    }
    this.relay.counted();
  }

  /** Writes what this turn coalesced, as one writev (nothing once the relay was reset). */
  flush(): void {
    const b = this.#batch;
    if (!b) return;
    this.#batch = undefined;
    if (this.relay.over || this.to.destroyed) return;
    if (b.length === 1) return this.#write(b[0]!);
    this.to.cork();
    let ok = true;
    for (const c of b) ok = this.to.write(c);
    this.to.uncork();
    if (!ok) this.#block();
  }

  #count(chunk: Buffer): void {
    this.bytes += chunk.length;
  }

  /** Keeps `chunk` if this direction holds (hold()); false otherwise. */
  #hold(chunk: Buffer): boolean {
    if (!this.#held) return false;
    this.#held.push(chunk);
    this.#heldBytes += chunk.length;
    if (this.#heldBytes > this.#holdMax) this.from.pause();
    return true;
  }

  /** X's end reached Node. */
  eof(): void {
    this.relay.eof(this);
  }

  /** Ends Y's write side after every byte before it (after release(), when holding). Idempotent. */
  end(): void {
    if (this.#state === 'ended') return;
    this.flush();
    if (this.#held) {
      this.#endAfterHold = true;
      return;
    }
    if (this.#state === 'flowing') {
      this.from.off('data', onData);
      this.from.off('end', onEnd);
    }
    this.#state = 'ended';
    this.to.end();
    this.relay.pumpEnded();
  }

  /**
   * Keeps what X delivers from now on instead of writing it, reading on until `max` bytes are
   * held (a stopped reader could wedge a kernel queue someone else needs), until release().
   */
  hold(max: number): void {
    this.flush();
    this.#held = [];
    this.#heldBytes = 0;
    this.#holdMax = max;
  }

  /** Writes what was held, in order, and relays on; an end() that came meanwhile follows. */
  release(): void {
    const held = this.#held;
    if (!held) return;
    this.#held = undefined;
    const paused = this.#heldBytes > this.#holdMax;
    for (const c of held) this.#write(c);
    if (this.#endAfterHold) this.end();
    else if (paused && this.#state === 'flowing' && !this.#blocked) this.from.resume();
  }

  /** Y drained: X is read again, unless this direction is stopped or holding its maximum. */
  drained(): void {
    if (!this.#blocked) return;
    this.#blocked = false;
    if (this.#state === 'flowing' && !(this.#held && this.#heldBytes > this.#holdMax)) this.from.resume();
  }

  #write(chunk: Buffer): void {
    if (!this.to.write(chunk)) this.#block();
  }

  #block(): void {
    this.#blocked = true;
    this.from.pause();
  }
}

/**
 * One connection relayed both ways, `a` <-> `b`. Construct, then start() (or drive the pumps,
 * as the fast path does); see the top of the file for what it guarantees.
 */
export class Relay {
  readonly ab: Pump;
  readonly ba: Pump;
  #over = false;
  #marked = false;

  constructor(readonly a: Duplex, readonly b: Duplex, private readonly done: (r: RelayCounts) => void, private readonly hooks: RelayHooks = NO_HOOKS) {
    this.ab = new Pump(this, a, b);
    this.ba = new Pump(this, b, a);
    for (const s of [a, b]) {
      s.on('error', onError).on('drain', onDrain).once('close', onClose);
      bufferUpTo(s);
      if (s instanceof net.Socket) keepOpen(s);
      else s.once('aborted', onAborted);
    }
  }

  /** Both directions relayed by Node. */
  start(): this {
    this.ab.start();
    this.ba.start();
    return this;
  }

  /** The relay has reported (ended or reset). */
  get over(): boolean {
    return this.#over;
  }

  /** Resets both sides and reports `e` (once; nothing after the relay is over). */
  abort(e: Error): void {
    if (this.#over) return;
    this.#over = true;
    this.hooks.closing?.();
    reset(this.a);
    reset(this.b);
    this.done({ aToB: this.ab.bytes, bToA: this.ba.bytes, error: e });
  }

  /** @internal a pump's X ended in Node */
  eof(p: Pump): void {
    if (this.hooks.eof) this.hooks.eof(p);
    else p.end();
  }

  /** @internal a pump ended its Y: the relay is over once both have */
  pumpEnded(): void {
    if (this.#over || !this.ab.ended || !this.ba.ended) return;
    this.#over = true;
    this.hooks.closing?.();
    closeWhenFlushed(this.a);
    closeWhenFlushed(this.b);
    this.done({ aToB: this.ab.bytes, bToA: this.ba.bytes });
  }

  /** @internal a pump counted bytes */
  counted(): void {
    const m = this.hooks.mark;
    if (!m || this.#marked || this.ab.bytes + this.ba.bytes < m.bytes) return;
    this.#marked = true;
    m.reached();
  }
}

/**
 * A relay must not start on a side that is already gone (the client reset while the proxy was
 * connecting upstream): nothing would ever end the other side. Destroys both and says why, or
 * returns undefined when both are alive.
 */
export function relayGone(a: { destroyed: boolean; destroy(e?: Error): void }, b: { destroyed: boolean; destroy(e?: Error): void }): Error | undefined {
  if (!a.destroyed && !b.destroyed) return undefined;
  a.destroy();
  b.destroy();
  return new Error('one side closed before the relay started');
}

/** Relays `a` <-> `b` in Node (see the top of the file); `done` runs once with the counts. */
export function relay(a: Duplex, b: Duplex, done: (r: RelayCounts) => void = noop): void {
  const gone = relayGone(a, b);
  if (gone) return done({ aToB: 0, bToA: 0, error: gone });
  new Relay(a, b, done).start();
}
