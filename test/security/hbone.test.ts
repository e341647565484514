/**
 * Attacks on the HBONE server (15008) by a peer holding a valid mesh certificate, or by anyone
 * who can open a TCP connection to it: rapid reset, too many streams, frame floods, slowloris,
 * silent peers, a certificate of another trust domain, CONNECTs aimed back at the proxy itself.
 * Each test says what was tried and asserts what happened: the proxy stays up, the attacker's
 * connection ends, and a legitimate client keeps getting through meanwhile.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestMesh } from './mesh.js';
import { until } from '../netns/lab.js';
import { ERR, FRAME, RawH2Peer, frame } from './h2raw.js';

// The server's timers are shortened so the slow attacks finish in seconds; the defaults (see
// ts/proxy/hbone/limits.ts) only differ in their durations. The handshake timer leaves 3 s: the
// slowloris test makes 200 mTLS handshakes at once, from the process that serves them, and at
// 1 s some did not finish on a loaded 2-core host (native path, beside another suite).
const LIMITS = { handshakeTimeoutMs: 3000, idleTimeoutMs: 1500, pingIntervalMs: 500, pingTimeoutMs: 1000 };

describe('HBONE server under attack', () => {
  let m: TestMesh;
  let server: { ip: string };
  let peerCert: { chainPem: string; keyPem: string; rootPem: string };

  /** A raw HTTP/2 peer with a valid mesh identity (default/attacker), from outside the mesh. */
  const attacker = async (o: { preface?: boolean; cert?: typeof peerCert } = {}): Promise<RawH2Peer> => {
    const c = o.cert ?? peerCert;
    return RawH2Peer.connect({ socket: await m.fromNode(server.ip, 15008), cert: c.chainPem, key: c.keyPem, ca: c.rootPem }, o.preface ?? true);
  };
  /** One request of a legitimate mesh client (pod client -> server:8080 over HBONE). */
  const legit = async (tag: string): Promise<string> => {
    const r = await m.sh.client!.connect({ host: server.ip, port: 8080, send: tag, timeoutMs: 5000 });
    if (r.ok) await m.sh.client!.close(r.connId);
    return r.ok ? r.reply ?? '' : `error:${r.error}`;
  };
  /** Legitimate requests, one after another, until `stop()`; resolves with every answer. */
  const legitLoop = (): { stop: () => Promise<string[]> } => {
    let running = true;
    const answers: string[] = [];
    const done = (async () => {
      for (let i = 0; running || i === 0; i++) answers.push(await legit(`legit${i}`));
    })();
    return { stop: async () => ((running = false), await done, answers) };
  };
  const accepted = async (): Promise<number> => (await m.sh.server!.accepted((await m.sh.server!.listenerByTag('app')).id)).length;

  beforeAll(async () => {
    m = await TestMesh.create('ebpf', [
      { name: 'client', namespace: 'default', serviceAccount: 'sleep' },
      { name: 'server', namespace: 'shop', serviceAccount: 'web' },
    ], { hbone: LIMITS });
    server = m.pods.server!;
    await m.sh.server!.listen({ port: 8080, tag: 'app' });
    const c = await m.cert('default', 'attacker');
    peerCert = { chainPem: c.chainPem, keyPem: c.keyPem, rootPem: c.rootPem };
  });

  afterAll(async () => {
    await m?.close();
  });

  it('rapid reset: 10,000 CONNECT streams opened and reset at once on one connection end it with GOAWAY; the proxy stays up, the app is not flooded', async () => {
    const before = await accepted();
    const load = legitLoop();
    const p = await attacker();
    for (let i = 0; i < 10_000 && !p.seen.closed; i += 100) {
      const batch: Buffer[] = [];
      for (let j = 0; j < 100; j++) {
        const s = p.connectStream(`${server.ip}:8080`);
        batch.push(s.bytes, frame(FRAME.RST_STREAM, 0, s.id, Buffer.from([0, 0, 0, ERR.CANCEL])));
      }
      if (!p.write(Buffer.concat(batch))) break;
      await new Promise((r) => setImmediate(r));
    }
    await p.until('a GOAWAY', (s) => s.goaway.length > 0, 5000);
    const answers = await load.stop();
    expect(m.crashes).toEqual([]);
    expect(p.seen.goaway).toContain(ERR.ENHANCE_YOUR_CALM);
    // every legitimate request during the attack was answered by the app
    expect(answers).toEqual(answers.map((_, i) => `app:legit${i}`)); // (a failure names the answer that was not the app's)
    expect(await legit('after')).toBe('app:after');
    // the attacker's streams reached the app at most as often as the reset budget allows
    expect((await accepted()) - before - answers.length - 1).toBeLessThan(300);
    p.close();
  }, 60_000);

  it('opens 1,000 CONNECT streams on one connection and keeps them: 200 are served, the rest refused; others still get through', async () => {
    const p = await attacker();
    const ids: number[] = [];
    const frames: Buffer[] = [];
    for (let i = 0; i < 1000; i++) {
      const s = p.connectStream(`${server.ip}:8080`);
      ids.push(s.id);
      frames.push(s.bytes);
    }
    p.write(Buffer.concat(frames));
    await p.until('an answer to each of the 1,000 streams', (s) => s.responded.size + s.rst.size >= 1000, 20_000);
    expect(m.crashes).toEqual([]);
    expect(p.seen.responded.size).toBe(200);
    expect([...p.seen.rst.values()].every((code) => code === ERR.REFUSED_STREAM || code === ERR.PROTOCOL_ERROR)).toBe(true);
    expect(p.seen.rst.size).toBe(800);
    expect(await legit('beside')).toBe('app:beside');
    p.close();
  }, 60_000);

  it.each([
    ['SETTINGS', () => frame(FRAME.SETTINGS, 0, 0)],
    ['PING', () => frame(FRAME.PING, 0, 0, Buffer.alloc(8, 7))],
  ])('floods %s frames without reading the answers: the proxy stays up and answers others', async (_name, make) => {
    const p = await attacker();
    p.tls.pause(); // never read: the acknowledgements pile up on the server's side
    const flood = Buffer.concat(Array.from({ length: 1000 }, make));
    const rss = process.memoryUsage().rss;
    const load = legitLoop();
    for (let i = 0; i < 50 && p.write(flood); i++) await new Promise((r) => setImmediate(r));
    const answers = await load.stop();
    expect(m.crashes).toEqual([]);
    expect(answers).toEqual(answers.map((_, i) => `app:legit${i}`)); // (a failure names the answer that was not the app's)
    // the server stops queueing answers for a peer that does not read them
    expect(process.memoryUsage().rss - rss).toBeLessThan(128 * 1024 * 1024);
    // the peer reads again only to see its end (a paused socket notices neither FIN nor RST): a
    // server still holding the connection would give it acknowledgements and no end
    p.tls.resume();
    await until('the flooding connection to be ended', () => p.seen.closed || p.tls.destroyed, { timeoutMs: 10_000 });
    p.close();
  }, 60_000);

  it('sends HEADERS followed by an endless run of CONTINUATION frames: the connection is ended, the proxy stays up', async () => {
    const p = await attacker();
    const id = p.stream();
    const header = (i: number): Buffer => Buffer.concat([Buffer.from([0x00, 6]), Buffer.from(`x-f${String(i).padStart(3, '0')}`), Buffer.from([60]), Buffer.alloc(60, 0x61)]);
    p.write(frame(FRAME.HEADERS, 0, id, Buffer.concat([Buffer.from([2, 7]), Buffer.from('CONNECT')])));
    const load = legitLoop();
    for (let i = 0; i < 20_000 && p.write(frame(FRAME.CONTINUATION, 0, id, header(i % 1000))); i++) {
      if (i % 200 === 0) await new Promise((r) => setImmediate(r));
    }
    await p.until('the proxy to end the connection', (s) => s.closed, 3000);
    const answers = await load.stop();
    expect(m.crashes).toEqual([]);
    expect(p.seen.closed).toBe(true);
    expect(p.seen.responded.has(id)).toBe(false);
    expect(answers).toEqual(answers.map((_, i) => `app:legit${i}`)); // (a failure names the answer that was not the app's)
  }, 60_000);

  it('slowloris: 200 TCP connections that never start TLS and 200 TLS connections that never send a request are closed; others get through meanwhile', async () => {
    const raw = await Promise.all(Array.from({ length: 200 }, () => m.fromNode(server.ip, 15008)));
    const silent = await Promise.all(Array.from({ length: 200 }, () => attacker({ preface: false })));
    const closed = raw.map((s) => new Promise<void>((r) => (s.destroyed || s.readableEnded ? r() : (s.once('end', () => r()), s.once('close', () => r()), s.resume()))));
    expect(await legit('during')).toBe('app:during');
    // the handshake timer ends the first kind, the idle timer the second
    await Promise.all(closed);
    await until('every silent TLS connection to be closed', () => silent.every((p) => p.seen.closed), { timeoutMs: LIMITS.idleTimeoutMs + 5000 });
    expect(m.crashes).toEqual([]);
    expect(await legit('after')).toBe('app:after');
  }, 60_000);

  it('a peer that never answers PING is dropped after the keepalive timeout; one that answers keeps its connection', async () => {
    const mute = await attacker();
    const answering = await attacker();
    answering.answerPings = true;
    // each keeps one tunnel open, so only the keepalive (not the idle timer) can end them
    for (const p of [mute, answering]) p.write(p.connectStream(`${server.ip}:8080`).bytes);
    await mute.until('the mute peer to be dropped', (s) => s.closed, LIMITS.pingIntervalMs + LIMITS.pingTimeoutMs + 1500);
    // the answering peer has had as long as the mute one: had its answers not counted, it would be gone too
    expect(mute.seen.frames[FRAME.PING]).toBeGreaterThan(0);
    expect(mute.seen.closed).toBe(true);
    expect(answering.seen.frames[FRAME.PING]).toBeGreaterThan(1);
    expect(answering.seen.closed).toBe(false);
    mute.close();
    answering.close();
  }, 30_000);

  it('presents a certificate from the mesh CA for another trust domain: refused before any HTTP/2 answer', async () => {
    const c = await m.cert('default', 'sleep', 'evil.example');
    const logs = m.records.length;
    const p = await attacker({ cert: { chainPem: c.chainPem, keyPem: c.keyPem, rootPem: c.rootPem } }).catch((e: Error) => e);
    if (!(p instanceof Error)) {
      const s = p.connectStream(`${server.ip}:8080`);
      p.write(s.bytes);
      await p.until('the proxy to end the connection', (s) => s.closed, 2000);
      expect(p.seen.closed).toBe(true);
      expect(p.seen.responded.size).toBe(0);
      expect(p.seen.frames[FRAME.SETTINGS] ?? 0).toBe(0);
    }
    expect(m.logs(logs, (l) => /no identity in trust domain cluster.local/.test(String(l.msg))).length).toBe(1);
    // and nothing of it reached policy or the app: no connection of it in the access log
    expect(m.logs(logs, (l) => l.scope === 'access' && l.msg !== 'connection failed')).toEqual([]);
  });
});
