/**
 * Waypoint routing decisions, table-driven, against ztunnel's: src/proxy/outbound.rs
 * `build_request` (service waypoint for service-addressed traffic, workload waypoint for
 * workload-addressed traffic unless the source is that waypoint, `:authority` the original
 * destination), src/state.rs `fetch_waypoint` / `fetch_service_waypoint` /
 * `sample_weighted_waypoint` (hostname or address references, ServiceResolutionMode::Waypoint,
 * UnknownWaypoint fails the connection), src/proxy.rs `check_from_waypoint`, and
 * src/proxy/inbound.rs `validate_destination` (the authority may name another address only when
 * this pod is its waypoint). Cases follow ztunnel's own tests where it has them
 * (outbound.rs build_request_source_waypoint / build_request_destination_waypoint, inbound.rs
 * test_find_inbound_upstream).
 */
import { describe, expect, it } from 'vitest';
import { buildRoute, type Route, type RouteOptions } from '../../ts/proxy/route.js';
import { isWaypointFor, serviceWaypoint } from '../../ts/proxy/waypoint.js';
import { StateSnapshot } from '../../ts/state/store.js';
import type { GatewayAddress, Service, Workload } from '../../ts/state/types.js';

const WP_HOST = 'waypoint.shop.svc.cluster.local';
const byHost = (hostname: string, namespace = 'shop'): GatewayAddress => ({ address: '', network: '', hostname: { namespace, hostname }, hboneMtlsPort: 15008 });
const byIp = (address: string): GatewayAddress => ({ address, network: '', hboneMtlsPort: 15008 });

function wl(name: string, ip: string, o: Partial<Workload> = {}): Workload {
  return {
    uid: `uid-${name}`, name, namespace: 'shop', serviceAccount: name, trustDomain: 'cluster.local', workloadIps: [ip],
    protocol: 'HBONE', node: 'n1', network: '', services: {}, labels: {}, healthy: true, ...o,
  };
}
function svc(name: string, vip: string, ports: Record<number, number>, o: Partial<Service> = {}): Service {
  return { name, namespace: 'shop', hostname: `${name}.shop.svc.cluster.local`, vips: [{ network: '', address: vip }], ports, subjectAltNames: [], ...o };
}
const member = (s: string, ports: Record<number, number>): Record<string, Record<number, number>> => ({ [`shop/${s}.shop.svc.cluster.local`]: ports });

const state = {
  workloads: [
    wl('sleep', '10.200.0.2', { namespace: 'default' }),
    wl('waypoint', '10.200.1.9', { services: member('waypoint', { 15008: 15008 }) }),
    wl('waypoint2', '10.200.1.10', { services: member('waypoint2', { 15008: 15008 }) }),
    wl('web', '10.200.1.3', { services: { ...member('web', { 80: 8080 }), ...member('bare', { 80: 8080 }) }, waypoint: byHost(WP_HOST) }),
    wl('db', '10.200.1.5', { waypoint: byHost(WP_HOST) }),
    wl('db-ip', '10.200.1.6', { waypoint: byIp('10.200.1.9') }),
    wl('db-lost', '10.200.1.7', { waypoint: byHost('gone.shop.svc.cluster.local') }),
    wl('plain', '10.200.1.8', { protocol: 'TCP' }),
  ],
  services: [
    svc('waypoint', '10.96.0.99', { 15008: 15008 }, { subjectAltNames: ['spiffe://cluster.local/ns/shop/sa/waypoint-svc-san'] }),
    svc('waypoint2', '10.96.0.98', { 15008: 15008 }),
    svc('noport-waypoint', '10.96.0.97', { 80: 80 }),
    svc('web', '10.96.0.10', { 80: 8080 }, { waypoint: byHost(WP_HOST) }),
    svc('web-by-ip', '10.96.0.11', { 80: 8080 }, { waypoint: byIp('10.200.1.9') }),
    svc('web-by-vip', '10.96.0.12', { 80: 8080 }, { waypoint: byIp('10.96.0.99') }),
    svc('web-lost', '10.96.0.13', { 80: 8080 }, { waypoint: byHost('gone.shop.svc.cluster.local') }),
    svc('web-wp-noport', '10.96.0.14', { 80: 8080 }, { waypoint: byHost('noport-waypoint.shop.svc.cluster.local') }),
    // a service with no waypoint whose endpoint (web) has a workload waypoint
    svc('bare', '10.96.0.15', { 80: 8080 }),
  ],
  policies: [],
};
const snap = new StateSnapshot(state);
const SLEEP = { identity: 'spiffe://cluster.local/ns/default/sa/sleep', ip: '10.200.0.2' };
const WAYPOINT = { identity: 'spiffe://cluster.local/ns/shop/sa/waypoint', ip: '10.200.1.9' };
const WP_IDS = ['spiffe://cluster.local/ns/shop/sa/waypoint-svc-san', 'spiffe://cluster.local/ns/shop/sa/waypoint'];

