/**
 * Issue 13, item 2, tried as an attacker: per-connection capture state that outlives its
 * connection. sk_lookup lets a SYN reach the app directly when its tuple was recorded as one of
 * the pod's own connections (the proxy's transparent upstream, from the client's IP); an entry
 * left behind after that connection closed would let anyone who reuses the client's IP and
 * port past the proxy, its policy and its access log, even with the proxy dead.
 *
 * A plain Python listener stands in for the proxy (as in the conformance suite) and makes the
 * transparent upstream exactly as the proxy does: the proxy's mark, IP_TRANSPARENT, bound to the
 * client's IP. The replay runs under both backends (iptables has no such state: the contract is
 * the same); the map bookkeeping is eBPF's own.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackend } from '../../ts/redirect/factory.js';
import { TUPLE_MAPS } from '../../ts/redirect/ebpf.js';
import type { BackendName, BackendOptions, RedirectBackend } from '../../ts/redirect/backend.js';
import { BpfMap, netnsCookie, pinnedMapSpec } from '../../ts/native/index.js';
import { decodeTuple, encodeAddr, encodeTuple } from '../../ts/native/structs.js';
import { Lab, type LabPod, type PodShell, until } from '../netns/lab.js';
import { MARKS } from '../../ts/istio.js';

const PROXY_MARK = MARKS.proxy;

interface Setup {
  lab: Lab;
  backend: RedirectBackend;
  opts: BackendOptions;
  pod: LabPod; // enrolled: the app and the stand-in proxy
  peer: LabPod; // not enrolled: the client, and the attacker who reuses its address
  sh: { pod: PodShell; peer: PodShell };
  stateDir: string;
}

/** IPv4 pods, or IPv6-only ones (the same state, 16-byte addresses: bpf/include/types.h). */
async function setUp(name: BackendName, family: 'ipv4' | 'ipv6' = 'ipv4'): Promise<Setup> {
  const lab = await Lab.create();
  const stateDir = mkdtempSync(join(tmpdir(), `${lab.prefix}state`));
  const opts = { cgroupPath: lab.cgroupPath, pinRoot: `/sys/fs/bpf/${lab.prefix}inpod`, stateDir, ipv6: family === 'ipv6' };
  const backend = await createBackend(name, opts);
  const [pod, peer] = await Promise.all(['pod', 'peer'].map((n) => lab.addPod(n, family)));
  await backend.install();
  await backend.enroll(pod!.netnsPath);
  const sh = { pod: await lab.shell(pod!.netnsPath, { inCgroup: true }), peer: await lab.shell(peer!.netnsPath, { inCgroup: false }) };
  const any = family === 'ipv6' ? '::' : '0.0.0.0';
  await sh.pod.listen({ host: any, port: 8080, tag: 'app' });
  await sh.pod.listen({ host: any, port: 15001, tag: 'proxy15001' });
  await sh.pod.listen({ host: any, port: 15006, tag: 'proxy15006' });
  return { lab, backend, opts, pod: pod!, peer: peer!, sh, stateDir };
}

async function tearDown(s: Setup | undefined): Promise<void> {
  await s?.backend.uninstall().catch(() => {});
  await s?.lab.destroy();
  if (s?.stateDir) rmSync(s.stateDir, { recursive: true, force: true });
}

/** The backend's pinned per-connection (tuple) maps, opened by name. */
function openTupleMaps(s: Setup): Map<string, BpfMap> {
  const maps = new Map<string, BpfMap>();
  for (const name of TUPLE_MAPS) {
    const m = BpfMap.pinned(join(s.opts.pinRoot!, name), pinnedMapSpec(name));
    if (!m) throw new Error(`${name} is not pinned`);
    maps.set(name, m);
  }
  return maps;
}

/**
 * 1000 closed connections of each kind a pod makes (outbound captured to 15001, the proxy's
 * transparent upstream to the app from the client's IP, the app to its own IP), then waits for
 * the tuple maps to come back to what they held before.
 */
