/**
 * The native HBONE engine (addon/src/hbone_*.cc, C++ over nghttp2 and OpenSSL) fed HTTP/2 frame
 * sequences generated at random by a peer that holds a valid mesh certificate: as the listener
 * (the peer dials 15008) and as the client (the proxy dials a peer's 15008). The frames are
 * mostly well-formed, so they get past the framing into the engine's stream and tunnel handling:
 * CONNECTs that the engine answers and bridges to an app, then DATA with and without padding,
 * RST_STREAM, WINDOW_UPDATE with zero and overflowing increments, SETTINGS with out-of-range
 * values, PUSH_PROMISE, GOAWAY, CONTINUATION out of place, unknown types, frames cut short, raw
 * bytes; the peer then half-closes, resets or waits.
 *
 * A crash of the engine ends this test's process. Beyond that the test requires what a node
 * needs after such a peer: nothing left open in the engine (its connection and stream counts
 * return to 0), every tunnel it reported reported closed, every socket to the app closed (no fd
 * kept), and an honest client served afterwards.
 *
 * The frames come from a seed, one random sequence per connection: a failure names the seed, and
 * INPOD_FUZZ_SEED=<seed> draws the same frames again (the peer's answers as client in the order
 * it accepts; what the engine has done by then still depends on timing).
 */
import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { IssuedCert } from '../../ts/identity/ca.js';
import { hboneTlsContext } from '../../ts/native/hbone.js';
import { App, RecordingEngine, SETTINGS, connectFd, listenFd, makePki, until, type Pki } from '../native/fixtures/hbone.js';
import { FLAG, FRAME, PREFACE, connectBlock, frame, literal } from './h2raw.js';

const SEED = Number(process.env.INPOD_FUZZ_SEED ?? Date.now() % 2 ** 31);
const CONNECTIONS = 160; // per direction
const AT_ONCE = 16;

let pki: Pki;
let alice: IssuedCert;
let bob: IssuedCert;
let app: App;
const cleanups: (() => void)[] = [];
beforeAll(async () => {
  pki = await makePki();
  alice = await pki.issue('alice');
  bob = await pki.issue('bob');
  app = await new App().start();
  // the app echoes, and ends its side once the engine ended the tunnel's
  app.onSocket = (s) => s.pipe(s);
});
afterAll(() => {
  for (const c of cleanups.reverse()) c();
  app?.close();
  pki?.cleanup();
});

/** xorshift32 for connection `n` of a run from `seed`: the same pair gives the same frames. */
function random(seed: number, n: number) {
  let x = (seed ^ Math.imul(n + 1, 0x9e3779b1)) >>> 0 || 1;
  const next = (): number => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 2 ** 32;
  };
  const int = (n: number): number => Math.floor(next() * n);
  return {
    int,
    chance: (p: number): boolean => next() < p,
    pick: <T>(xs: readonly T[]): T => xs[int(xs.length)]!,
    bytes: (n: number): Buffer => Buffer.from(Array.from({ length: n }, () => int(256))),
  };
}
type Random = ReturnType<typeof random>;

/** `:status: 200` (static index 8, name and value); other statuses are literal(8, ...). */
const STATUS_200 = Buffer.from([0x88]);

const EDGE = [0, 1, 0x3fff, 0x4000, 0xffffff, 0x7fffffff, 0x80000000, 0xffffffff];

/**
 * A random frame from a peer whose streams so far are `streams` (its own odd ids as client, the
 * ones it answers as server). `block` is the header block an honest peer of that side would send.
 */
