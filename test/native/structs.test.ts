import { describe, expect, it } from 'vitest';
import { addon } from '../../ts/native/index.js';
import {
  LAYOUT,
  decodeAddr,
  decodeCidrKey,
  decodePod,
  decodePortKey,
  decodeTuple,
  encodeAddr,
  encodeCidrKey,
  encodeConfig,
  encodePod,
  encodePortKey,
  encodeTuple,
  DIR_IN,
  DIR_OUT,
  POD_DNS_CAPTURE,
} from '../../ts/native/structs.js';

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
    const t = encodeTuple({ netns: 7n, sip: '10.0.0.1', dip: '127.0.0.1', sport: 40000, dport: 15001 });
    expect(t.length).toBe(24);
    expect(t.readUInt16LE(16)).toBe(40000);
    expect(decodeTuple(t)).toEqual({ netns: 7n, sip: '10.0.0.1', dip: '127.0.0.1', sport: 40000, dport: 15001 });
    const a = encodeAddr({ ip: '10.0.0.2', port: 8080 });
    expect([...a.subarray(0, 6)]).toEqual([10, 0, 0, 2, 8080 >> 8, 8080 & 255]);
    expect(decodeAddr(a)).toEqual({ ip: '10.0.0.2', port: 8080 });
  });

  it('round-trips exclusion keys, with the netns bits always part of the CIDR prefix', () => {
    expect(decodePortKey(encodePortKey(123n, 8080, DIR_OUT))).toEqual({ netns: 123n, port: 8080, dir: DIR_OUT });
    const k = encodeCidrKey(99n, '10.96.0.0/12');
    expect(k.readUInt32LE(0)).toBe(64 + 12);
    expect(decodeCidrKey(k)).toEqual({ netns: 99n, cidr: '10.96.0.0/12' });
    expect(() => encodeCidrKey(1n, '10.0.0.0/40')).toThrow(/not an IPv4 CIDR/);
    expect(() => encodeCidrKey(1n, 'fd00::/8')).toThrow(/not an IPv4/);
  });
});
