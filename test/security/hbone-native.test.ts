/**
 * Attacks on the native HBONE engine's listener (addon/src/hbone_*.cc) by a peer holding a
 * valid mesh certificate: each test names what the attacker tried and what the engine did.
 */
import { randomBytes } from 'node:crypto';
import http2 from 'node:http2';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { IssuedCert } from '../../ts/identity/ca.js';
import { hboneTlsContext } from '../../ts/native/hbone.js';
import { RecordingEngine, SETTINGS, listenFd, makePki, type Pki } from '../native/fixtures/hbone.js';

let pki: Pki;
let alice: IssuedCert;
let bob: IssuedCert;
const cleanups: (() => void)[] = [];
beforeAll(async () => {
  pki = await makePki();
  alice = await pki.issue('alice');
  bob = await pki.issue('bob');
});
afterAll(() => {
  for (const c of cleanups.reverse()) c();
  pki?.cleanup();
});

/** A listener that accepts every verified peer and never answers a request (unless `answer`). */
function listener(s = SETTINGS, answer = false) {
  const e = new RecordingEngine();
  cleanups.push(() => e.close());
  e.onEvent = (ev) => {
    if (ev.kind === 'handshake') e.engine.verdict(ev.conn, true);
    if (ev.kind === 'request' && answer) e.engine.respond(ev.tunnel, 403, [], -1);
  };
  const l = listenFd();
  e.engine.listen(1, l.fd, hboneTlsContext({ certPem: alice.chainPem, keyPem: alice.keyPem, rootPem: pki.ca.rootPem, server: true }), s);
  return { e, port: l.port };
}

function client(port: number): http2.ClientHttp2Session {
  const c = http2.connect(`https://127.0.0.1:${port}`, { cert: bob.chainPem, key: bob.keyPem, ca: pki.ca.rootPem, minVersion: 'TLSv1.3', checkServerIdentity: () => undefined });
  c.on('error', () => {});
  cleanups.push(() => c.destroy());
  return c;
}

/** A client's mTLS connection (ALPN h2) that speaks no HTTP/2 of its own: the test writes the bytes. */
async function rawTls(port: number): Promise<{ sock: tls.TLSSocket; closed: Promise<unknown> }> {
  const sock = tls.connect({ port, host: '127.0.0.1', cert: bob.chainPem, key: bob.keyPem, ca: pki.ca.rootPem, ALPNProtocols: ['h2'], checkServerIdentity: () => undefined, minVersion: 'TLSv1.3' });
  sock.on('error', () => {});
  await new Promise((r) => sock.on('secureConnect', r));
  sock.resume();
  return { sock, closed: new Promise((r) => sock.on('close', r)) };
}

describe('native HBONE engine under attack', () => {
  it('rapid reset (CONNECTs cancelled before they are answered, past resetBurst): GOAWAY ENHANCE_YOUR_CALM, connection closed', async () => {
    const { e, port } = listener({ ...SETTINGS, resetBurst: 5, resetPerSecond: 0.001 });
    const c = client(port);
    const goaway = new Promise<number>((r) => c.on('goaway', (code) => r(code)));
    await new Promise((r) => c.on('connect', r));
    for (let i = 0; i < 20; i++) {
      const req = c.request({ ':method': 'CONNECT', ':authority': `10.0.0.1:${i + 1}` });
      req.on('error', () => {});
      req.close(http2.constants.NGHTTP2_CANCEL);
    }
    expect(await goaway).toBe(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
    expect((await e.wait('connClosed')).error).toBe('goaway ENHANCE_YOUR_CALM');
  });

  it('a header block over maxHeaderListSize: that stream is reset, never reported, and the connection serves on', async () => {
    const { e, port } = listener({ ...SETTINGS, maxHeaderListSize: 2048 }, true);
    const c = client(port);
    const big = c.request({ ':method': 'CONNECT', ':authority': '10.0.0.1:1', 'x-big': 'a'.repeat(8000) });
    big.on('error', () => {});
    await new Promise((r) => big.on('close', r));
    expect(big.rstCode).not.toBe(http2.constants.NGHTTP2_NO_ERROR);
    const ok = c.request({ ':method': 'CONNECT', ':authority': '10.0.0.1:2' });
    ok.on('error', () => {});
    expect((await new Promise<http2.IncomingHttpHeaders>((r) => ok.on('response', r)))[':status']).toBe(403);
    expect(e.all('request').map((r) => r.headers[3])).toEqual(['10.0.0.1:2']);
  });

  it('garbage instead of the HTTP/2 preface after a valid mTLS handshake: that connection closed, the process and the listener live on', async () => {
    const { e, port } = listener(SETTINGS, true);
    const { sock, closed } = await rawTls(port);
    sock.write(randomBytes(64 * 1024));
    expect((await e.wait('connClosed')).error).toMatch(/^h2: /);
    await closed;
    const ok = client(port).request({ ':method': 'CONNECT', ':authority': '10.0.0.1:2' });
    ok.on('error', () => {});
    expect((await new Promise<http2.IncomingHttpHeaders>((r) => ok.on('response', r)))[':status']).toBe(403);
  });

  it('a valid preface followed by malformed frames: GOAWAY PROTOCOL_ERROR-class close, no crash', async () => {
    const { e, port } = listener(SETTINGS, true);
    const { sock, closed } = await rawTls(port);
    const preface = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
    const settings = Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]);
    // a DATA frame on stream 0 (RFC 9113 6.1: a connection error), then random frames
    const bad = Buffer.concat([Buffer.from([0, 0, 4, 0, 0, 0, 0, 0, 0]), Buffer.alloc(4), randomBytes(8192)]);
    sock.write(Buffer.concat([preface, settings, bad]));
    expect((await e.wait('connClosed')).error).toMatch(/^h2: /);
    await closed;
  });
});