function randomFrame(r: Random, streams: number[], block: () => Buffer, nextStream: () => number): Buffer {
  const known = (): number => (streams.length ? r.pick(streams) : 1);
  const stream = (): number => r.pick([() => 0, known, known, nextStream, () => 2 * (1 + r.int(4)), () => 0x7fffffff, () => r.int(2 ** 31), () => 0x80000000 | known()])();
  const u32 = (v: number): Buffer => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(v >>> 0);
    return b;
  };
  switch (r.pick(['headers', 'headers', 'data', 'data', 'data', 'priority', 'rst', 'settings', 'push', 'ping', 'goaway', 'window', 'window', 'continuation', 'unknown', 'raw', 'short', 'garbageBlock'] as const)) {
    case 'headers': {
      // the honest header block, sometimes split over a CONTINUATION, sometimes padded or with a priority
      const id = r.chance(0.8) ? nextStream() : stream();
      const b = block();
      const end = r.chance(0.2) ? FLAG.END_STREAM : 0;
      if (r.chance(0.2)) {
        const cut = r.int(b.length + 1);
        return Buffer.concat([frame(FRAME.HEADERS, end, id, b.subarray(0, cut)), frame(FRAME.CONTINUATION, FLAG.END_HEADERS, r.chance(0.8) ? id : stream(), b.subarray(cut))]);
      }
      if (r.chance(0.15)) return frame(FRAME.HEADERS, end | FLAG.END_HEADERS | FLAG.PRIORITY, id, Buffer.concat([u32(r.chance(0.3) ? id : r.int(8)), Buffer.from([r.int(256)]), b]));
      if (r.chance(0.15)) {
        const pad = r.int(20);
        return frame(FRAME.HEADERS, end | FLAG.END_HEADERS | FLAG.PADDED, id, Buffer.concat([Buffer.from([r.chance(0.2) ? 255 : pad]), b, Buffer.alloc(pad)]));
      }
      return frame(FRAME.HEADERS, end | FLAG.END_HEADERS, id, b);
    }
    case 'data': {
      const payload = r.bytes(r.pick([0, 1, 100, 1000, 17000]));
      const flags = r.pick([0, 0, FLAG.END_STREAM, FLAG.PADDED, FLAG.PADDED | FLAG.END_STREAM]);
      if (flags & FLAG.PADDED) return frame(FRAME.DATA, flags, stream(), Buffer.concat([Buffer.from([r.chance(0.3) ? 255 : 4]), payload, Buffer.alloc(4)]));
      return frame(FRAME.DATA, flags, stream(), payload);
    }
    case 'priority':
      return frame(FRAME.PRIORITY, 0, stream(), r.chance(0.8) ? Buffer.concat([u32(r.int(16)), Buffer.from([r.int(256)])]) : r.bytes(r.int(9)));
    case 'rst':
      return frame(FRAME.RST_STREAM, 0, stream(), r.chance(0.85) ? u32(r.pick([0, 1, 2, 7, 8, 11, 0xff, r.int(2 ** 32)])) : r.bytes(r.int(8)));
    case 'settings': {
      if (r.chance(0.15)) return frame(FRAME.SETTINGS, FLAG.ACK, r.chance(0.8) ? 0 : stream(), r.bytes(r.pick([0, 0, 6])));
      const entries = Array.from({ length: r.int(5) }, () => {
        const b = Buffer.alloc(6);
        b.writeUInt16BE(r.pick([1, 2, 3, 4, 5, 6, 8, 9, r.int(65536)]));
        b.writeUInt32BE(r.chance(0.5) ? r.pick(EDGE) : r.int(2 ** 32), 2);
        return b;
      });
      return frame(FRAME.SETTINGS, 0, r.chance(0.9) ? 0 : stream(), r.chance(0.9) ? Buffer.concat(entries) : r.bytes(r.int(13)));
    }
    case 'push':
      return frame(FRAME.PUSH_PROMISE, FLAG.END_HEADERS, stream(), Buffer.concat([u32(2 * (1 + r.int(8))), block()]));
    case 'ping':
      return frame(FRAME.PING, r.pick([0, FLAG.ACK]), r.chance(0.9) ? 0 : stream(), r.bytes(r.chance(0.9) ? 8 : r.int(12)));
    case 'goaway':
      return frame(FRAME.GOAWAY, 0, r.chance(0.9) ? 0 : stream(), Buffer.concat([u32(r.pick([0, 1, ...streams, 0x7fffffff])), u32(r.pick([0, 2, 11, r.int(2 ** 32)])), r.bytes(r.int(16))]));
    case 'window':
      return frame(FRAME.WINDOW_UPDATE, 0, r.chance(0.3) ? 0 : stream(), r.chance(0.9) ? u32(r.chance(0.5) ? r.pick(EDGE) : r.int(2 ** 31)) : r.bytes(r.int(8)));
    case 'continuation':
      return frame(FRAME.CONTINUATION, r.pick([0, FLAG.END_HEADERS]), stream(), r.chance(0.5) ? block() : r.bytes(r.int(40)));
    case 'unknown':
      return frame(10 + r.int(246), r.int(256), stream(), r.bytes(r.int(64)));
    case 'raw':
      return r.bytes(1 + r.int(40));
    case 'short': {
      // a frame that says more than the peer will ever send (the connection ends inside it)
      const payload = r.bytes(r.int(64));
      return frame(r.pick([FRAME.DATA, FRAME.HEADERS, FRAME.SETTINGS]), 0, stream(), payload, payload.length + 1 + r.int(1 << 16));
    }
    case 'garbageBlock':
      return frame(FRAME.HEADERS, FLAG.END_HEADERS, nextStream(), r.bytes(1 + r.int(64)));
  }
}

