/**
 * Addresses as the proxy compares and reports them, canonical as ztunnel's to_canonical makes
 * them (src/socket.rs) and written as Rust's SocketAddr / Ipv6Addr Display writes them (RFC 5952).
 */
import { describe, expect, it } from 'vitest';
import { canonicalIp, formatIpv6, ipText, ipv6Bytes, parseSocketAddr, socketAddr } from '../../ts/util/sockaddr.js';

describe('canonicalIp', () => {
  it.each([
    ['::ffff:10.200.1.2', '10.200.1.2'],
    ['::FFFF:10.200.1.2', '10.200.1.2'],
    ['::ffff:0a c8:0102'.replace(' ', ''), '10.200.1.2'],
    ['0:0:0:0:0:ffff:a00:1', '10.0.0.1'],
    ['10.200.1.2', '10.200.1.2'],
    ['FD00:0200:0000:0000:0000:0000:0000:000A', 'fd00:200::a'],
    ['fd00:200:0:0:1:0:0:1', 'fd00:200::1:0:0:1'],
    ['fd00:200::1:0:0:0', 'fd00:200:0:0:1::'],
    ['0:0:0:0:0:0:0:1', '::1'],
    ['::', '::'],
    // one zero group stays a 0 (RFC 5952 4.2.2)
    ['fd00:200:1:1:1:1:0:1', 'fd00:200:1:1:1:1:0:1'],
    // IPv4-compatible (deprecated) is not mapped: stays IPv6
    ['::10.0.0.1', '::a00:1'],
    ['not an ip', 'not an ip'],
    // `::ffff:` followed by something other than a lone dotted tail is not mapped
    ['::ffff:abcd', '::ffff:abcd'],
    ['::ffff:1:2.3.4.5', '::ffff:1:203:405'],
    ['::FFFF:ffff:10.0.0.1', '::ffff:ffff:a00:1'],
  ])('%s is %s', (a, want) => {
    expect(canonicalIp(a)).toBe(want);
  });

  it('round-trips every 16 bytes through text', () => {
    const b = Buffer.from('fd000200000000000000000000000001', 'hex');
    expect(formatIpv6(b)).toBe('fd00:200::1');
    expect(ipv6Bytes('fd00:200::1').equals(b)).toBe(true);
    expect(ipv6Bytes('::ffff:1.2.3.4').toString('hex')).toBe('00000000000000000000ffff01020304');
  });
});

// The capture layer's address form: as the kernel and iptables-save print addresses, so records,
// rules and map keys compare equal whichever way an address was written.
describe('ipText', () => {
  it.each([
    ['10.200.0.5', '10.200.0.5'],
    ['FD00:0200:0000:0000:0000:0000:0000:000A', 'fd00:200::a'],
    ['fd16:9254:7127:1337:ffff:ffff:ffff:ffff', 'fd16:9254:7127:1337:ffff:ffff:ffff:ffff'],
    // `ip addr` and the kernel print a mapped address's IPv4 part dotted, and keep it IPv6
    ['::ffff:10.0.0.1', '::ffff:10.0.0.1'],
    ['0:0:0:0:0:ffff:0a00:0001', '::ffff:10.0.0.1'],
    ['::ffff:1', '::ffff:1'],
  ])('writes %s as %s', (input, want) => {
    expect(ipText(input)).toBe(want);
  });
});

describe('socketAddr and parseSocketAddr', () => {
  it('writes [ipv6]:port, mapped IPv4 as IPv4, as Rust prints a SocketAddr', () => {
    expect(socketAddr({ ip: 'fd00:200::a', port: 8080 })).toBe('[fd00:200::a]:8080');
    expect(socketAddr({ ip: 'FD00:200:0::A', port: 8080 })).toBe('[fd00:200::a]:8080');
    expect(socketAddr({ ip: '::ffff:10.200.1.2', port: 80 })).toBe('10.200.1.2:80');
    expect(socketAddr({ ip: '10.200.1.2', port: 80 })).toBe('10.200.1.2:80');
  });

  it.each([
    ['10.0.0.1:80', { ip: '10.0.0.1', port: 80 }],
    ['[fd00:200::a]:15008', { ip: 'fd00:200::a', port: 15008 }],
    ['[FD00:200:0::A]:1', { ip: 'fd00:200::a', port: 1 }],
    ['[::ffff:10.0.0.1]:80', { ip: '10.0.0.1', port: 80 }],
    ['fd00:200::a:80', null],
    ['[10.0.0.1]:80', null],
    ['[fd00:200::a%eth0]:80', null],
    ['[fd00:200::a]', null],
    ['[fd00:200::a]:0', null],
    ['10.0.0.1:65536', null],
    ['10.0.0.300:80', null],
    ['host:80', null],
    ['', null],
  ])('%s parses as %j', (s, want) => {
    expect(parseSocketAddr(s)).toEqual(want);
  });
});
