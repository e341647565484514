/**
 * The shared userspace relay (ts/proxy/relay.ts) with real sockets on loopback: a client, a
 * proxy that relays each accepted connection to a server, and the server. HTTP/2 cases relay a
 * CONNECT stream to a socket, as the HBONE inbound does.
 */
import { createHash, randomBytes } from 'node:crypto';
import http2 from 'node:http2';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { SOL_SOCKET, setSockOptInt, socketInNs } from '../../ts/native/index.js';
import { Relay, relay, type RelayCounts } from '../../ts/proxy/relay.js';
import { fdOf } from '../../ts/proxy/sockets.js';

const SO_SNDBUF = 7;
const SO_RCVBUF = 8;

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Everything `s` delivers until its end. */
function readAll(s: net.Socket | http2.ClientHttp2Stream): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    s.on('data', (d: Buffer) => parts.push(d));
    s.once('end', () => resolve(Buffer.concat(parts)));
    s.once('error', reject);
  });
}

/** The error `s` ends with, or 'clean end'. */
function outcome(s: net.Socket): Promise<string> {
  return new Promise((resolve) => {
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
    s.once('end', () => resolve('clean end'));
    s.resume();
  });
}

const listen = async (server: net.Server | http2.Http2Server): Promise<number> => {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return (server.address() as net.AddressInfo).port;
};

const connect = (port: number): Promise<net.Socket> => new Promise((resolve, reject) => {
  const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true }, () => resolve(s));
  s.once('error', reject);
});

/** client -> proxy (relay) -> server, on 127.0.0.1. */
class Rig {
  readonly results: RelayCounts[] = [];
  readonly relays: Relay[] = [];
  /** every socket of the rig's three parties, destroyed at stop() */
  readonly sockets = new Set<net.Socket>();
  #waiters: (() => void)[] = [];
  server = net.createServer({ allowHalfOpen: true }, (s) => {
    this.#own(s);
    this.onServer(s);
  });
  proxy = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (down) => void this.#relay(this.#own(down)));
  onServer: (s: net.Socket) => void = (s) => s.pipe(s);
  /** runs on the proxy's socket toward the client before the relay starts */
  onDown?: (down: net.Socket) => void;
  #serverPort = 0;

  #own(s: net.Socket): net.Socket {
    s.on('error', () => {});
    this.sockets.add(s);
    return s;
  }

  /** A client connection to the proxy, destroyed at stop(). */
  async client(): Promise<net.Socket> {
    return this.#own(await connect(this.port));
  }

  async start(): Promise<this> {
    this.#serverPort = await listen(this.server);
    await listen(this.proxy);
    return this;
  }

  get port(): number {
    return (this.proxy.address() as net.AddressInfo).port;
  }

  async #relay(down: net.Socket): Promise<void> {
    this.onDown?.(down);
    const up = this.#own(await connect(this.#serverPort));
    up.pause();
    const r = new Relay(down, up, (c) => {
      this.results.push(c);
      this.#waiters.splice(0).forEach((w) => w());
    });
    this.relays.push(r);
    r.start();
  }

  /** The next relay's report. */
  async relayed(n = 1): Promise<RelayCounts> {
    while (this.results.length < n) await new Promise<void>((r) => this.#waiters.push(r));
    return this.results[n - 1]!;
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise((r) => this.proxy.close(r));
    await new Promise((r) => this.server.close(r));
  }
}

