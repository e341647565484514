/** The agent's handling of pod addresses, both families (ts/agent/podips.ts; issue 18). */
import { describe, expect, it } from 'vitest';
import { podAddress, captureAddresses, eventIps, holdsAny, statusPodIps } from '../../ts/agent/podips.js';

const CAN = { capable: true, backend: 'ebpf' };
const CANNOT = { capable: false, backend: 'iptables' };

describe('pod addresses', () => {
  it('writes addresses as the kernel does: IPv6 lowercase and compressed, IPv4 as is; anything else is none', () => {
    expect(podAddress('FD00:0200:0000:0000:0000:0000:0000:0005')).toBe('fd00:200::5');
    expect(podAddress('fd00:200:0:0:1::5')).toBe('fd00:200::1:0:0:5');
    expect(podAddress('10.200.1.5')).toBe('10.200.1.5');
    expect(podAddress('fd00:200::5/64')).toBeNull();
    expect(podAddress('fe80::1%eth0')).toBeNull();
  });

  it('reads status.podIPs of both families, IPv4 first, else status.podIP; skips entries that are not addresses', () => {
    expect(statusPodIps({ status: { podIP: '10.200.1.5', podIPs: [{ ip: 'fd00:200::5' }, { ip: '10.200.1.5' }] } })).toEqual(['10.200.1.5', 'fd00:200::5']);
    expect(statusPodIps({ status: { podIP: 'fd00:200::7' } })).toEqual(['fd00:200::7']);
    expect(statusPodIps({ status: { podIPs: [{ ip: 'x' }, null as never, { ip: 'FD00:200::7' }] } })).toEqual(['fd00:200::7']);
    expect(statusPodIps({ status: { podIPs: 'x' as never } })).toEqual([]);
    expect(statusPodIps(undefined)).toEqual([]);
  });

  it('takes an event\'s ips canonical, each once; refuses what is not a list of addresses', () => {
    expect(eventIps(['fd00:200::5', '10.200.1.5', 'FD00:200::5'])).toEqual(['10.200.1.5', 'fd00:200::5']);
    expect(eventIps(undefined)).toEqual([]);
    expect(() => eventIps(['10.200.1.5/24'])).toThrow(/"10\.200\.1\.5\/24", which is not an IP address/);
    expect(() => eventIps(Array(65).fill('10.200.1.5'))).toThrow(/at most 64/);
    expect(() => eventIps({ 0: '10.200.1.5' })).toThrow(/must be a list/);
  });

  it('knows a netns as the pod\'s when it holds any of the pod\'s addresses', () => {
    expect(holdsAny({ ipv4: [], ipv6: ['fd00:200::5'] }, ['10.200.1.5', 'fd00:200::5'])).toBe(true);
    expect(holdsAny({ ipv4: ['10.200.1.6'], ipv6: [] }, ['10.200.1.5'])).toBe(false);
  });

  describe('what a sandbox is captured with', () => {
    it('every address its netns holds, IPv4 first, when the backend captures IPv6', () => {
      expect(captureAddresses('shop/web', ['10.200.1.5'], { ipv4: ['10.200.1.5'], ipv6: ['fd00:200::5', 'fd00:200::9'] }, CAN)).toEqual(['10.200.1.5', 'fd00:200::5', 'fd00:200::9']);
    });
    it('an IPv4-only pod whatever the backend says of IPv6', () => {
      expect(captureAddresses('shop/web', ['10.200.1.5'], { ipv4: ['10.200.1.5'], ipv6: [] }, CANNOT)).toEqual(['10.200.1.5']);
    });
    it('refuses a pod with IPv6 addresses when the backend does not capture IPv6, naming them and the backend', () => {
      expect(() => captureAddresses('shop/web', [], { ipv4: ['10.200.1.5'], ipv6: ['fd00:200::5'] }, CANNOT))
        .toThrow(/pod shop\/web has IPv6 addresses \(fd00:200::5\) and the iptables backend does not capture IPv6/);
      expect(() => captureAddresses('shop/web', [], { ipv4: [], ipv6: ['fd00:200::5'] }, CANNOT)).toThrow(/does not capture IPv6/);
    });
    it('refuses a CNI result naming an address the netns does not hold, before anything else', () => {
      expect(() => captureAddresses('shop/web', ['fd00:200::1'], { ipv4: ['10.200.1.5'], ipv6: [] }, CAN)).toThrow(/names fd00:200::1, which its network namespace does not hold \(it holds 10\.200\.1\.5\)/);
    });
    it('refuses a netns without addresses: the chain has not configured it yet', () => {
      expect(() => captureAddresses('shop/web', [], { ipv4: [], ipv6: [] }, CAN)).toThrow(/has no IPv4 or IPv6 address in its network namespace yet/);
    });
  });
});
