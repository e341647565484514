import { describe, expect, it } from 'vitest';
import { addon } from '../../ts/native/index.js';
import {
  LAYOUT,
  decodeAddr,
  decodeCidrKey,
  decodeCidr6Key,
  decodePod,
  decodePod6,
  decodePortKey,
  decodeTuple,
  encodeAddr,
  encodeCidrKey,
  encodeCidr6Key,
  encodeConfig,
  encodePod,
  encodePod6,
  encodePortKey,
  encodeTuple,
  DIR_IN,
  DIR_OUT,
  POD_DNS_CAPTURE,
} from '../../ts/native/structs.js';
import { PROBE_SOURCE } from '../../ts/istio.js';

describe('struct layout shared with the eBPF programs', () => {
  const native = addon().layout();

  it('matches the C structs the addon was compiled against, field by field', () => {
    for (const [name, ts] of Object.entries(LAYOUT)) {
      const c = native[name];
      expect(c, name).toBeDefined();
      expect(ts.sizeof, `${name} sizeof`).toBe(c!.sizeof);
      expect(ts.offsetof, `${name} offsets`).toEqual(c!.offsetof);
    }
  });

  it('uses the same flag and direction constants as the C side', () => {
    expect(native.constants.INPOD_POD_DNS_CAPTURE).toBe(POD_DNS_CAPTURE);
    expect(native.constants.INPOD_DIR_IN).toBe(DIR_IN);
    expect(native.constants.INPOD_DIR_OUT).toBe(DIR_OUT);
  });

  it('encodes addresses in network order and ports in host order', () => {
    const pod = encodePod({ ip4: '10.200.1.2', probeIp4: '169.254.7.127', flags: POD_DNS_CAPTURE });
    expect([...pod.subarray(0, 8)]).toEqual([10, 200, 1, 2, 169, 254, 7, 127]);
    expect(decodePod(pod)).toEqual({ ip4: '10.200.1.2', probeIp4: '169.254.7.127', flags: 1 });
    const cfg = encodeConfig({ proxyMark: 0x539, spoofMark: 0x53a, outboundPort: 15001, inboundPort: 15006, hbonePort: 15008, dnsPort: 15053 });
    expect(cfg.readUInt32LE(0)).toBe(0x539);
    expect(cfg.readUInt16LE(8)).toBe(15001);
    // per-connection state: 16-byte addresses, IPv4 as ::ffff:a.b.c.d (the form of a dual-stack socket)
    const t = encodeTuple({ netns: 7n, sip: '10.0.0.1', dip: '127.0.0.1', sport: 40000, dport: 15001 });
    expect(t.length).toBe(48);
    expect([...t.subarray(8, 24)]).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1]);
    expect(t.readUInt16LE(40)).toBe(40000);
    expect(decodeTuple(t)).toEqual({ netns: 7n, sip: '10.0.0.1', dip: '127.0.0.1', sport: 40000, dport: 15001 });
    const t6 = encodeTuple({ netns: 7n, sip: 'fd00:200::5:0:0:2', dip: '::1', sport: 40000, dport: 15001 });
    expect([...t6.subarray(8, 12)]).toEqual([0xfd, 0, 2, 0]);
    expect(t6[39]).toBe(1);
    expect(decodeTuple(t6)).toEqual({ netns: 7n, sip: 'fd00:200::5:0:0:2', dip: '::1', sport: 40000, dport: 15001 });
    const a = encodeAddr({ ip: '10.0.0.2', port: 8080 });
    expect([...a.subarray(12, 18)]).toEqual([10, 0, 0, 2, 8080 >> 8, 8080 & 255]);
    expect(decodeAddr(a)).toEqual({ ip: '10.0.0.2', port: 8080 });
    expect(decodeAddr(encodeAddr({ ip: 'fd00::7', port: 53 }))).toEqual({ ip: 'fd00::7', port: 53 });
    const p6 = encodePod6({ ip6: 'fd00:200::2', probeIp6: PROBE_SOURCE.ipv6 });
    expect(p6.subarray(16).toString('hex')).toBe('fd16925471271337ffffffffffffffff');
    expect(decodePod6(p6)).toEqual({ ip6: 'fd00:200::2', probeIp6: PROBE_SOURCE.ipv6 });
  });

  it('round-trips exclusion keys, with the netns bits always part of the CIDR prefix', () => {
    expect(decodePortKey(encodePortKey(123n, 8080, DIR_OUT))).toEqual({ netns: 123n, port: 8080, dir: DIR_OUT });
    const k = encodeCidrKey(99n, '10.96.0.0/12');
    expect(k.readUInt32LE(0)).toBe(64 + 12);
    expect(decodeCidrKey(k)).toEqual({ netns: 99n, cidr: '10.96.0.0/12' });
    expect(() => encodeCidrKey(1n, '10.0.0.0/40')).toThrow(/not an IPv4 CIDR/);
    expect(() => encodeCidrKey(1n, 'fd00::/8')).toThrow(/not an IPv4/);
    const k6 = encodeCidr6Key(99n, 'fd00:10:96::/108');
    expect(k6.readUInt32LE(0)).toBe(64 + 108);
    expect(decodeCidr6Key(k6)).toEqual({ netns: 99n, cidr: 'fd00:10:96::/108' });
    expect(() => encodeCidr6Key(1n, 'fd00::/129')).toThrow(/not an IPv6 CIDR/);
    expect(() => encodeCidr6Key(1n, '10.0.0.0/8')).toThrow(/not an IPv6 CIDR/);
  });
});