type Want = Partial<Extract<Route, { kind: 'hbone' }>> | { kind: 'reject'; reason: RegExp } | { kind: 'passthrough' };
const cases: [string, string, number, RouteOptions['source'], Want][] = [
  ['service-addressed, service waypoint by hostname: HBONE to the waypoint, authority the VIP:port', '10.96.0.10', 80, SLEEP,
    { kind: 'hbone', target: { ip: '10.200.1.9', port: 15008 }, authority: { ip: '10.96.0.10', port: 80 }, identities: WP_IDS, viaWaypoint: true }],
  ['service waypoint: a port the service lacks still goes to the waypoint (checked before the port)', '10.96.0.10', 9999, SLEEP,
    { kind: 'hbone', target: { ip: '10.200.1.9', port: 15008 }, authority: { ip: '10.96.0.10', port: 9999 }, viaWaypoint: true }],
  ['service waypoint by the waypoint pod IP: dialled at that IP, its identity only', '10.96.0.11', 80, SLEEP,
    { kind: 'hbone', target: { ip: '10.200.1.9', port: 15008 }, authority: { ip: '10.96.0.11', port: 80 }, identities: ['spiffe://cluster.local/ns/shop/sa/waypoint'], viaWaypoint: true }],
  ['service waypoint by the waypoint service VIP: balanced over its endpoints', '10.96.0.12', 80, SLEEP,
    { kind: 'hbone', target: { ip: '10.200.1.9', port: 15008 }, authority: { ip: '10.96.0.12', port: 80 }, identities: WP_IDS, viaWaypoint: true }],
  ['the source being the waypoint does not skip a service waypoint (ztunnel checks it for workload waypoints only)', '10.96.0.10', 80, WAYPOINT,
    { kind: 'hbone', target: { ip: '10.200.1.9', port: 15008 }, viaWaypoint: true }],
  ['service waypoint that resolves to nothing: rejected, never sent around it', '10.96.0.13', 80, SLEEP,
    { kind: 'reject', reason: /unknown waypoint: shop\/gone\.shop\.svc\.cluster\.local/ }],
  ['service waypoint whose service lacks the HBONE port: no endpoint qualifies, rejected', '10.96.0.14', 80, SLEEP,
    { kind: 'reject', reason: /unknown waypoint: .*no healthy endpoint for port 15008/ }],
  ['service-addressed without a service waypoint: the endpoint\'s workload waypoint is not used', '10.96.0.15', 80, SLEEP,
    { kind: 'hbone', target: { ip: '10.200.1.3', port: 15008 }, authority: { ip: '10.200.1.3', port: 8080 }, viaWaypoint: false }],
  ['workload-addressed, workload waypoint: HBONE to the waypoint, authority the pod ip:port', '10.200.1.5', 5432, SLEEP,
    { kind: 'hbone', target: { ip: '10.200.1.9', port: 15008 }, authority: { ip: '10.200.1.5', port: 5432 }, identities: WP_IDS, viaWaypoint: true }],
  ['workload waypoint by IP', '10.200.1.6', 5432, SLEEP,
    { kind: 'hbone', target: { ip: '10.200.1.9', port: 15008 }, authority: { ip: '10.200.1.6', port: 5432 }, viaWaypoint: true }],
  ['from the waypoint itself (its identity, from its IP): straight to the workload', '10.200.1.5', 5432, WAYPOINT,
    { kind: 'hbone', target: { ip: '10.200.1.5', port: 15008 }, authority: { ip: '10.200.1.5', port: 5432 }, identities: ['spiffe://cluster.local/ns/shop/sa/db'], viaWaypoint: false }],
  ['the waypoint\'s identity from another IP is not the waypoint: through it', '10.200.1.5', 5432, { ...WAYPOINT, ip: '10.200.0.2' },
    { kind: 'hbone', target: { ip: '10.200.1.9', port: 15008 }, viaWaypoint: true }],
  ['the waypoint\'s IP with another identity is not the waypoint: through it', '10.200.1.5', 5432, { ...SLEEP, ip: '10.200.1.9' },
    { kind: 'hbone', target: { ip: '10.200.1.9', port: 15008 }, viaWaypoint: true }],
  ['no source given: through the waypoint', '10.200.1.5', 5432, undefined,
    { kind: 'hbone', target: { ip: '10.200.1.9', port: 15008 }, viaWaypoint: true }],
  ['workload waypoint that resolves to nothing: rejected', '10.200.1.7', 5432, SLEEP,
    { kind: 'reject', reason: /unknown waypoint/ }],
  ['a workload without a waypoint: direct', '10.200.1.9', 15008, SLEEP,
    { kind: 'hbone', target: { ip: '10.200.1.9', port: 15008 }, viaWaypoint: false }],
  ['a plain TCP workload without a waypoint: passthrough', '10.200.1.8', 80, SLEEP, { kind: 'passthrough' }],
];

