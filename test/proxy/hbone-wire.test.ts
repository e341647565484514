/**
 * The HBONE client's and server's HTTP/2 settings as a raw peer receives them, against ztunnel's
 * (src/config.rs window_size 4 MiB, connection_window_size 16 MiB, frame_size 1 MiB; applied by
 * src/proxy/h2/client.rs spawn_connection and src/proxy/h2/server.rs serve_connection): the
 * SETTINGS frame decoded entry by entry, and the WINDOW_UPDATE that opens the connection window.
 * Over loopback in this netns; the headers of real tunnels are checked in
 * test/netns/hbone-wire.test.ts.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalCa } from '../../ts/identity/ca.js';
import { CertManager } from '../../ts/identity/manager.js';
import { openPath, type Fd } from '../../ts/native/index.js';
import { dialHbone } from '../../ts/proxy/hbone/client.js';
import { DEFAULT_HBONE_LIMITS, http2LimitsFromEnv } from '../../ts/proxy/hbone/limits.js';
import { createHboneServer } from '../../ts/proxy/hbone/server.js';
import { until } from '../netns/lab.js';
import { FLAG, FRAME, FrameReader, PREFACE, RawH2Peer, SETTING, decodeSettings, frame } from '../security/h2raw.js';

const MiB = 1024 * 1024;
/** RFC 9113 6.9.2: every connection starts with a 65,535-byte window; a WINDOW_UPDATE adds to it */
const INITIAL_CONNECTION_WINDOW = 65_535;
const TD = 'cluster.local';
const WEB = { trustDomain: TD, namespace: 'shop', serviceAccount: 'web' };
const SLEEP = { trustDomain: TD, namespace: 'default', serviceAccount: 'sleep' };

