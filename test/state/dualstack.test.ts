/**
 * IPv6 and dual-stack addresses in the state, from each source, as ztunnel holds them (issue 18):
 * Kubernetes dual-stack Pods (status.podIPs), Services (clusterIPs, ipFamilies as istiod's
 * pilot/pkg/serviceregistry/ambient/services.go sends them) and IPv6 EndpointSlices; ztunnel's
 * local config; xDS addresses of 16 bytes. Addresses are written as Rust writes an IpAddr, so a
 * connection's canonical address finds them. Then routing over them as ztunnel's outbound.rs
 * service_ip_families test: the service's families restrict the endpoint IP, Dual prefers the
 * client's family.
 */
import { describe, expect, it } from 'vitest';
import type * as k8s from '@kubernetes/client-node';
import { buildKubeState, serviceIpFamilies } from '../../ts/state/kube.js';
import { parseLocalConfig } from '../../ts/state/localconfig.js';
import { StateStore } from '../../ts/state/store.js';
import type { MeshState, Service } from '../../ts/state/types.js';
import { buildRoute } from '../../ts/proxy/route.js';
import { pickWorkloadIp } from '../../ts/proxy/waypoint.js';
import { addressFromXds, type XAddress } from '../../ts/xds/convert.js';
import { T, decodePlain, encodePlain } from '../../ts/xds/proto.js';
import { ipBytes } from '../fixtures/istiod/resources.js';

const snap = (s: MeshState) => {
  const st = new StateStore();
  st.set(s);
  return st.snapshot;
};
const first = { pick: () => 0 };

describe('dual-stack state from Kubernetes', () => {
  const pod = (name: string, uid: string, podIPs: string[]): k8s.V1Pod => ({
    metadata: { name, namespace: 'shop', uid, labels: { app: 'web' }, annotations: { 'ambient.istio.io/redirection': 'enabled' } },
    spec: { serviceAccountName: 'web', nodeName: 'n1', containers: [] },
    status: { phase: 'Running', podIP: podIPs[0], podIPs: podIPs.map((ip) => ({ ip })) },
  });
  const svc = (name: string, clusterIPs: string[], ipFamilies?: string[]): k8s.V1Service => ({
    metadata: { name, namespace: 'shop' },
    spec: { clusterIP: clusterIPs[0], clusterIPs, ipFamilies, ports: [{ name: 'http', port: 80, targetPort: 'http' as never }] },
  });
  // a dual-stack Service has one slice per family (addressType IPv4, IPv6), the same pods in each
  const slice = (svcName: string, addressType: string, eps: { ip: string; uid: string }[]) => ({
    metadata: { name: `${svcName}-${addressType}`, namespace: 'shop', labels: { 'kubernetes.io/service-name': svcName } },
    addressType,
    ports: [{ name: 'http', port: 8080 }],
    endpoints: eps.map((e) => ({ addresses: [e.ip], targetRef: { kind: 'Pod', name: e.uid, uid: e.uid } })),
  });
  const state = buildKubeState(
    [pod('dual', 'u-dual', ['10.200.9.5', 'FD00:200:0:0:0:0:0:5']), pod('v6', 'u-v6', ['fd00:200::6'])],
    [svc('dual', ['10.96.9.1', 'fd00:200::96:1'], ['IPv4', 'IPv6']), svc('v6', ['fd00:200::96:2'], ['IPv6']), svc('v4', ['10.96.9.3'], ['IPv4'])],
    [
      slice('dual', 'IPv4', [{ ip: '10.200.9.5', uid: 'u-dual' }]),
      slice('dual', 'IPv6', [{ ip: 'fd00:200::5', uid: 'u-dual' }, { ip: 'fd00:200::6', uid: 'u-v6' }]),
      slice('v6', 'IPv6', [{ ip: 'fd00:200::5', uid: 'u-dual' }]),
      slice('v4', 'IPv4', [{ ip: '10.200.9.5', uid: 'u-dual' }]),
    ] as never,
    [], 'cluster.local',
  );

  it('gives a dual-stack pod both addresses, written as ztunnel writes them', () => {
    expect(state.workloads.find((w) => w.uid === 'u-dual')!.workloadIps).toEqual(['10.200.9.5', 'fd00:200::5']);
    expect(state.workloads.find((w) => w.uid === 'u-v6')!.workloadIps).toEqual(['fd00:200::6']);
  });

  it("gives a dual-stack Service a VIP per family and istiod's ipFamilies", () => {
    const s = (n: string) => state.services.find((x) => x.name === n)!;
    expect(s('dual')).toMatchObject({ vips: [{ network: '', address: '10.96.9.1' }, { network: '', address: 'fd00:200::96:1' }], ipFamilies: 'Dual' });
    expect(s('v6')).toMatchObject({ vips: [{ network: '', address: 'fd00:200::96:2' }], ipFamilies: 'IPv6' });
    expect(s('v4')).toMatchObject({ ipFamilies: 'IPv4' });
  });

  it('reads named target ports from an IPv6 EndpointSlice', () => {
    expect(state.workloads.find((w) => w.uid === 'u-v6')!.services).toEqual({ 'shop/dual.shop.svc.cluster.local': { 80: 8080 } });
  });

  it.each<[string[] | undefined, Service['ipFamilies']]>([
    [['IPv4', 'IPv6'], 'Dual'], [['IPv6', 'IPv4'], 'Dual'], [['IPv4'], 'IPv4'], [['IPv6'], 'IPv6'], [[], undefined], [undefined, undefined],
  ])('spec.ipFamilies %j is %s', (f, want) => {
    expect(serviceIpFamilies(f)).toBe(want);
  });

  it('routes each VIP of a dual-stack Service to the endpoint of the same family, over HBONE', () => {
    const sn = snap(state);
    expect(buildRoute(sn, { ip: '10.96.9.1', port: 80 }, first)).toMatchObject({ kind: 'hbone', authority: { ip: '10.200.9.5', port: 8080 }, target: { ip: '10.200.9.5', port: 15008 } });
    expect(buildRoute(sn, { ip: 'fd00:200::96:1', port: 80 }, first)).toMatchObject({ kind: 'hbone', authority: { ip: 'fd00:200::5', port: 8080 }, target: { ip: 'fd00:200::5', port: 15008 } });
    // an IPv6-only Service reached over IPv6 picks the endpoint's IPv6 address
    expect(buildRoute(sn, { ip: 'fd00:200::96:2', port: 80 }, first)).toMatchObject({ authority: { ip: 'fd00:200::5', port: 8080 } });
    // a pod addressed directly by its IPv6 address
    expect(buildRoute(sn, { ip: 'fd00:200::6', port: 8080 })).toMatchObject({ kind: 'hbone', authority: { ip: 'fd00:200::6', port: 8080 } });
  });
});

