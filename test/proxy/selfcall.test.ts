import { describe, expect, it } from 'vitest';
import { PROXY_PORTS } from '../../ts/istio.js';
import { isSelfCall } from '../../ts/proxy/route.js';

const own = { podIps: ['10.200.1.5', 'fd00:200::5'], nodeIps: new Set(['192.0.2.10', 'fd00:200::1']) };

describe('isSelfCall (the proxy never connects to itself)', () => {
  it.each([...PROXY_PORTS])('refuses outbound to port %i on loopback, the pod\'s IP and the node\'s IP', (port) => {
    for (const ip of ['127.0.0.1', '127.0.0.53', '::1', '10.200.1.5', '192.0.2.10']) expect(isSelfCall('outbound', { ip, port }, own)).toBe(true);
  });

  it.each([...PROXY_PORTS])('refuses outbound to port %i on every IPv6 or IPv4-mapped spelling of those addresses', (port) => {
    for (const ip of ['fd00:200::5', 'FD00:200:0:0:0:0:0:5', 'fd00:200::1', '0:0:0:0:0:0:0:1', '::ffff:127.0.0.1', '::ffff:7f00:1', '::ffff:10.200.1.5', '::ffff:192.0.2.10']) {
      expect(isSelfCall('outbound', { ip, port }, own), ip).toBe(true);
    }
    expect(isSelfCall('outbound', { ip: 'fd00:200::6', port }, own)).toBe(false);
  });

  it('lets outbound to those ports on any other address through (another pod\'s 15008 is its business)', () => {
    expect(isSelfCall('outbound', { ip: '10.200.1.6', port: 15008 }, own)).toBe(false);
    expect(isSelfCall('outbound', { ip: '127.0.0.1', port: 8080 }, own)).toBe(false);
  });

  it('refuses inbound to any of the proxy\'s ports: the target is always this pod', () => {
    for (const port of PROXY_PORTS) expect(isSelfCall('inbound', { ip: '10.200.9.9', port }, own)).toBe(true);
    expect(isSelfCall('inbound', { ip: '10.200.1.5', port: 8080 }, own)).toBe(false);
  });
});