/** Polls `cond` every millisecond until it holds (fails the test after 10 s). */
async function until(cond: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${ms} ms: ${cond.toString()}`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

describe('userspace relay', () => {
  let rig: Rig;
  afterEach(async () => {
    await rig?.stop();
  });

  it('half-closes client -> server: the server gets every byte and its end, and still answers', async () => {
    rig = await new Rig().start();
    const request = randomBytes(3 * 1024 * 1024);
    rig.onServer = (s) => void readAll(s).then((got) => s.end(`${got.length} ${sha(got)}`));
    const c = await rig.client();
    const answer = readAll(c);
    c.end(request);
    const expected = `${request.length} ${sha(request)}`;
    expect((await answer).toString()).toBe(expected);
    expect(await rig.relayed()).toEqual({ aToB: request.length, bToA: expected.length });
  });

  it('half-closes server -> client: the client gets every byte and its end, and still sends', async () => {
    rig = await new Rig().start();
    const body = randomBytes(3 * 1024 * 1024);
    let serverGot!: Promise<Buffer>;
    rig.onServer = (s) => {
      serverGot = readAll(s);
      s.end(body);
    };
    const c = await rig.client();
    const got = await readAll(c);
    expect(sha(got)).toBe(sha(body));
    // the server's side is closed for writing; the client's direction still runs
    c.end('thanks');
    expect((await serverGot).toString()).toBe('thanks');
    expect(await rig.relayed()).toEqual({ aToB: 6, bToA: body.length });
  });

  it('passes a client reset to the server (RST), and reports it', async () => {
    rig = await new Rig().start();
    let serverOutcome!: Promise<string>;
    const gotData = new Promise<void>((ok) => {
      rig.onServer = (s) => {
        serverOutcome = outcome(s);
        s.once('data', () => ok());
      };
    });
    const c = await rig.client();
    c.write('hello');
    await gotData;
    c.resetAndDestroy();
    expect(await serverOutcome).toBe('ECONNRESET');
    const r = await rig.relayed();
    expect(r.error).toBeDefined();
    expect(r.aToB).toBe(5);
  });

  it('passes a server reset to the client (RST), and reports it', async () => {
    rig = await new Rig().start();
    rig.onServer = (s) => s.once('data', () => s.resetAndDestroy());
    const c = await rig.client();
    const clientOutcome = outcome(c);
    c.write('hello');
    expect(await clientOutcome).toBe('ECONNRESET');
    expect((await rig.relayed()).error).toBeDefined();
  });

  it('holds the sender back while the receiver reads nothing, then delivers every byte in order', async () => {
    rig = await new Rig().start();
    let server!: net.Socket;
    const connected = new Promise<void>((ok) => {
      rig.onServer = (s) => {
        server = s;
        s.pause(); // reads nothing until told
        ok();
      };
    });
    const c = await rig.client();
    await connected;
    const data = randomBytes(64 * 1024 * 1024);
    let handed = 0;
    let blocked = false;
    // write until the client's socket takes no more: the relay stopped reading it
    while (handed < data.length) {
      const chunk = data.subarray(handed, handed + (1 << 20));
      handed += chunk.length;
      if (!c.write(chunk)) {
        const drained = await Promise.race([new Promise((r) => c.once('drain', () => r(true))), new Promise((r) => setTimeout(() => r(false), 200))]);
        if (!drained) {
          blocked = true;
          break;
        }
      }
    }
    expect(blocked).toBe(true);
    // what the relay read is bounded by the socket buffers, not by what the client offered
    const read = rig.relays[0]!.ab.bytes;
    expect(read).toBeLessThan(handed);
    expect(read).toBeLessThan(32 * 1024 * 1024);
    const got = readAll(server);
    server.resume();
    c.end(data.subarray(handed));
    expect(sha(await got)).toBe(sha(data));
    server.end();
    expect(await rig.relayed()).toEqual({ aToB: data.length, bToA: 0 });
  }, 60_000);

  it('closes a socket only once a slow reader has been handed every byte Node held for it', async () => {
    // Both directions end while the proxy's socket toward the client still holds, in Node, bytes
    // the client's small receive window has not taken: closing it at once would drop them.
    rig = await new Rig().start();
    const answer = randomBytes(30_000); // more than the client's window and the proxy's send buffer, less than Node's 16 KiB mark on top
    rig.onServer = (s) => {
      s.resume();
      s.once('end', () => s.end(answer));
    };
    rig.onDown = (down) => setSockOptInt(fdOf(down), SOL_SOCKET, SO_SNDBUF, 1); // the kernel's minimum
    // a receive buffer set before connect(), so the window the client advertises stays small
    const fd = socketInNs(-1, { family: 4 }).release();
    setSockOptInt(fd, SOL_SOCKET, SO_RCVBUF, 1);
    const c = new net.Socket({ fd, allowHalfOpen: true } as net.SocketConstructorOpts);
    rig.sockets.add(c);
    await new Promise<void>((ok) => c.connect(rig.port, '127.0.0.1', ok));
    c.pause();
    c.end();
    expect(await rig.relayed()).toEqual({ aToB: 0, bToA: answer.length });
    const gotP = readAll(c);
    c.resume();
    const got = await gotP;
    expect(got.length).toBe(answer.length);
    expect(sha(got)).toBe(sha(answer));
  });

  it('counts bytes exactly across many connections both ways', async () => {
    rig = await new Rig().start();
    const sizes = Array.from({ length: 40 }, (_, i) => 1 + i * 7919);
    await Promise.all(sizes.map(async (n) => {
      const c = await rig.client();
      const back = readAll(c);
      c.end(randomBytes(n));
      expect((await back).length).toBe(n);
    }));
    await rig.relayed(sizes.length);
    const total = sizes.reduce((a, n) => a + n, 0);
    expect(rig.results.reduce((a, r) => a + r.aToB, 0)).toBe(total);
    expect(rig.results.reduce((a, r) => a + r.bToA, 0)).toBe(total);
    expect(rig.results.filter((r) => r.error)).toEqual([]);
  });

  it('does not start on a side that is already gone: the other is closed and the relay reports', async () => {
    const a = new net.Socket();
    a.destroy();
    const b = new net.Socket();
    let r: RelayCounts | undefined;
    relay(a, b, (x) => (r = x));
    expect(r?.error?.message).toMatch(/closed before the relay started/);
    expect(b.destroyed).toBe(true);
  });
});

describe('userspace relay: an HTTP/2 stream and a socket (HBONE)', () => {
  let h2: http2.Http2Server | undefined;
  let app: net.Server | undefined;
  const sockets = new Set<net.Socket>();
  afterEach(async () => {
    for (const s of sockets) s.destroy();
    await new Promise((r) => (h2 ? h2.close(r) : r(null)));
    await new Promise((r) => (app ? app.close(r) : r(null)));
  });

  /** An h2c server relaying each CONNECT stream to an app; `onApp` gets the app's socket. */
  async function start(onApp: (s: net.Socket) => void): Promise<{ port: number; reported: Promise<RelayCounts> }> {
    app = net.createServer({ allowHalfOpen: true }, (s) => {
      sockets.add(s);
      s.on('error', () => {});
      onApp(s);
    });
    const appPort = await listen(app);
    let report!: (r: RelayCounts) => void;
    const reported = new Promise<RelayCounts>((r) => (report = r));
    h2 = http2.createServer();
    h2.on('stream', (stream) => {
      void connect(appPort).then((up) => {
        sockets.add(up);
        stream.respond({ ':status': 200 });
        relay(stream, up, report);
      });
    });
    return { port: await listen(h2), reported };
  }

  it('relays a tunnel both ways with END_STREAM as the half-close', async () => {
    const { port, reported } = await start((s) => void readAll(s).then((got) => s.end(sha(got))));
    const session = http2.connect(`http://127.0.0.1:${port}`);
    try {
      const stream = session.request({ ':method': 'CONNECT', ':authority': '127.0.0.1:1' });
      const body = randomBytes(2 * 1024 * 1024);
      const back = readAll(stream);
      stream.end(body);
      expect((await back).toString()).toBe(sha(body));
      expect(await reported).toEqual({ aToB: body.length, bToA: 64 });
    } finally {
      session.destroy();
    }
  });

  for (const [how, cut] of [
    // destroy() sends RST_STREAM(NO_ERROR) and no END_STREAM (close() would end the stream first)
    ['the peer resets the stream (RST_STREAM)', (_: http2.ClientHttp2Session, s: http2.ClientHttp2Stream) => s.destroy()],
    ['the tunnel\'s HTTP/2 connection goes away', (session: http2.ClientHttp2Session) => session.destroy()],
  ] as const) {
    it(`resets the app (RST) when ${how} mid-stream`, async () => {
      let appOutcome!: Promise<string>;
      let gotData!: () => void;
      const appGotData = new Promise<void>((ok) => (gotData = ok));
      const { port, reported } = await start((s) => {
        appOutcome = outcome(s);
        s.once('data', () => gotData());
      });
      const session = http2.connect(`http://127.0.0.1:${port}`);
      session.on('error', () => {});
      try {
        const stream = session.request({ ':method': 'CONNECT', ':authority': '127.0.0.1:1' });
        stream.on('error', () => {});
        stream.write('hello');
        await appGotData;
        cut(session, stream);
        expect(await appOutcome).toBe('ECONNRESET');
        const r = await reported;
        expect(r.error).toBeDefined();
        expect(r.aToB).toBe(5);
      } finally {
        session.destroy();
      }
    });
  }
});

