/**
 * bpf/sk_lookup.bpf.c's decision table, run in the kernel with BPF_PROG_TEST_RUN (a kernel of 5.14
 * or later; its context is struct bpf_sk_lookup): the loaded program, maps this test fills under
 * its own pin root, one lookup per case. Each case asserts the verdict, the socket it assigned
 * (the kernel returns its cookie) and which one of the inpod_stats counters moved.
 *
 * connect4 (BPF_PROG_TYPE_CGROUP_SOCK_ADDR), sockops and cgroup getsockopt cannot be test-run
 * (the kernel answers ENOTSUPP, asserted at the end): their decisions are covered by real
 * connect()s in test/netns/conformance.test.ts and test/security/.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BpfObject, progTestRun, socketCookie, type BpfMap } from '../../ts/native/index.js';
import { DIR_IN, encodeConfig, encodeIp4Key, encodeIp6Key, encodePod, encodePod6, encodePortKey, encodeTuple, encodeU64, writeIp4, writeIp6 } from '../../ts/native/structs.js';
import { ISTIO_CONFIG } from '../../ts/redirect/ebpf.js';
import { PORTS, PROBE_SOURCE } from '../../ts/istio.js';

const SK_PASS = 1;
const SK_DROP = 0;
const AF_INET = 2;
const AF_INET6 = 10;
const IPPROTO_TCP = 6;
const IPPROTO_UDP = 17;

/**
 * struct bpf_sk_lookup (include/uapi/linux/bpf.h; uapi, so its layout never changes, and the
 * kernel refuses a context of any other size): cookie (out: the assigned socket), family,
 * protocol, remote_ip4, remote_ip6[4], remote_port (__be16), local_ip4, local_ip6[4],
 * local_port (host order), ingress_ifindex (must stay 0 under test-run).
 */
const SK_LOOKUP = { sizeof: 72, cookie: 0, family: 8, protocol: 12, remote_ip4: 16, remote_ip6: 20, remote_port: 36, local_ip4: 40, local_ip6: 44, local_port: 60 } as const;

interface Lookup {
  src: string;
  sport: number;
  dst: string;
  dport: number;
  family?: number;
  protocol?: number;
}

function skLookupCtx(l: Lookup): Buffer {
  const b = Buffer.alloc(SK_LOOKUP.sizeof);
  b.writeUInt32LE(l.family ?? AF_INET, SK_LOOKUP.family);
  b.writeUInt32LE(l.protocol ?? IPPROTO_TCP, SK_LOOKUP.protocol);
  if (l.src.includes(':')) writeIp6(b, SK_LOOKUP.remote_ip6, l.src);
  else writeIp4(b, SK_LOOKUP.remote_ip4, l.src);
  b.writeUInt16BE(l.sport, SK_LOOKUP.remote_port);
  if (l.dst.includes(':')) writeIp6(b, SK_LOOKUP.local_ip6, l.dst);
  else writeIp4(b, SK_LOOKUP.local_ip4, l.dst);
  b.writeUInt32LE(l.dport, SK_LOOKUP.local_port);
  return b;
}

/** The inpod_stats indexes, read from the one place they are defined (enum inpod_stat). */
function statIndexes(): Record<string, number> {
  const header = readFileSync(join(__dirname, '..', '..', 'bpf', 'include', 'types.h'), 'utf8');
  const body = /enum inpod_stat \{([^}]*)\}/.exec(header)?.[1];
  if (!body) throw new Error('enum inpod_stat not found in bpf/include/types.h');
  const names = [...body.matchAll(/^\s*INPOD_STAT_(\w+)/gm)].map((m) => m[1]!).filter((n) => n !== 'MAX');
  if (!/INPOD_STAT_\w+ = 0,/.test(body)) throw new Error('enum inpod_stat no longer starts at 0: update this parser');
  return Object.fromEntries(names.map((n, i) => [n, i]));
}