describe('dual-stack state from local config and xDS', () => {
  it('reads IPv6 workload addresses and VIPs from local config, written as ztunnel writes them', () => {
    const s = parseLocalConfig(`
workloads:
  - {uid: u1, name: a, namespace: ns, workloadIps: ["10.200.1.5", "FD00:0200::0005"], protocol: HBONE}
services:
  - {name: s, namespace: ns, hostname: s.ns.svc.cluster.local, vips: ["/fd00:200:0::96:1", "/10.96.0.1"], ports: {80: 8080}, ipFamilies: IPv6}
`);
    expect(s.workloads[0]!.workloadIps).toEqual(['10.200.1.5', 'fd00:200::5']);
    expect(s.services[0]!.vips).toEqual([{ network: '', address: 'fd00:200::96:1' }, { network: '', address: '10.96.0.1' }]);
    // found by the canonical address a connection carries
    expect(snap(s).byIp.get('fd00:200::5')?.uid).toBe('u1');
    expect(snap(s).byVip.get('fd00:200::96:1')?.name).toBe('s');
  });

  it('reads 16-byte xDS addresses as IPv6, a dual-stack workload with both', () => {
    const a = addressFromXds(decodePlain<XAddress>(T.address, encodePlain(T.address, {
      workload: { uid: 'u', name: 'w', namespace: 'ns', addresses: [ipBytes('10.0.0.1'), ipBytes('fd00:200::1')] },
    })));
    expect(a).toMatchObject({ kind: 'workload', workload: { workloadIps: ['10.0.0.1', 'fd00:200::1'] } });
    const s = addressFromXds(decodePlain<XAddress>(T.address, encodePlain(T.address, {
      service: { name: 's', namespace: 'ns', hostname: 'h', addresses: [{ network: '', address: ipBytes('fd00:200::96:1') }], ip_families: 2 },
    })));
    expect(s).toMatchObject({ kind: 'service', service: { vips: [{ network: '', address: 'fd00:200::96:1' }], ipFamilies: 'IPv6' } });
  });
});

describe("endpoint IP choice by the service's IP families (ztunnel outbound.rs service_ip_families)", () => {
  const dual = { workloadIps: ['127.0.0.2', 'ff06::c3'] };
  it.each<[string, Service['ipFamilies'], string, string | undefined]>([
    ['IPv6 only always takes the IPv6 address', 'IPv6', '127.0.0.3', 'ff06::c3'],
    ['IPv4 only always takes the IPv4 address', 'IPv4', '::3', '127.0.0.2'],
    ['Dual prefers the client family (IPv4)', 'Dual', '127.0.0.3', '127.0.0.2'],
    ['Dual prefers the client family (IPv6)', 'Dual', '::3', 'ff06::c3'],
    ['unset prefers the client family', undefined, '::3', 'ff06::c3'],
    ['the address asked for, when it is the workload\'s', 'IPv4', 'ff06::c3', 'ff06::c3'],
  ])('%s', (_n, families, wanted, want) => {
    expect(pickWorkloadIp(dual, wanted, families)).toBe(want);
  });

  it('fails a connection when the endpoint has no address of the service families', () => {
    expect(pickWorkloadIp({ workloadIps: ['10.0.0.1'] }, 'fd00::1', 'IPv6')).toBeUndefined();
    const s = parseLocalConfig(`
workloads:
  - {uid: u1, name: a, namespace: ns, workloadIps: ["10.200.1.5"], protocol: HBONE, services: {"ns/s.ns.svc.cluster.local": {80: 8080}}}
services:
  - {name: s, namespace: ns, hostname: s.ns.svc.cluster.local, vips: ["/fd00:200::96:1"], ports: {80: 8080}, ipFamilies: IPv6}
`);
    expect(buildRoute(snap(s), { ip: 'fd00:200::96:1', port: 80 }, first)).toMatchObject({ kind: 'reject', reason: expect.stringContaining("no address of the service's IP families (IPv6)") });
  });
});
