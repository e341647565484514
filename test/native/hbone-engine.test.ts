/**
 * The native HBONE engine (addon/src/hbone_*.cc, ts/native/hbone.ts) against independent
 * implementations on real loopback sockets: Node's own http2 over tls as the server for the
 * engine's client, and as the client of the engine's listener, and the engine against itself.
 */
import { createHash, randomBytes } from 'node:crypto';
import http2 from 'node:http2';
import type net from 'node:net';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { IssuedCert } from '../../ts/identity/ca.js';
import { hboneTlsContext } from '../../ts/native/hbone.js';
import { App, RecordingEngine, SETTINGS, connectFd, drain, listenFd, makePki, pump, until, type Pki } from './fixtures/hbone.js';

let pki: Pki;
let other: Pki;
let alice: IssuedCert; // the engine's side
let bob: IssuedCert; // the independent peer
let mallory: IssuedCert; // another CA
let app: App;
const cleanups: (() => void)[] = [];

beforeAll(async () => {
  pki = await makePki();
  other = await makePki();
  alice = await pki.issue('alice');
  bob = await pki.issue('bob');
  mallory = await other.issue('mallory');
  app = await new App().start();
});
afterAll(() => {
  for (const c of cleanups.reverse()) c();
  app?.close();
  pki?.cleanup();
  other?.cleanup();
});

function engine(): RecordingEngine {
  const e = new RecordingEngine();
  cleanups.push(() => e.close());
  return e;
}

const clientCtx = () => hboneTlsContext({ certPem: alice.chainPem, keyPem: alice.keyPem, rootPem: pki.ca.rootPem, server: false });
const serverCtx = () => hboneTlsContext({ certPem: alice.chainPem, keyPem: alice.keyPem, rootPem: pki.ca.rootPem, server: true });