describe('userspace relay: hooks the fast path composes', () => {
  let rig: Rig;
  afterEach(async () => {
    await rig?.stop();
  });

  it('holds a direction\'s bytes until release, then writes them in order before what follows; an end waits for them', async () => {
    rig = await new Rig().start();
    const serverGot = new Promise<Buffer>((ok) => (rig.onServer = (s) => void readAll(s).then(ok)));
    const c = await rig.client();
    await until(() => rig.relays.length === 1);
    const { ab } = rig.relays[0]!;
    ab.hold(1 << 20);
    c.write('first ');
    await until(() => ab.bytes === 6);
    c.end('second');
    await until(() => ab.bytes === 12);
    // the end came while holding: nothing reached the server yet
    ab.release();
    expect((await serverGot).toString()).toBe('first second');
  });

  it('keeps a side open after its end while its direction still reads it, though its write side had finished', async () => {
    // The fast path reads a handed-back socket directly after Node's EOF (its last bytes may come
    // later). Node closes a socket whose both sides are done as soon as it emits 'end': here the
    // server's side had already been shut (the client's end came first), so it would close the
    // socket, and its fd, under that read.
    const server = net.createServer({ allowHalfOpen: true }, (s) => {
      s.on('error', () => {});
      s.resume();
      s.once('end', () => s.end('bye'));
    });
    const serverPort = await listen(server);
    let open: boolean | undefined;
    let report!: (r: RelayCounts) => void;
    const reported = new Promise<RelayCounts>((ok) => (report = ok));
    const proxy = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (down) => {
      down.on('error', () => {});
      void connect(serverPort).then((up) => {
        const r: Relay = new Relay(down, up, report, {
          eof: (p) => {
            if (p !== r.ba) return p.end();
            // a direct read of the socket goes on for a while after Node's EOF
            setImmediate(() => setImmediate(() => {
              open = !up.destroyed;
              p.end();
            }));
          },
        }).start();
      });
    });
    try {
      const c = await connect(await listen(proxy));
      c.on('error', () => {});
      c.end();
      const got: Buffer[] = [];
      c.on('data', (d: Buffer) => got.push(d));
      const r = await reported;
      expect(open).toBe(true);
      expect(r).toEqual({ aToB: 0, bToA: 3 });
      await until(() => Buffer.concat(got).toString() === 'bye');
    } finally {
      await new Promise((r) => proxy.close(r));
      await new Promise((r) => server.close(r));
    }
  });

  it('runs the mark once, when the bytes both ways first reach it', async () => {
    let marks = 0;
    const server = net.createServer({ allowHalfOpen: true }, (s) => s.pipe(s));
    const serverPort = await listen(server);
    const proxy = net.createServer({ allowHalfOpen: true }, async (down) => {
      const up = await connect(serverPort);
      new Relay(down, up, () => {}, { mark: { bytes: 1000, reached: () => marks++ } }).start();
    });
    const port = await listen(proxy);
    try {
      const c = await connect(port);
      const back = readAll(c);
      c.write(Buffer.alloc(400)); // 800 both ways: not yet
      await until(() => c.bytesRead === 400);
      expect(marks).toBe(0);
      c.end(Buffer.alloc(600)); // 2000
      expect((await back).length).toBe(1000);
      expect(marks).toBe(1);
    } finally {
      await new Promise((r) => proxy.close(r));
      await new Promise((r) => server.close(r));
    }
  });
});
