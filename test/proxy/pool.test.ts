/**
 * The HBONE pool with a fake dialer: which tunnels share a connection (the key), the 100-stream
 * limit and freed slots, concurrent openers sharing one dial (and its failure), the idle close,
 * a connection the peer closed, and a retired sandbox. The real
 * connections are tested end to end in test/netns/proxy.test.ts and test/security/hbone.test.ts.
 */
import { EventEmitter } from 'node:events';
import type { ClientHttp2Session } from 'node:http2';
import { describe, expect, it, vi } from 'vitest';
import { HbonePool, MAX_STREAMS_PER_CONNECTION, type ConnectHeaders, type HboneRequest, type HboneSource, type Tunnel } from '../../ts/proxy/pool.js';
import { nodeLink, type NodeTunnel } from '../../ts/proxy/hbone/client.js';

/** A session whose streams are answered with `status`; `close()` ends it once its streams are done, as HTTP/2 does. */
class FakeSession extends EventEmitter {
  closed = false;
  destroyed = false;
  readonly streams: FakeStream[] = [];
  /** the peer's GOAWAY crossed the next stream: it is refused unprocessed and the session closes */
  goawayCrossing = false;
  constructor(readonly status = 200) {
    super();
  }
  request(headers: Record<string, string>): FakeStream {
    const s = new FakeStream(headers);
    this.streams.push(s);
    if (this.goawayCrossing) {
      this.closed = true;
      setImmediate(() => {
        s.rstCode = 7; // NGHTTP2_REFUSED_STREAM
        s.emit('error', Object.assign(new Error('Stream closed with error code NGHTTP2_REFUSED_STREAM'), { code: 'ERR_HTTP2_STREAM_ERROR' }));
        s.emit('close');
        this.emit('close');
      });
      return s;
    }
    setImmediate(() => s.emit('response', { ':status': this.status }));
    return s;
  }
  close(): void {
    this.closed = true;
    this.emit('close');
  }
  destroy(): void {
    this.destroyed = true;
    this.emit('close');
  }
}
class FakeStream extends EventEmitter {
  rstCode = 0;
  constructor(readonly headers: Record<string, string>) {
    super();
  }
  close(): void {
    this.emit('close');
  }
}

function fakePool(o: { status?: number; failDial?: () => Error | null; goawayCrossing?: (dial: number) => boolean } = {}): { pool: HbonePool; dials: { src: HboneSource; req: HboneRequest; session: FakeSession }[] } {
  const dials: { src: HboneSource; req: HboneRequest; session: FakeSession }[] = [];
  const pool = new HbonePool({
    dial: async (src, req) => {
      const failed = o.failDial?.();
      if (failed) throw failed;
      const session = new FakeSession(o.status);
      session.goawayCrossing = o.goawayCrossing?.(dials.length) ?? false;
      dials.push({ src, req, session });
      return nodeLink({ session: session as unknown as ClientHttp2Session, peerIdentity: req.identities[0]! });
    },
  });
  return { pool, dials };
}

/** The Node stream under a pooled tunnel (the fake session's). */
const streamOf = (t: Tunnel): NodeTunnel['stream'] => (t.tunnel as NodeTunnel).stream;