const pinRoot = `/sys/fs/bpf/sl${randomBytes(3).toString('hex')}`;
const NETNS = 0x5eed_0001n; // the pod's netns cookie: any value, sk_lookup finds it through inpod_pod_ips
const POD = '10.200.250.2';
const PEER = '10.200.250.9';
const EXCLUDED = 9090;
const POD6 = 'fd00:200::fa:0:0:2';
const PEER6 = 'fd00:200::fa:0:0:9';

describe('sk_lookup decisions (BPF_PROG_TEST_RUN)', () => {
  let obj: BpfObject;
  let prog: number;
  let maps: Record<'podIps' | 'podIps6' | 'pod6' | 'enrolled' | 'portExcl' | 'ownSyn' | 'inbound' | 'inbound1' | 'inboundSlot' | 'stats', BpfMap>;
  let listener: net.Server;
  let listenerCookie: bigint;
  const STAT = statIndexes();

  const counters = (): Record<string, bigint> => Object.fromEntries(Object.entries(STAT).map(([n, i]) => [n, maps.stats.sumPerCpu(i)]));
  /** Runs one lookup; returns its verdict, the cookie of the socket it assigned, and the counters that moved. */
  function lookup(l: Lookup): { verdict: number; assigned: bigint; moved: Record<string, bigint> } {
    const before = counters();
    const r = progTestRun(prog, { ctx: skLookupCtx(l) });
    const after = counters();
    const moved = Object.fromEntries(Object.keys(STAT).filter((n) => after[n] !== before[n]).map((n) => [n, after[n]! - before[n]!]));
    return { verdict: r.retval, assigned: r.ctx!.readBigUInt64LE(SK_LOOKUP.cookie), moved };
  }
  const setListener = (on: boolean): void => {
    if (on) maps.inbound.update(encodeU64(NETNS), encodeU64(BigInt((listener as unknown as { _handle: { fd: number } })._handle.fd)));
    else maps.inbound.delete(encodeU64(NETNS));
  };

  beforeAll(async () => {
    mkdirSync(pinRoot);
    obj = BpfObject.open('sk_lookup', pinRoot, encodeConfig(ISTIO_CONFIG));
    obj.load();
    prog = obj.prog('inpod_sk_lookup').fd;
    maps = {
      podIps: obj.map('inpod_pod_ips'),
      podIps6: obj.map('inpod_pod_ips6'),
      pod6: obj.map('inpod_pod6'),
      enrolled: obj.map('inpod_enrolled'),
      portExcl: obj.map('inpod_port_excl'),
      ownSyn: obj.map('inpod_own_conn'),
      inbound: obj.map('inpod_inbound'),
      inbound1: obj.map('inpod_inbound1'),
      inboundSlot: obj.map('inpod_inbound_slot'),
      stats: obj.map('inpod_stats'),
    };
    // what enroll writes (ts/redirect/ebpf.ts), for one pod
    maps.podIps.update(encodeIp4Key(POD), encodeU64(NETNS));
    maps.enrolled.update(encodeU64(NETNS), encodePod({ ip4: POD, probeIp4: PROBE_SOURCE.ipv4, flags: 0 }));
    // a dual-stack pod: its IPv6 side too
    maps.podIps6.update(encodeIp6Key(POD6), encodeU64(NETNS));
    maps.pod6.update(encodeU64(NETNS), encodePod6({ ip6: POD6, probeIp6: PROBE_SOURCE.ipv6 }));
    maps.portExcl.update(encodePortKey(NETNS, EXCLUDED, DIR_IN), Buffer.from([1]));
    // the proxy's inbound listener, as sockops registers it (a plain TCP listener: no SO_REUSEPORT)
    listener = net.createServer();
    await new Promise<void>((r) => listener.listen(0, '127.0.0.1', r));
    listenerCookie = socketCookie((listener as unknown as { _handle: { fd: number } })._handle.fd);
    setListener(true);
  });

  afterAll(async () => {
    obj?.destroy();
    await new Promise((r) => (listener ? listener.close(r) : r(null)));
    rmSync(pinRoot, { recursive: true, force: true });
  });

  it('assigns a SYN to an enrolled pod to the proxy\'s inbound listener, leaving the destination as it was', () => {
    expect(lookup({ src: PEER, sport: 40000, dst: POD, dport: 8080 })).toEqual({ verdict: SK_PASS, assigned: listenerCookie, moved: { IN_STEER: 1n } });
  });

  it.each([
    ['the HBONE port', { src: PEER, sport: 40001, dst: POD, dport: PORTS.hbone }],
    ['the inbound plaintext port itself', { src: PEER, sport: 40002, dst: POD, dport: PORTS.inboundPlaintext }],
    ['the kubelet probe source', { src: PROBE_SOURCE.ipv4, sport: 40003, dst: POD, dport: 8080 }],
    ['a loopback source', { src: '127.0.0.6', sport: 40004, dst: POD, dport: 8080 }],
    ['the pod connecting to itself', { src: POD, sport: 40005, dst: POD, dport: 8080 }],
    ['an excluded inbound port', { src: PEER, sport: 40006, dst: POD, dport: EXCLUDED }],
  ])('exempts %s: passed on untouched, counted as a bypass', (_what, l) => {
    expect(lookup(l)).toEqual({ verdict: SK_PASS, assigned: 0n, moved: { IN_BYPASS: 1n } });
  });

  it('exempts the exact tuple sockops recorded as the pod\'s own SYN, and only that tuple', () => {
    const own = { netns: NETNS, sip: PEER, dip: POD, sport: 40010, dport: 8080 };
    maps.ownSyn.update(encodeTuple(own), Buffer.from([1]));
    try {
      expect(lookup({ src: PEER, sport: 40010, dst: POD, dport: 8080 })).toEqual({ verdict: SK_PASS, assigned: 0n, moved: { IN_BYPASS: 1n } });
      // the same peer from another port, or to another port, is a foreign SYN: to the proxy
      expect(lookup({ src: PEER, sport: 40011, dst: POD, dport: 8080 })).toEqual({ verdict: SK_PASS, assigned: listenerCookie, moved: { IN_STEER: 1n } });
      expect(lookup({ src: PEER, sport: 40010, dst: POD, dport: 8081 })).toEqual({ verdict: SK_PASS, assigned: listenerCookie, moved: { IN_STEER: 1n } });
    } finally {
      maps.ownSyn.delete(encodeTuple(own));
    }
  });

  // sockops records a connect() of a socket in the node's netns (inpod_host_ns) to a pod under the
  // pod's netns: kubelet's probes. Forwarded traffic was never a local connect(), so never recorded.
  it("exempts the exact tuple a node socket connected with (a kubelet probe), and nothing else from the node's address", () => {
    const NODE = '10.200.250.1';
    const probe = { netns: NETNS, sip: NODE, dip: POD, sport: 40040, dport: 8080 };
    const elsewhere = { ...probe, netns: NETNS + 1n, sport: 40041 }; // recorded for another pod's netns
    maps.ownSyn.update(encodeTuple(probe), Buffer.from([1]));
    maps.ownSyn.update(encodeTuple(elsewhere), Buffer.from([1]));
    try {
      expect(lookup({ src: NODE, sport: 40040, dst: POD, dport: 8080 })).toEqual({ verdict: SK_PASS, assigned: 0n, moved: { IN_BYPASS: 1n } });
      // the node's address on a tuple no node socket connected with (forwarded, masqueraded): to the proxy
      expect(lookup({ src: NODE, sport: 40042, dst: POD, dport: 8080 })).toEqual({ verdict: SK_PASS, assigned: listenerCookie, moved: { IN_STEER: 1n } });
      expect(lookup({ src: NODE, sport: 40041, dst: POD, dport: 8080 })).toEqual({ verdict: SK_PASS, assigned: listenerCookie, moved: { IN_STEER: 1n } });
    } finally {
      maps.ownSyn.delete(encodeTuple(probe));
      maps.ownSyn.delete(encodeTuple(elsewhere));
    }
  });

  it('drops a SYN to an enrolled pod whose proxy has no listener (fail closed, never around the proxy)', () => {
    setListener(false);
    try {
      expect(lookup({ src: PEER, sport: 40020, dst: POD, dport: 8080 })).toEqual({ verdict: SK_DROP, assigned: 0n, moved: { IN_NO_LISTENER: 1n } });
      // the exemptions still hold without a listener
      expect(lookup({ src: PEER, sport: 40021, dst: POD, dport: PORTS.hbone })).toEqual({ verdict: SK_PASS, assigned: 0n, moved: { IN_BYPASS: 1n } });
    } finally {
      setListener(true);
    }
  });

  // sockops registers each new 15006 listener in the slot that does not hold the newest (maps.h):
  // during a proxy rollout both proxies' listeners are registered, and either may close first
  it('assigns the newest registered listener, else the one before it (a proxy rollout, in either order)', async () => {
    const second = net.createServer();
    await new Promise<void>((r) => second.listen(0, '127.0.0.1', r));
    const fd2 = (second as unknown as { _handle: { fd: number } })._handle.fd;
    const secondCookie = socketCookie(fd2);
    const slot = (n: number): void => maps.inboundSlot.update(encodeU64(NETNS), Buffer.from(Uint32Array.of(n).buffer));
    try {
      maps.inbound1.update(encodeU64(NETNS), encodeU64(BigInt(fd2))); // the newer proxy's listener, in slot 1
      slot(1);
      expect(lookup({ src: PEER, sport: 40050, dst: POD, dport: 8080 }).assigned).toBe(secondCookie);
      maps.inbound1.delete(encodeU64(NETNS)); // the newer one closed first: the older one takes over
      expect(lookup({ src: PEER, sport: 40051, dst: POD, dport: 8080 })).toEqual({ verdict: SK_PASS, assigned: listenerCookie, moved: { IN_STEER: 1n } });
      maps.inbound1.update(encodeU64(NETNS), encodeU64(BigInt(fd2)));
      setListener(false); // or the older one closed first (the rollout's order): the newer one
      expect(lookup({ src: PEER, sport: 40052, dst: POD, dport: 8080 }).assigned).toBe(secondCookie);
      slot(0); // the newest in slot 0, gone: the one in slot 1
      expect(lookup({ src: PEER, sport: 40053, dst: POD, dport: 8080 }).assigned).toBe(secondCookie);
    } finally {
      maps.inbound1.delete(encodeU64(NETNS));
      maps.inboundSlot.delete(encodeU64(NETNS));
      setListener(true);
      await new Promise((r) => second.close(r));
    }
  });

  describe('IPv6', () => {
    let dual: net.Server;
    let dualCookie: bigint;
    const v6 = (l: Omit<Lookup, 'family'>): Lookup => ({ ...l, family: AF_INET6 });
    beforeAll(async () => {
      // the proxy's dual-stack [::] listener (ztunnel's default), registered as sockops does
      dual = net.createServer();
      await new Promise<void>((r) => dual.listen({ port: 0, host: '::', ipv6Only: false }, r));
      const fd = (dual as unknown as { _handle: { fd: number } })._handle.fd;
      dualCookie = socketCookie(fd);
      maps.inbound.update(encodeU64(NETNS), encodeU64(BigInt(fd)));
    });
    afterAll(async () => {
      setListener(true);
      await new Promise((r) => dual.close(r));
    });

    it("assigns an IPv6 SYN to the pod's IPv6 to the dual-stack listener, and an IPv4 one too", () => {
      expect(lookup(v6({ src: PEER6, sport: 41000, dst: POD6, dport: 8080 }))).toEqual({ verdict: SK_PASS, assigned: dualCookie, moved: { IN_STEER: 1n } });
      expect(lookup({ src: PEER, sport: 41001, dst: POD, dport: 8080 })).toEqual({ verdict: SK_PASS, assigned: dualCookie, moved: { IN_STEER: 1n } });
    });

    it.each([
      ['the HBONE port', { src: PEER6, sport: 41002, dst: POD6, dport: PORTS.hbone }],
      ['the IPv6 probe source', { src: PROBE_SOURCE.ipv6, sport: 41003, dst: POD6, dport: 8080 }],
      ['::1', { src: '::1', sport: 41004, dst: POD6, dport: 8080 }],
      ['the pod connecting to its own IPv6', { src: POD6, sport: 41005, dst: POD6, dport: 8080 }],
      ['an excluded inbound port', { src: PEER6, sport: 41006, dst: POD6, dport: EXCLUDED }],
    ])('exempts %s over IPv6: passed on untouched, counted as a bypass', (_what, l) => {
      expect(lookup(v6(l))).toEqual({ verdict: SK_PASS, assigned: 0n, moved: { IN_BYPASS: 1n } });
    });

    it('exempts the exact IPv6 tuple sockops recorded, and only that tuple', () => {
      const own = { netns: NETNS, sip: PEER6, dip: POD6, sport: 41010, dport: 8080 };
      maps.ownSyn.update(encodeTuple(own), Buffer.from([1]));
      try {
        expect(lookup(v6({ src: PEER6, sport: 41010, dst: POD6, dport: 8080 }))).toEqual({ verdict: SK_PASS, assigned: 0n, moved: { IN_BYPASS: 1n } });
        expect(lookup(v6({ src: PEER6, sport: 41011, dst: POD6, dport: 8080 }))).toEqual({ verdict: SK_PASS, assigned: dualCookie, moved: { IN_STEER: 1n } });
      } finally {
        maps.ownSyn.delete(encodeTuple(own));
      }
    });

    it('drops an IPv6 SYN when the registered listener takes IPv4 only (fail closed), or when there is none', () => {
      setListener(true); // the AF_INET 127.0.0.1 listener
      expect(lookup(v6({ src: PEER6, sport: 41020, dst: POD6, dport: 8080 }))).toEqual({ verdict: SK_DROP, assigned: 0n, moved: { IN_NO_LISTENER: 1n } });
      setListener(false);
      expect(lookup(v6({ src: PEER6, sport: 41021, dst: POD6, dport: 8080 }))).toEqual({ verdict: SK_DROP, assigned: 0n, moved: { IN_NO_LISTENER: 1n } });
    });
  });

  it('passes what is not for an enrolled pod without counting it: another address, an unenrolled netns, UDP', () => {
    const untouched = { verdict: SK_PASS, assigned: 0n, moved: {} };
    expect(lookup({ src: PEER, sport: 40030, dst: '10.200.250.3', dport: 8080 })).toEqual(untouched);
    expect(lookup({ src: PEER, sport: 40031, dst: POD, dport: 8080, protocol: IPPROTO_UDP })).toEqual(untouched);
    expect(lookup({ src: PEER6, sport: 40032, dst: 'fd00:200::fa:0:0:3', dport: 8080, family: AF_INET6 })).toEqual(untouched);
    // unenroll deletes the netns from inpod_enrolled first: its address alone captures nothing
    maps.enrolled.delete(encodeU64(NETNS));
    try {
      expect(lookup({ src: PEER, sport: 40033, dst: POD, dport: 8080 })).toEqual(untouched);
    } finally {
      maps.enrolled.update(encodeU64(NETNS), encodePod({ ip4: POD, probeIp4: PROBE_SOURCE.ipv4, flags: 0 }));
    }
  });

  it.each([
    ['connect', 'inpod_connect4'],
    ['sockops', 'inpod_sockops'],
    ['getsockopt', 'inpod_getsockopt'],
  ])('cannot test-run %s (%s) on this kernel: ENOTSUPP, so real connect()s in test/netns/ cover it', (name, progName) => {
    const o = BpfObject.open(name, pinRoot, encodeConfig(ISTIO_CONFIG));
    try {
      o.load();
      expect(() => progTestRun(o.prog(progName).fd, { ctx: Buffer.alloc(SK_LOOKUP.sizeof) })).toThrow(expect.objectContaining({ errno: 524, code: 'ENOTSUPP' }));
    } finally {
      o.destroy();
    }
  });
});