async function thousandOfEachKind(s: Setup, counts: () => Record<string, number>): Promise<void> {
  const baseline = counts();
  const repeat = async (o: Parameters<PodShell['repeat']>[0]) => {
    const { tags, errors } = await s.sh.pod.repeat(o);
    return { tags, errors };
  };
  expect(await repeat({ host: s.peer.ip, port: 80, count: 1000 })).toEqual({ tags: { proxy15001: 1000 }, errors: {} });
  expect(await repeat({ host: s.pod.ip, port: 8080, count: 1000, mark: PROXY_MARK, transparent: true, bind: { host: s.peer.ip } }))
    .toEqual({ tags: { app: 1000 }, errors: {} });
  expect(await repeat({ host: s.pod.ip, port: 8080, count: 1000 })).toEqual({ tags: { app: 1000 }, errors: {} });
  await until('the tuple maps to drain', () => JSON.stringify(counts()) === JSON.stringify(baseline), { timeoutMs: 5000 });
}

/** The proxy's transparent upstream to the app, from the client's IP; returns its source port. */
async function transparentUpstream(s: Setup): Promise<number> {
  const r = await s.sh.pod.connect({
    host: s.pod.ip, port: 8080, mark: PROXY_MARK, transparent: true, bind: { host: s.peer.ip, port: 0 }, send: 'up', timeoutMs: 2000,
  });
  expect(r.ok && r.reply).toBe('app:up');
  if (!r.ok) throw new Error(r.error);
  await s.sh.pod.close(r.connId);
  return r.sockname.port;
}

async function appAccepted(s: Setup): Promise<number> {
  return (await s.sh.pod.accepted((await s.sh.pod.listenerByTag('app')).id)).length;
}

const BACKENDS = (process.env.INPOD_BACKENDS?.split(',') ?? ['ebpf', 'iptables']) as BackendName[];
describe.each(BACKENDS.flatMap((b) => (['ipv4', 'ipv6'] as const).map((f) => [b, f] as const)))('replaying a closed connection, %s backend, %s', (name, family) => {
  let s: Setup;
  beforeAll(async () => {
    s = await setUp(name, family);
  });
  afterAll(() => tearDown(s));

  it("replays a closed transparent upstream's client address and port from outside: reaches the proxy, never the app", async () => {
    const port = await transparentUpstream(s);
    const before = await appAccepted(s);
    const r = await s.sh.peer.connect({ host: s.pod.ip, port: 8080, bind: { host: s.peer.ip, port }, send: 'replay', timeoutMs: 2000 });
    expect(r.ok && r.reply).toBe('proxy15006:replay');
    expect(await appAccepted(s)).toBe(before);
  });

  it('replays it with the proxy dead: refused or dropped, never the app', async () => {
    const port = await transparentUpstream(s);
    const before = await appAccepted(s);
    await s.sh.pod.closeListener((await s.sh.pod.listenerByTag('proxy15006')).id);
    try {
      const r = await s.sh.peer.connect({ host: s.pod.ip, port: 8080, bind: { host: s.peer.ip, port }, send: 'replay', timeoutMs: 1000 });
      expect(r.ok ? `reached ${r.reply}` : r.error).toMatch(/^(ECONNREFUSED|ETIMEDOUT|ECONNRESET)$/);
      expect(await appAccepted(s)).toBe(before);
    } finally {
      await s.sh.pod.listen({ host: family === 'ipv6' ? '::' : '0.0.0.0', port: 15006, tag: 'proxy15006' });
    }
  });
});