/** How a fuzzing peer leaves: half-close, close, TCP reset, or wait (briefly) for the engine to end it. */
async function leave(r: Random, sock: tls.TLSSocket, tcp: net.Socket, closed: Promise<unknown>): Promise<void> {
  switch (r.pick(['end', 'destroy', 'reset', 'wait'] as const)) {
    case 'end':
      sock.end();
      break;
    case 'destroy':
      sock.destroy();
      break;
    case 'reset':
      tcp.resetAndDestroy();
      break;
    case 'wait':
      break;
  }
  await Promise.race([closed, new Promise((res) => setTimeout(res, 300))]);
  sock.destroy();
}

/** Runs `one(i)` for i in [0, n), `AT_ONCE` at a time. */
async function inBatches(n: number, one: (i: number) => Promise<void>): Promise<void> {
  for (let i = 0; i < n; i += AT_ONCE) await Promise.all(Array.from({ length: Math.min(AT_ONCE, n - i) }, (_, k) => one(i + k)));
}

/**
 * Waits until the engine holds no connection and no stream, has reported every one of `tunnels`
 * closed (its events arrive after its counts change), and every socket to the app is closed.
 */
async function settled(e: RecordingEngine, tunnels: () => number[], what: string): Promise<void> {
  const unclosed = (): number[] => {
    const closed = new Set(e.all('closed').map((x) => x.tunnel));
    return tunnels().filter((t) => !closed.has(t));
  };
  await until(() => {
    const s = e.engine.stats();
    return s.conns === 0 && s.streams === 0 && unclosed().length === 0 && app.sockets.every((x) => x.closed);
  }, 20_000, what).catch((err: Error) => {
    const open = app.sockets.filter((x) => !x.closed).length;
    throw new Error(`${err.message} (seed ${SEED}): engine ${JSON.stringify(e.engine.stats())}, tunnels never reported closed ${JSON.stringify(unclosed())}, app sockets open ${open}`);
  });
}

