import { describe, expect, it } from 'vitest';
import { PROXY_PORTS } from '../../ts/istio.js';
import { isSelfCall } from '../../ts/proxy/route.js';
import { ownAddresses, ownWorkload, type PodInputs } from '../../ts/proxy/inputs.js';
import { parseLocalConfig } from '../../ts/state/localconfig.js';
import { StateStore } from '../../ts/state/store.js';

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

describe("a pod's own addresses and workload, derived once per state snapshot (inputs.ts)", () => {
  const yaml = (ips: string[], rev: string): string => `workloads:
  - {uid: u-web, name: web, namespace: shop, serviceAccount: web, workloadIps: [${ips.map((i) => `"${i}"`).join(', ')}], protocol: HBONE, canonicalRevision: ${rev}}
`;
  const pod = (state: StateStore): PodInputs => ({ state, info: { uid: 'u-web', name: 'web', namespace: 'shop', serviceAccount: 'web' } }) as unknown as PodInputs;

  it('follows a state update at once: an address the pod gains is its own for the self-call check, and its workload is the new one', () => {
    const state = new StateStore();
    state.set(parseLocalConfig(yaml(['10.200.1.5'], 'v1')));
    const pi = pod(state);
    const target = { ip: '10.200.1.7', port: 15008 };
    expect(isSelfCall('outbound', target, ownAddresses(pi))).toBe(false);
    expect(ownWorkload(pi, '10.200.1.5')?.canonicalRevision).toBe('v1');
    state.set(parseLocalConfig(yaml(['10.200.1.5', '10.200.1.7'], 'v2')));
    expect(isSelfCall('outbound', target, ownAddresses(pi))).toBe(true);
    expect(ownWorkload(pi, '10.200.1.5')?.canonicalRevision).toBe('v2');
    // the client's address counts as the pod's own too, cached view or not
    expect(isSelfCall('outbound', { ip: '10.200.1.9', port: 15001 }, ownAddresses(pi, '10.200.1.9'))).toBe(true);
    state.set(parseLocalConfig('workloads: []\n'));
    expect(ownWorkload(pi, '10.200.1.5')).toBeUndefined();
    expect(isSelfCall('outbound', target, ownAddresses(pi))).toBe(false);
  });
});