describe("HBONE HTTP/2 settings on the wire are ztunnel's", () => {
  let dir: string;
  let certs: CertManager;
  let selfNs: Fd;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'inpod-h2wire-'));
    certs = new CertManager(await LocalCa.open(join(dir, 'ca'), TD));
    selfNs = openPath('/proc/self/ns/net');
  });
  afterAll(() => {
    selfNs?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** The HBONE server on loopback; each stream is answered 200 and its bytes counted into `received`. */
  const hboneServer = async (): Promise<{ port: number; received: Map<number, number>; close: () => void }> => {
    const cert = await certs.get(WEB);
    const received = new Map<number, number>();
    const server = createHboneServer({
      cert: cert.chainPem, key: cert.keyPem, ca: certs.rootPem, trustDomain: TD, log: pino({ level: 'silent' }),
      onStream: async ({ stream }) => {
        stream.respond({ ':status': 200 });
        stream.on('data', (d: Buffer) => received.set(stream.id!, (received.get(stream.id!) ?? 0) + d.length));
      },
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return { port: (server.address() as net.AddressInfo).port, received, close: () => server.close() };
  };

  const rawPeer = async (port: number): Promise<RawH2Peer> => {
    const c = await certs.get(SLEEP);
    return RawH2Peer.connect({ socket: net.connect(port, '127.0.0.1'), cert: c.chainPem, key: c.keyPem, ca: certs.rootPem });
  };

  it('the server (15008) announces 200 streams, a 4 MiB stream window, 1 MiB frames, a 64 KiB header list, nothing else, and opens a 16 MiB connection window', async () => {
    const s = await hboneServer();
    const peer = await rawPeer(s.port);
    try {
      await peer.until('the server SETTINGS and connection WINDOW_UPDATE', (x) => x.settings.length > 0 && x.windowUpdates.length > 0, 5000);
      expect(peer.seen.settings[0]).toEqual([
        [SETTING.MAX_CONCURRENT_STREAMS, 200],
        [SETTING.INITIAL_WINDOW_SIZE, 4 * MiB],
        [SETTING.MAX_FRAME_SIZE, 1 * MiB],
        [SETTING.MAX_HEADER_LIST_SIZE, 64 * 1024],
      ]);
      expect(peer.seen.windowUpdates[0]).toEqual({ stream: 0, increment: 16 * MiB - INITIAL_CONNECTION_WINDOW });
    } finally {
      peer.close();
      s.close();
    }
  });

  it('the server takes a 1 MiB DATA frame and 4 MiB on one stream before reading, as a ztunnel peer may send (Node defaults: 16 KiB frames, 64 KiB windows)', async () => {
    const s = await hboneServer();
    const peer = await rawPeer(s.port);
    try {
      const { id, bytes } = peer.connectStream('10.0.0.1:8080');
      peer.write(bytes);
      await peer.until('the 200', (x) => x.responded.has(id), 5000);
      for (let i = 0; i < 4; i++) peer.write(frame(FRAME.DATA, 0, id, Buffer.alloc(MiB, i)));
      await until('4 MiB received on the stream', () => s.received.get(id) === 4 * MiB, { timeoutMs: 10_000, context: () => `${s.received.get(id)} bytes; ${JSON.stringify(peer.seen.goaway)}` });
      expect(peer.seen.goaway).toEqual([]);
      expect(peer.seen.rst.size).toBe(0);
    } finally {
      peer.close();
      s.close();
    }
  });

  it('the client announces no push, a 4 MiB stream window, 1 MiB frames, a 16 KiB header list, nothing else, and opens a 16 MiB connection window', async () => {
    const cert = await certs.get(WEB);
    const settings: [number, number][][] = [];
    const windowUpdates: { stream: number; increment: number }[] = [];
    const raw = tls.createServer({ cert: cert.chainPem, key: cert.keyPem, ca: certs.rootPem, requestCert: true, ALPNProtocols: ['h2'], minVersion: 'TLSv1.3' }, (sock) => {
      sock.on('error', () => {});
      sock.write(frame(FRAME.SETTINGS, 0, 0));
      const reader = new FrameReader();
      let pre = Buffer.alloc(0);
      sock.on('data', (d: Buffer) => {
        if (pre.length < PREFACE.length) {
          pre = Buffer.concat([pre, d]);
          if (pre.length < PREFACE.length) return;
          expect(pre.subarray(0, PREFACE.length)).toEqual(PREFACE);
          d = pre.subarray(PREFACE.length);
        }
        for (const f of reader.push(d)) {
          if (f.type === FRAME.SETTINGS && !(f.flags & FLAG.ACK)) {
            settings.push(decodeSettings(f.payload));
            sock.write(frame(FRAME.SETTINGS, FLAG.ACK, 0));
          } else if (f.type === FRAME.WINDOW_UPDATE) windowUpdates.push({ stream: f.stream, increment: f.payload.readUInt32BE(0) & 0x7fffffff });
        }
      });
    });
    await new Promise<void>((resolve) => raw.listen(0, '127.0.0.1', resolve));
    const port = (raw.address() as net.AddressInfo).port;
    const conn = await dialHbone(
      { certs, connectTimeoutMs: 5000, h2: DEFAULT_HBONE_LIMITS },
      { owner: 'test', nsFd: selfNs.fd, identity: SLEEP, ip: '127.0.0.1' },
      { target: { ip: '127.0.0.1', port }, authority: { ip: '127.0.0.1', port: 8080 }, identities: ['spiffe://cluster.local/ns/shop/sa/web'] },
    );
    try {
      await until('the client SETTINGS and connection WINDOW_UPDATE', () => settings.length > 0 && windowUpdates.length > 0, { timeoutMs: 5000 });
      expect(settings[0]).toEqual([
        [SETTING.ENABLE_PUSH, 0],
        [SETTING.INITIAL_WINDOW_SIZE, 4 * MiB],
        [SETTING.MAX_FRAME_SIZE, 1 * MiB],
        [SETTING.MAX_HEADER_LIST_SIZE, 16 * 1024],
      ]);
      expect(windowUpdates[0]).toEqual({ stream: 0, increment: 16 * MiB - INITIAL_CONNECTION_WINDOW });
    } finally {
      conn.session.destroy();
      raw.close();
    }
  });
});

describe("ztunnel's HTTP/2 environment variables (src/config.rs HTTP2_STREAM_WINDOW_SIZE, HTTP2_CONNECTION_WINDOW_SIZE, HTTP2_FRAME_SIZE)", () => {
  it('unset: nothing overridden, so both ends keep ztunnel defaults (4 MiB, 16 MiB, 1 MiB)', () => {
    expect(http2LimitsFromEnv({})).toEqual({});
    expect(DEFAULT_HBONE_LIMITS).toMatchObject({ streamWindowSize: 4 * MiB, connectionWindowSize: 16 * MiB, maxFrameSize: MiB });
  });

  it("set: read as ztunnel reads them, Node's own defaults included (what the bench's proxy-h2default row runs)", () => {
    expect(http2LimitsFromEnv({ HTTP2_STREAM_WINDOW_SIZE: '65535', HTTP2_CONNECTION_WINDOW_SIZE: '65535', HTTP2_FRAME_SIZE: '16384' }))
      .toEqual({ streamWindowSize: 65_535, connectionWindowSize: 65_535, maxFrameSize: 16_384 });
  });

  it('a value HTTP/2 cannot announce refuses to start (ztunnel parse_default fails), naming the variable and its range', () => {
    expect(() => http2LimitsFromEnv({ HTTP2_FRAME_SIZE: '1000' })).toThrow(/HTTP2_FRAME_SIZE="1000": want an integer from 16384 to 16777215 .*default 1048576/);
    expect(() => http2LimitsFromEnv({ HTTP2_STREAM_WINDOW_SIZE: '4MiB' })).toThrow(/HTTP2_STREAM_WINDOW_SIZE="4MiB"/);
    expect(() => http2LimitsFromEnv({ HTTP2_CONNECTION_WINDOW_SIZE: String(2 ** 31) })).toThrow(/HTTP2_CONNECTION_WINDOW_SIZE/);
    expect(() => http2LimitsFromEnv({ HTTP2_STREAM_WINDOW_SIZE: '' })).toThrow(/INPOD_ERR_CONFIG|want an integer/);
  });
});