/** Node's HTTP/2 server over mTLS 1.3 with `cert`; `onStream` answers each CONNECT. */
async function nodeServer(cert: IssuedCert, onStream: (s: http2.ServerHttp2Stream, h: http2.IncomingHttpHeaders, raw: string[]) => void) {
  const srv = http2.createSecureServer({ cert: cert.chainPem, key: cert.keyPem, ca: pki.ca.rootPem, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3', allowHTTP1: false });
  srv.on('stream', (s, h, _f, raw) => onStream(s, h, raw));
  srv.on('sessionError', () => {});
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  cleanups.push(() => srv.close());
  return { srv, port: (srv.address() as net.AddressInfo).port };
}

/** Dials `port` with the engine and accepts the peer; resolves once 'ready'. */
async function dial(e: RecordingEngine, connId: number, port: number) {
  e.engine.client(connId, connectFd(port), clientCtx(), SETTINGS);
  const hs = await e.wait('handshake', (x) => x.conn === connId);
  e.engine.verdict(connId, true);
  await e.wait('ready', (x) => x.conn === connId);
  return hs;
}

const CONNECT = (authority: string, extra: string[] = []) => [':method', 'CONNECT', ':authority', authority, ...extra];

describe('engine client -> Node http2 server', () => {
  it('sends the CONNECT with its headers in order, gets 200 + baggage, relays 1 KiB and 20 MiB both ways with half-closes, counts bytes', async () => {
    const seen: string[][] = [];
    const { port } = await nodeServer(bob, (s, _h, raw) => {
      seen.push(raw);
      s.respond({ ':status': 200, baggage: 'k8s.cluster.name=c1' });
      // echo what arrives, then end once the client ended
      s.pipe(s);
    });
    const e = engine();
    const hs = await dial(e, 1, port);
    expect(hs.uris).toEqual(['spiffe://cluster.local/ns/default/sa/bob']);
    expect(hs.remote).toEqual({ ip: '127.0.0.1', port });
    expect(hs.local.ip).toBe('127.0.0.1');
    for (const [tunnel, size] of [[10, 1024], [11, 20 * 1024 * 1024]] as const) {
      e.engine.open(1, tunnel, CONNECT('10.0.0.1:8080', ['x-forwarded-network', 'net1', 'baggage', 'a=b']));
      const resp = await e.wait('response', (x) => x.tunnel === tunnel);
      expect(resp.status).toBe(200);
      expect(resp.headers).toEqual(expect.arrayContaining(['baggage', 'k8s.cluster.name=c1']));
      expect(resp.headers).not.toContain(':status');
      const { fd, peer } = await app.pair();
      e.engine.relay(tunnel, fd);
      const back = drain(peer);
      const sha = await pump(peer, size);
      const got = await back;
      expect(got).toEqual({ bytes: size, sha });
      const closed = await e.wait('closed', (x) => x.tunnel === tunnel, 30_000);
      expect(closed).toEqual({ kind: 'closed', tunnel, sent: size, received: size, error: '' });
    }
    const raw = seen[0];
    expect(raw.slice(0, 4)).toEqual([':method', 'CONNECT', ':authority', '10.0.0.1:8080']);
    expect(raw.slice(4)).toEqual(['x-forwarded-network', 'net1', 'baggage', 'a=b']);
  }, 60_000);

  it('a 401 answer is reported as the response, then the tunnel closes', async () => {
    const { port } = await nodeServer(bob, (s) => s.respond({ ':status': 401 }, { endStream: true }));
    const e = engine();
    await dial(e, 2, port);
    e.engine.open(2, 20, CONNECT('10.0.0.1:80'));
    expect((await e.wait('response', (x) => x.tunnel === 20)).status).toBe(401);
    expect(await e.wait('closed', (x) => x.tunnel === 20)).toMatchObject({ error: '', sent: 0, received: 0 });
  });

  it('a server RST_STREAM closes the tunnel with "reset" and resets the app socket', async () => {
    const { port } = await nodeServer(bob, (s) => {
      // waitForTrailers: Node's close() then sends no END_STREAM before its RST_STREAM
      s.respond({ ':status': 200 }, { waitForTrailers: true });
      s.once('data', () => s.close(http2.constants.NGHTTP2_CANCEL));
    });
    const e = engine();
    await dial(e, 3, port);
    e.engine.open(3, 30, CONNECT('10.0.0.1:80'));
    await e.wait('response', (x) => x.tunnel === 30);
    const { fd, peer } = await app.pair();
    const err = new Promise<string>((r) => peer.on('error', (x: NodeJS.ErrnoException) => r(x.code ?? '')).on('close', () => r('closed')));
    peer.resume();
    e.engine.relay(30, fd);
    peer.write('hello');
    expect((await e.wait('closed', (x) => x.tunnel === 30)).error).toBe('reset');
    expect(await err).toBe('ECONNRESET');
  });

  it('a server certificate from another CA: connClosed with a TLS error, no handshake', async () => {
    const { port } = await nodeServer(mallory, () => {});
    const e = engine();
    e.engine.client(4, connectFd(port), clientCtx(), SETTINGS);
    const c = await e.wait('connClosed', (x) => x.conn === 4);
    expect(c.error).toMatch(/^tls: certificate verify failed/);
    expect(e.find('handshake')).toBeUndefined();
  });

  it('verdict false closes the connection before any stream', async () => {
    let streams = 0;
    const { port } = await nodeServer(bob, () => streams++);
    const e = engine();
    e.engine.client(5, connectFd(port), clientCtx(), SETTINGS);
    await e.wait('handshake', (x) => x.conn === 5);
    e.engine.verdict(5, false);
    expect((await e.wait('connClosed', (x) => x.conn === 5)).error).toBe('rejected');
    e.engine.open(5, 50, CONNECT('10.0.0.1:80'));
    expect((await e.wait('closed', (x) => x.tunnel === 50)).error).toBe('connection closed');
    expect(e.find('ready')).toBeUndefined();
    expect(streams).toBe(0);
  });
});