describe(`native HBONE engine fed random HTTP/2 frames by a peer with a mesh certificate (seed ${SEED}; INPOD_FUZZ_SEED replays)`, () => {
  it(`as the listener: ${CONNECTIONS} connections of random frames; the engine ends or keeps each, leaks nothing, and serves an honest client after`, async () => {
    const e = new RecordingEngine();
    cleanups.push(() => e.close());
    e.onEvent = (ev) => {
      if (ev.kind === 'handshake') e.engine.verdict(ev.conn, true);
      // most CONNECTs are admitted and bridged to the app; some are refused
      if (ev.kind === 'request') {
        if (ev.tunnel % 5 === 0) e.engine.respond(ev.tunnel, 401, [], -1);
        else void app.pair().then(({ fd }) => e.engine.respond(ev.tunnel, 200, [], fd));
      }
    };
    const l = listenFd();
    e.engine.listen(1, l.fd, hboneTlsContext({ certPem: alice.chainPem, keyPem: alice.keyPem, rootPem: pki.ca.rootPem, server: true }), SETTINGS);

    await inBatches(CONNECTIONS, async (i) => {
      const r = random(SEED, i);
      const tcp = net.connect(l.port, '127.0.0.1');
      tcp.on('error', () => {});
      const sock = tls.connect({ socket: tcp, cert: bob.chainPem, key: bob.keyPem, ca: pki.ca.rootPem, ALPNProtocols: ['h2'], checkServerIdentity: () => undefined, minVersion: 'TLSv1.3' });
      sock.on('error', () => {});
      const closed = new Promise((res) => sock.on('close', res));
      await Promise.race([new Promise((res) => sock.on('secureConnect', res)), closed]);
      sock.resume();
      const streams: number[] = [];
      let next = 1;
      const nextStream = (): number => {
        streams.push(next);
        return (next += 2) - 2;
      };
      const block = (): Buffer => connectBlock(`10.0.0.${1 + r.int(9)}:${1 + r.int(9000)}`);
      // mostly an honest start (CONNECTs, then bytes on them once answered), so that what follows
      // reaches tunnels the engine has bridged to the app
      const honest = [PREFACE, frame(FRAME.SETTINGS, 0, 0, Buffer.alloc(0))];
      for (let n = r.int(4); n > 0; n--) honest.push(frame(FRAME.HEADERS, FLAG.END_HEADERS, nextStream(), block()));
      sock.write(Buffer.concat(honest));
      if (streams.length) await new Promise((res) => setTimeout(res, 5 + r.int(30)));
      const frames = streams.filter(() => r.chance(0.7)).map((id) => frame(FRAME.DATA, 0, id, r.bytes(1 + r.int(3000))));
      for (let n = 1 + r.int(25); n > 0; n--) frames.push(randomFrame(r, streams, block, nextStream));
      // in a few writes, with the engine's answers in between
      while (frames.length && !sock.destroyed) {
        sock.write(Buffer.concat(frames.splice(0, 1 + r.int(6))));
        if (r.chance(0.3)) await new Promise((res) => setTimeout(res, r.int(20)));
      }
      await leave(r, sock, tcp, closed);
    });

    // every tunnel the engine reported is reported closed, nothing is held, no app socket kept
    await settled(e, () => e.all('request').map((x) => x.tunnel), 'the engine to let go of everything the fuzzing peers opened');
    expect(e.all('request').length, `the frames opened tunnels (seed ${SEED})`).toBeGreaterThan(0);

    // an honest client is served: its bytes go to the app and come back
    const c = http2.connect(`https://127.0.0.1:${l.port}`, { cert: bob.chainPem, key: bob.keyPem, ca: pki.ca.rootPem, minVersion: 'TLSv1.3', checkServerIdentity: () => undefined });
    c.on('error', () => {});
    cleanups.push(() => c.destroy());
    let got = '';
    for (let i = 0; i < 5 && got === ''; i++) {
      // a tunnel whose id falls on the refused fifth is answered 401: the next one is admitted
      const req = c.request({ ':method': 'CONNECT', ':authority': '10.0.0.1:80' });
      req.on('error', () => {});
      const status = Number((await new Promise<http2.IncomingHttpHeaders>((res) => req.on('response', res)))[':status']);
      if (status !== 200) continue;
      req.setEncoding('utf8');
      req.end('honest');
      for await (const chunk of req) got += chunk as string;
    }
    expect(got, `an honest client after the fuzzing (seed ${SEED})`).toBe('honest');
  }, 120_000);

  it(`as the client: ${CONNECTIONS} dials to a peer that answers with random frames; every tunnel closes, nothing leaks, an honest server is used after`, async () => {
    let accepted = 0;
    // the peer: mTLS, h2; it reads the engine's frames only for the streams the engine opens, and
    // whenever the engine sends it something, answers with random frames, mostly led by a header
    // block (a status, often 200) for a stream that waits for one
    const peer = tls.createServer({ cert: bob.chainPem, key: bob.keyPem, ca: pki.ca.rootPem, requestCert: true, rejectUnauthorized: true, ALPNProtocols: ['h2'], minVersion: 'TLSv1.3' }, (sock) => {
      sock.on('error', () => {});
      const r = random(~SEED, accepted++);
      const streams: number[] = []; // opened by the engine
      let answered = 0;
      const nextStream = (): number => streams[answered++] ?? 2 * r.int(64) + 1;
      const status = (): Buffer => r.pick([STATUS_200, STATUS_200, STATUS_200, literal(8, '401'), literal(8, '503'), literal(8, '100'), literal(8, 'abc'), Buffer.alloc(0)]);
      const batch = (): Buffer => {
        const frames: Buffer[] = [];
        while (answered < streams.length && r.chance(0.7)) frames.push(frame(FRAME.HEADERS, FLAG.END_HEADERS | (r.chance(0.1) ? FLAG.END_STREAM : 0), nextStream(), status()));
        for (let n = r.int(3); n > 0; n--) frames.push(randomFrame(r, streams, status, nextStream));
        return Buffer.concat(frames);
      };
      sock.write(Buffer.concat([frame(FRAME.SETTINGS, 0, 0, Buffer.alloc(0)), r.chance(0.15) ? batch() : Buffer.alloc(0)]));
      let left = 1 + r.int(8);
      let seen = Buffer.alloc(0);
      let preface = false;
      sock.on('data', (d: Buffer) => {
        seen = Buffer.concat([seen, d]);
        if (!preface && seen.length >= PREFACE.length) [seen, preface] = [seen.subarray(PREFACE.length), true];
        while (preface && seen.length >= 9 && seen.length >= 9 + seen.readUIntBE(0, 3)) {
          if (seen[3] === FRAME.HEADERS) streams.push(seen.readUInt32BE(5) & 0x7fffffff);
          seen = seen.subarray(9 + seen.readUIntBE(0, 3));
        }
        if (!streams.length && r.chance(0.85)) return; // mostly: nothing before the first CONNECT
        if (left-- > 0 && !sock.destroyed) sock.write(batch());
        else if (left < -3 && r.chance(0.5)) sock.destroy();
      });
    });
    await new Promise<void>((res) => peer.listen(0, '127.0.0.1', res));
    cleanups.push(() => peer.close());
    const port = (peer.address() as net.AddressInfo).port;

    const e = new RecordingEngine();
    cleanups.push(() => e.close());
    const ctx = hboneTlsContext({ certPem: alice.chainPem, keyPem: alice.keyPem, rootPem: pki.ca.rootPem, server: false });
    const opened: number[] = [];
    e.onEvent = (ev) => {
      if (ev.kind === 'handshake') e.engine.verdict(ev.conn, true);
      // a 2xx is bridged to the app (which echoes), as the proxy's outbound does
      if (ev.kind === 'response' && ev.status >= 200 && ev.status < 300) void app.pair().then(({ fd }) => e.engine.relay(ev.tunnel, fd));
      if (ev.kind === 'response' && (ev.status < 200 || ev.status >= 300)) e.engine.reset(ev.tunnel);
    };
    let tunnel = 1000;
    await inBatches(CONNECTIONS, async (i) => {
      const r = random(SEED, i);
      const conn = 100 + i;
      e.engine.client(conn, connectFd(port), ctx, SETTINGS);
      const ended = () => e.find('connClosed', (x) => x.conn === conn);
      const endedWithin = (ms: number): Promise<boolean> => until(ended, ms).then(() => true, () => false);
      const state = await until(() => (e.find('ready', (x) => x.conn === conn) ? 'ready' : ended() ? 'ended' : undefined), 10_000, 'the dial to be ready or ended');
      if (state === 'ready') {
        for (let n = 1 + r.int(4); n > 0; n--) {
          opened.push(++tunnel);
          e.engine.open(conn, tunnel, [':method', 'CONNECT', ':authority', `10.0.0.1:${1 + r.int(9000)}`]);
        }
      }
      // the engine ends the connection itself or, at the end, the proxy closes it as a drain does:
      // GOAWAY first, then (the deadline passed) at once
      if (!(await endedWithin(200 + r.int(200))) && r.chance(0.5)) {
        e.engine.connClose(conn, true);
        await endedWithin(300);
      }
      if (!ended()) e.engine.connClose(conn, false);
      await e.wait('connClosed', (x) => x.conn === conn);
    });

    // every tunnel opened is reported closed, nothing is held, no app socket kept
    await settled(e, () => opened, 'the engine to let go of every tunnel it opened to the fuzzing peer');
    expect(e.all('response').length, `the peer's frames answered tunnels (seed ${SEED})`).toBeGreaterThan(0);

    // the same engine then uses an honest server: answered, and relayed both ways (the server's
    // bytes reach the app, which echoes them back through the tunnel)
    const honest = http2.createSecureServer({ cert: bob.chainPem, key: bob.keyPem, ca: pki.ca.rootPem, requestCert: true, minVersion: 'TLSv1.3' });
    const echoed = new Promise<string>((res) =>
      honest.on('stream', (s) => {
        let got = '';
        s.setEncoding('utf8');
        s.on('data', (d: string) => (got += d));
        s.on('end', () => res(got));
        s.respond({ ':status': 200 });
        s.end('honest');
      }),
    );
    await new Promise<void>((res) => honest.listen(0, '127.0.0.1', res));
    cleanups.push(() => honest.close());
    e.engine.client(9, connectFd((honest.address() as net.AddressInfo).port), ctx, SETTINGS);
    await e.wait('ready', (x) => x.conn === 9);
    expect((await e.open(9, 99, [':method', 'CONNECT', ':authority', '10.0.0.1:80'])).status).toBe(200);
    expect(await echoed, `an honest server after the fuzzing (seed ${SEED})`).toBe('honest');
  }, 120_000);
});