const src = (over: Partial<HboneSource> = {}): HboneSource => ({
  owner: 'u-a#1', nsFd: -1, identity: { trustDomain: 'cluster.local', namespace: 'default', serviceAccount: 'a' }, ip: '10.200.1.2', ...over,
});
const hdrs: ConnectHeaders = { baggage: 'k8s.namespace.name=default', forwarded: 'for="10.200.1.2:40000"', traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00' };
const req = (over: Partial<HboneRequest> = {}): HboneRequest => ({
  target: { ip: '10.200.1.3', port: 15008 }, authority: { ip: '10.200.1.3', port: 8080 }, identities: ['spiffe://cluster.local/ns/shop/sa/web'], ...over,
});

describe('HBONE pool', () => {
  it('carries tunnels of one key over one connection, each CONNECT with the headers it was given', async () => {
    const { pool, dials } = fakePool();
    const t1 = await pool.open(src(), req(), hdrs);
    const t2 = await pool.open(src(), req({ authority: { ip: '10.200.1.3', port: 9090 } }), hdrs);
    expect(dials).toHaveLength(1);
    expect(pool.size).toBe(1);
    expect(t1.peerIdentity).toBe('spiffe://cluster.local/ns/shop/sa/web');
    expect((streamOf(t2) as unknown as FakeStream).headers).toEqual({ ':method': 'CONNECT', ':authority': '10.200.1.3:9090', ...hdrs });
  });

  it('never shares a connection across sandboxes, source IPs, source or destination identities, or destinations', async () => {
    const { pool, dials } = fakePool();
    await pool.open(src(), req(), hdrs);
    await pool.open(src({ owner: 'u-a#2' }), req(), hdrs);
    await pool.open(src({ ip: '10.200.1.9' }), req(), hdrs);
    await pool.open(src({ identity: { trustDomain: 'cluster.local', namespace: 'default', serviceAccount: 'b' } }), req(), hdrs);
    await pool.open(src(), req({ identities: ['spiffe://cluster.local/ns/shop/sa/other'] }), hdrs);
    await pool.open(src(), req({ target: { ip: '10.200.1.4', port: 15008 } }), hdrs);
    expect(dials).toHaveLength(6);
  });

  it(`opens a second connection for the ${MAX_STREAMS_PER_CONNECTION + 1}th concurrent stream; concurrent openers share one dial`, async () => {
    const { pool, dials } = fakePool();
    await Promise.all(Array.from({ length: 150 }, () => pool.open(src(), req(), hdrs)));
    expect(dials).toHaveLength(2);
    expect(pool.maxStreamsSeen).toBe(MAX_STREAMS_PER_CONNECTION);
    expect(dials.map((d) => d.session.streams.length)).toEqual([100, 50]);
    // the next one takes the free slot of the second
    await pool.open(src(), req(), hdrs);
    expect(dials.map((d) => d.session.streams.length)).toEqual([100, 51]);
  });

  it('gives a stream slot freed on a full connection to the next opener instead of dialing again', async () => {
    const { pool, dials } = fakePool();
    const tunnels = await Promise.all(Array.from({ length: 2 * MAX_STREAMS_PER_CONNECTION }, () => pool.open(src(), req(), hdrs)));
    expect(dials.map((d) => d.session.streams.length)).toEqual([100, 100]);
    streamOf(tunnels[0]!).close(); // a stream of the first connection ends
    await pool.open(src(), req(), hdrs);
    expect(dials).toHaveLength(2);
    expect(dials.map((d) => d.session.streams.length)).toEqual([101, 100]);
  });

  it('never reuses a connection the peer closed: the next tunnel dials anew', async () => {
    const { pool, dials } = fakePool();
    await pool.open(src(), req(), hdrs);
    dials[0]!.session.destroy(); // the peer went away (GOAWAY, reset, keepalive timeout)
    expect(pool.size).toBe(0);
    await pool.open(src(), req(), hdrs);
    expect(dials).toHaveLength(2);
    expect(dials[1]!.session.streams).toHaveLength(1);
  });

  it('fails every opener waiting on a dial that fails, and dials again for the next one', async () => {
    let fail = true;
    let attempts = 0;
    const { pool, dials } = fakePool({ failDial: () => (attempts++, fail ? Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }) : null) });
    const results = await Promise.allSettled([pool.open(src(), req(), hdrs), pool.open(src(), req(), hdrs), pool.open(src(), req(), hdrs)]);
    expect(results.map((r) => r.status === 'rejected' && (r.reason as { code?: string }).code)).toEqual(['ECONNREFUSED', 'ECONNREFUSED', 'ECONNREFUSED']);
    expect(attempts).toBe(1); // they waited on one dial
    fail = false;
    await pool.open(src(), req(), hdrs);
    expect(attempts).toBe(2);
    expect(dials).toHaveLength(1);
    expect(pool.size).toBe(1);
  });

  it('closes a connection once it has carried no stream for the idle timeout (30 s), and dials anew after', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    try {
      const { pool, dials } = fakePool();
      const t = await pool.open(src(), req(), hdrs);
      streamOf(t).close();
      vi.advanceTimersByTime(29_999);
      expect(dials[0]!.session.closed).toBe(false);
      vi.advanceTimersByTime(1);
      expect(dials[0]!.session.closed).toBe(true);
      expect(pool.size).toBe(0);
      await pool.open(src(), req(), hdrs);
      expect(dials).toHaveLength(2);
    } finally {
      vi.useRealTimers();
    }
  });

  it('keeps a connection that takes a new stream before the idle timeout runs out', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    try {
      const { pool, dials } = fakePool();
      streamOf(await pool.open(src(), req(), hdrs)).close();
      vi.advanceTimersByTime(29_000);
      const t = await pool.open(src(), req(), hdrs); // the idle timer stops here
      vi.advanceTimersByTime(60_000);
      expect(dials[0]!.session.closed).toBe(false);
      streamOf(t).close(); // and starts again once the connection is idle again
      vi.advanceTimersByTime(30_000);
      expect(dials[0]!.session.closed).toBe(true);
      expect(dials).toHaveLength(1);
    } finally {
      vi.useRealTimers();
    }
  });

  it('keeps a connection that still carries a stream open past the idle timeout', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    try {
      const { pool, dials } = fakePool();
      const [a] = await Promise.all([pool.open(src(), req(), hdrs), pool.open(src(), req(), hdrs)]);
      streamOf(a).close();
      vi.advanceTimersByTime(60_000);
      expect(dials[0]!.session.closed).toBe(false);
      await pool.open(src(), req(), hdrs);
      expect(dials).toHaveLength(1);
    } finally {
      vi.useRealTimers();
    }
  });

  it('retires a sandbox: its connections close and take no new stream, other sandboxes keep theirs', async () => {
    const { pool, dials } = fakePool();
    await pool.open(src(), req(), hdrs);
    await pool.open(src({ owner: 'u-b#3' }), req(), hdrs);
    pool.retire('u-a#1');
    expect(dials.map((d) => d.session.closed)).toEqual([true, false]);
    await pool.open(src(), req(), hdrs);
    expect(dials).toHaveLength(3);
  });

  it('opens a stream the peer refused unprocessed (its GOAWAY crossed the CONNECT) once more, on a new connection', async () => {
    const { pool, dials } = fakePool();
    await pool.open(src(), req(), hdrs);
    dials[0]!.session.goawayCrossing = true; // the peer drains (a proxy rollout) as the next CONNECT leaves
    const t = await pool.open(src(), req(), hdrs);
    expect(dials).toHaveLength(2);
    expect(dials[1]!.session.streams).toEqual([streamOf(t)]);
  });

  it('retries a refused stream only once: a peer that refuses again gets its refusal through', async () => {
    const { pool, dials } = fakePool({ goawayCrossing: () => true });
    await expect(pool.open(src(), req(), hdrs)).rejects.toMatchObject({ code: 'ERR_HTTP2_STREAM_ERROR' });
    expect(dials).toHaveLength(2);
  });

  it.each([[401, 'INPOD_ERR_HBONE_DENIED'], [503, 'INPOD_ERR_HBONE']])('turns a CONNECT answered %i into %s', async (status, code) => {
    const { pool } = fakePool({ status });
    await expect(pool.open(src(), req(), hdrs)).rejects.toMatchObject({ code });
  });
});
