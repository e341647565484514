/**
 * How the relay (ts/proxy/relay.ts) writes: coalesced per turn of the event loop into a socket,
 * the turn's first chunk at once; how much may wait for a side before the other is paused.
 * Sides are in memory so every write call the relay makes is seen as one.
 */
import net from 'node:net';
import { Duplex } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { RELAY_BUFFER_BYTES, Relay, type RelayCounts } from '../../ts/proxy/relay.js';
import { until } from '../netns/lab.js';

/**
 * A socket side kept in memory: what the test pushes is what the relay reads, and every write the
 * relay makes is recorded as one call (a writev as one call of several chunks).
 */
function memorySide(): { side: net.Socket; writes: Buffer[][]; finished: Promise<void> } {
  const writes: Buffer[][] = [];
  let finish!: () => void;
  const finished = new Promise<void>((ok) => (finish = ok));
  const side = new net.Socket({ allowHalfOpen: true });
  Object.assign(side, {
    _read() {},
    _write(chunk: Buffer, _enc: string, cb: () => void) {
      writes.push([chunk]);
      cb();
    },
    _writev(chunks: { chunk: Buffer }[], cb: () => void) {
      writes.push(chunks.map((c) => c.chunk));
      cb();
    },
    _final(cb: () => void) {
      finish();
      cb();
    },
  });
  return { side, writes, finished };
}

describe('userspace relay: coalesced writes', () => {
  it('writes the first chunk of a turn at once and the rest of that turn as one writev; counts and the end follow every byte', async () => {
    const a = memorySide();
    const b = memorySide();
    const report = new Promise<RelayCounts>((ok) => new Relay(a.side, b.side, ok).start());
    // one turn: a TLS read cut into DATA pieces, as an HBONE stream delivers it, then END_STREAM
    const pieces = ['x'.repeat(16_348), 'y'.repeat(9), 'z'.repeat(16_357), 'w'.repeat(18)].map((s) => Buffer.from(s));
    setImmediate(() => {
      for (const p of pieces) a.side.push(p);
      a.side.push(null);
    });
    await b.finished;
    expect(b.writes.map((w) => w.length)).toEqual([1, 3]);
    expect(Buffer.concat(b.writes.flat()).equals(Buffer.concat(pieces))).toBe(true);
    // the other direction still runs after the half-close, then ends the relay
    b.side.push(Buffer.from('answer'));
    b.side.push(null);
    await a.finished;
    expect(Buffer.concat(a.writes.flat()).toString()).toBe('answer');
    expect(await report).toEqual({ aToB: 16_348 + 9 + 16_357 + 18, bToA: 6 });
  });

  it('writes a chunk at once when it is the only one of its turn (a request waits for no later turn)', async () => {
    const a = memorySide();
    const b = memorySide();
    new Relay(a.side, b.side, () => {}).start();
    for (const req of ['GET /1', 'GET /2']) {
      await new Promise((r) => setImmediate(r));
      a.side.push(Buffer.from(req));
      // written before any immediate runs: not left for the end of the turn
      await new Promise((r) => process.nextTick(r));
      expect(b.writes.at(-1)?.map(String)).toEqual([req]);
    }
  });

  it('drops what a reset relay had coalesced: nothing is written after the reset', async () => {
    const a = memorySide();
    const b = memorySide();
    const r = new Relay(a.side, b.side, () => {});
    r.start();
    await new Promise((ok) => setImmediate(ok));
    a.side.push(Buffer.from('first'));
    a.side.push(Buffer.from('second'));
    await new Promise((ok) => process.nextTick(ok));
    r.abort(new Error('test reset'));
    await new Promise((ok) => setImmediate(ok));
    expect(b.writes.flat().map(String)).toEqual(['first']);
    expect(r.ab.bytes).toBe(11);
  });
});

describe('userspace relay: what it lets wait for a side', () => {
  it('keeps reading while a writer takes a 64 KiB read at once, and stops once RELAY_BUFFER_BYTES waits', async () => {
    // (an HTTP/2 stream, constructed inside Node with the default 16 KiB mark, is written as chunks come)
    const a = memorySide();
    // a writer that completes nothing until told: everything written waits in Node
    const done: (() => void)[] = [];
    const b = new Duplex({ read() {}, write(_c, _e, cb) { done.push(cb); }, writev(_c, cb) { done.push(cb); } });
    new Relay(a.side, b, () => {}).start();
    await new Promise((r) => setImmediate(r));
    // one socket read's worth: above Node's default 16 KiB mark, it used to pause the reader
    a.side.push(Buffer.alloc(64 * 1024));
    expect(a.side.isPaused()).toBe(false);
    for (let i = 0; i < 4; i++) {
      await new Promise((r) => setImmediate(r));
      a.side.push(Buffer.alloc(64 * 1024));
    }
    // the fourth waiting read filled the buffer: the fifth stays unread in the source
    expect(b.writableLength).toBe(RELAY_BUFFER_BYTES);
    expect(a.side.isPaused()).toBe(true);
    expect(a.side.readableLength).toBe(64 * 1024);
    // the writer drains: the reader runs again
    while (done.length) done.shift()!();
    await until('the reader runs again', () => !a.side.isPaused());
  });
});
