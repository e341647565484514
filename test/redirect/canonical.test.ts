/**
 * The capture layer's address form: as the kernel and iptables-save print addresses (IPv6
 * compressed and lowercase, RFC 5952, an IPv4-mapped address with its IPv4 part dotted), so that
 * records, rules and map keys compare equal whichever way an address was written.
 */
import { describe, expect, it } from 'vitest';
import { canonicalCidr } from '../../ts/redirect/backend.js';
import { ipText } from '../../ts/util/sockaddr.js';

describe('ipText (ts/util/sockaddr.ts) / canonicalCidr (ts/redirect/backend.ts)', () => {
  it.each([
    ['10.200.0.5', '10.200.0.5'],
    ['FD00:0200:0000:0000:0000:0000:0000:000A', 'fd00:200::a'],
    ['fd16:9254:7127:1337:ffff:ffff:ffff:ffff', 'fd16:9254:7127:1337:ffff:ffff:ffff:ffff'],
    // URL alone writes ::ffff:a00:1; `ip addr` and the kernel print the IPv4 part dotted
    ['::ffff:10.0.0.1', '::ffff:10.0.0.1'],
    ['0:0:0:0:0:ffff:0a00:0001', '::ffff:10.0.0.1'],
    ['::ffff:1', '::ffff:1'],
  ])('writes %s as %s', (input, want) => {
    expect(ipText(input)).toBe(want);
  });

  it('keeps the prefix length and refuses what is not an address or CIDR', () => {
    expect(canonicalCidr('FD00:200:0::/64')).toBe('fd00:200::/64');
    expect(canonicalCidr('10.200.0.0/16')).toBe('10.200.0.0/16');
    expect([canonicalCidr('fd00::/129'), canonicalCidr('10.0.0.0/33'), canonicalCidr('x/8'), canonicalCidr('1.2.3.4/8/9')]).toEqual([null, null, null, null]);
  });
});