describe('waypoint routing (ztunnel outbound.rs build_request)', () => {
  it.each(cases)('%s', (_name, ip, port, source, want) => {
    expect(buildRoute(snap, { ip, port }, { source, pick: () => 0 })).toMatchObject(want);
  });

  it('the route through a waypoint ends at the waypoint instance and keeps the addressed service', () => {
    const r = buildRoute(snap, { ip: '10.96.0.10', port: 80 }, { source: SLEEP, pick: () => 0 });
    expect(r.kind === 'hbone' && [r.workload?.name, r.service?.name]).toEqual(['waypoint', 'web']);
  });

  it('a hostname reference follows the caller\'s IP family; an address reference is dialled as written', () => {
    const dual = new StateSnapshot({ ...state, workloads: state.workloads.map((w) => (w.name === 'waypoint' ? { ...w, workloadIps: ['fd00:200::9', '10.200.1.9'] } : w)) });
    expect(buildRoute(dual, { ip: '10.96.0.10', port: 80 }, { pick: () => 0 })).toMatchObject({ target: { ip: '10.200.1.9' } });
    expect(buildRoute(dual, { ip: '10.96.0.11', port: 80 }, { pick: () => 0 })).toMatchObject({ target: { ip: '10.200.1.9' } });
  });
});

describe('weighted waypoints (ztunnel state.rs sample_weighted_waypoint)', () => {
  const a = byHost(WP_HOST);
  const b = byHost('waypoint2.shop.svc.cluster.local');
  const s = svc('canary', '10.96.0.16', { 80: 8080 }, { waypoint: a, weightedWaypoints: [{ destination: a, weight: 90 }, { destination: b, weight: 10 }] });
  it.each([[0, a], [0.89, a], [0.9, b], [0.999, b]] as const)('draw %f picks by weight', (r, want) => {
    expect(serviceWaypoint(s, () => r)).toBe(want);
  });
  it('an unsampleable set (all weights 0) falls back to the single waypoint; none at all is no waypoint', () => {
    expect(serviceWaypoint({ ...s, weightedWaypoints: [{ destination: b, weight: 0 }] }, () => 0.5)).toBe(a);
    expect(serviceWaypoint({ ...s, waypoint: undefined, weightedWaypoints: [] })).toBeUndefined();
  });
  it('routes a canary share to the second waypoint', () => {
    const snap2 = new StateSnapshot({ ...state, services: [...state.services, s] });
    expect(buildRoute(snap2, { ip: '10.96.0.16', port: 80 }, { random: () => 0.95, pick: () => 0 })).toMatchObject({ target: { ip: '10.200.1.10' }, authority: { ip: '10.96.0.16', port: 80 } });
  });
});

describe('inbound authority for a waypoint (ztunnel inbound.rs validate_destination)', () => {
  const wp = snap.byUid.get('uid-waypoint');
  const web = snap.byUid.get('uid-web');
  it.each([
    ['a service VIP whose waypoint (by hostname) this pod is an endpoint of', '10.96.0.10', wp, '10.200.1.9', true],
    ['a workload whose waypoint is this pod', '10.200.1.5', wp, '10.200.1.9', true],
    ['a workload whose waypoint names this pod by IP', '10.200.1.6', wp, '10.200.1.9', true],
    ['a service without a waypoint', '10.96.0.15', wp, '10.200.1.9', false],
    ['a service whose waypoint is another pod', '10.96.0.10', web, '10.200.1.3', false],
    ['an address the state does not know', '10.200.9.9', wp, '10.200.1.9', false],
    ['this pod not in the state', '10.96.0.10', undefined, '10.200.1.9', false],
  ] as const)('%s: %s', (_n, authority, local, localIp, want) => {
    expect(isWaypointFor(snap, authority, local, localIp)).toBe(want);
  });
});