describe('per-connection maps of the eBPF backend', () => {
  let s: Setup;
  let maps = new Map<string, BpfMap>();
  const entries = (m: string): number => maps.get(m)!.keys().length;
  const counts = (): Record<string, number> => Object.fromEntries(TUPLE_MAPS.map((name) => [name, entries(name)]));

  beforeAll(async () => {
    s = await setUp('ebpf');
    maps = openTupleMaps(s);
  });
  afterAll(async () => {
    for (const m of maps.values()) m.close();
    await tearDown(s);
  });

  it('is back at its baseline after 1000 closed connections of each kind', async () => {
    await thousandOfEachKind(s, counts);
  });

  it('drops the entry of a SYN nobody answered once its client gives up', async () => {
    // the proxy's transparent upstream to a closed app port: refused, so no server side ever completes it
    const r = await s.sh.pod.connect({ host: s.pod.ip, port: 8181, mark: PROXY_MARK, transparent: true, bind: { host: s.peer.ip, port: 0 }, timeoutMs: 2000 });
    expect(r.ok).toBe(false);
    await until('inpod_own_conn to empty', () => entries('inpod_own_conn') === 0, { timeoutMs: 5000 });
  });

  it("purges a pod's entries when it is unenrolled, and only that pod's", async () => {
    const cookie = netnsCookie(s.pod.netnsPath);
    const other = cookie + 1000n; // another pod's netns
    const tuple = (netns: bigint, sport: number) => encodeTuple({ netns, sip: s.peer.ip, dip: s.pod.ip, sport, dport: 8080 });
    const value = { inpod_syn_dst: encodeAddr({ ip: s.peer.ip, port: 80 }), inpod_own_conn: Buffer.from([1]) };
    for (const name of TUPLE_MAPS) {
      for (const sport of [40001, 40002]) maps.get(name)!.update(tuple(cookie, sport), value[name]);
      maps.get(name)!.update(tuple(other, 40001), value[name]);
    }
    await s.backend.unenroll(s.pod.netnsPath);
    for (const name of TUPLE_MAPS) {
      const left = maps.get(name)!.keys().map(decodeTuple);
      expect(left.filter((t) => t.netns === cookie), name).toEqual([]);
      expect(left.filter((t) => t.netns === other), name).toHaveLength(1);
      maps.get(name)!.delete(tuple(other, 40001));
    }
    await s.backend.enroll(s.pod.netnsPath);
  });

  describe('full', () => {
    /** Fills a tuple map with entries of a netns that does not exist; returns how many. */
    function fill(name: string, value: Buffer): number {
      const m = maps.get(name)!;
      let n = 0;
      for (;;) {
        const key = encodeTuple({ netns: 1n, sip: `10.${(n >> 16) & 255}.${(n >> 8) & 255}.${n & 255}`, dip: '10.0.0.1', sport: 1, dport: 1 });
        try {
          m.update(key, value);
        } catch (e) {
          expect((e as { code?: string }).code).toBe('E2BIG');
          return n;
        }
        n++;
      }
    }
    function empty(name: string): void {
      const m = maps.get(name)!;
      for (const k of m.keys()) if (decodeTuple(k).netns === 1n) m.delete(k);
    }

    it("captures the proxy's transparent upstream when the map is full, and never lets it around the proxy", async () => {
      expect(fill('inpod_own_conn', Buffer.from([1]))).toBeGreaterThan(1000);
      try {
        const before = await appAccepted(s);
        const r = await s.sh.pod.connect({
          host: s.pod.ip, port: 8080, mark: PROXY_MARK, transparent: true, bind: { host: s.peer.ip, port: 0 }, send: 'full', timeoutMs: 2000,
        });
        expect(r.ok && r.reply).toBe('proxy15006:full');
        expect(await appAccepted(s)).toBe(before);
      } finally {
        empty('inpod_own_conn');
      }
      await transparentUpstream(s); // room again: the app is reached as before
    });

    it('gives the proxy no original destination when the map is full, never a wrong one', async () => {
      fill('inpod_syn_dst', encodeAddr({ ip: '10.0.0.9', port: 9 }));
      try {
        const r = await s.sh.pod.connect({ host: s.peer.ip, port: 80, send: 'full', timeoutMs: 2000 });
        expect(r.ok && r.reply).toBe('proxy15001:full');
        const acc = (await s.sh.pod.accepted((await s.sh.pod.listenerByTag('proxy15001')).id)).at(-1)!;
        expect(acc.origDst).toBe('ENOENT');
      } finally {
        empty('inpod_syn_dst');
      }
    });
  });
});

describe('per-connection maps of the eBPF backend, IPv6', () => {
  let s: Setup;
  let maps = new Map<string, BpfMap>();
  const counts = (): Record<string, number> => Object.fromEntries(TUPLE_MAPS.map((name) => [name, maps.get(name)!.keys().length]));

  beforeAll(async () => {
    s = await setUp('ebpf', 'ipv6');
    maps = openTupleMaps(s);
  });
  afterAll(async () => {
    for (const m of maps.values()) m.close();
    await tearDown(s);
  });

  it('is back at its baseline after 1000 closed IPv6 connections of each kind', async () => {
    await thousandOfEachKind(s, counts);
  });
});
