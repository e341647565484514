/**
 * Waypoints as istiod sends them over WDS (workload.proto GatewayAddress on a Service and a
 * Workload, by hostname or by address) route the proxy's connections as ztunnel's build_request
 * does (ts/proxy/route.ts, table in test/proxy/route-waypoint.test.ts): the state here comes
 * from the fake istiod over gRPC with TLS, nothing written by hand on the proxy's side.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { buildRoute } from '../../ts/proxy/route.js';
import { ADDRESS_TYPE } from '../../ts/xds/proto.js';
import { ipBytes } from '../fixtures/istiod/resources.js';
import { rig, until, type Rig } from './harness.js';

let r: Rig | undefined;
afterEach(async () => {
  await r?.close();
  r = undefined;
});

const WP_HOST = 'waypoint.shop.svc.cluster.local';
const byHost = { hostname: { namespace: 'shop', hostname: WP_HOST }, hbone_mtls_port: 15008 };
const pod = (name: string, ip: string, o: object = {}): object => ({
  workload: { uid: `Kubernetes//Pod/shop/${name}`, name, namespace: 'shop', addresses: [ipBytes(ip)], tunnel_protocol: 1, service_account: name, node: 'node-a', ...o },
});
const service = (name: string, vip: string, port: number, target: number, o: object = {}): object => ({
  service: { name, namespace: 'shop', hostname: `${name}.shop.svc.cluster.local`, addresses: [{ network: '', address: ipBytes(vip) }], ports: [{ service_port: port, target_port: target }], ...o },
});
const SLEEP = { identity: 'spiffe://cluster.local/ns/default/sa/sleep', ip: '10.200.0.2' };

describe('waypoints from istiod', () => {
  it('send service-addressed and workload-addressed connections to the waypoint istiod names, with the original destination as :authority', async () => {
    r = await rig();
    const x = r.xds;
    x.set(ADDRESS_TYPE, 'Kubernetes//Pod/shop/waypoint-0', pod('waypoint-0', '10.200.1.9', { service_account: 'waypoint', services: { [`shop/${WP_HOST}`]: { ports: [{ service_port: 15008, target_port: 15008 }] } } }));
    x.set(ADDRESS_TYPE, `shop/${WP_HOST}`, service('waypoint', '10.96.0.99', 15008, 15008));
    x.set(ADDRESS_TYPE, 'Kubernetes//Pod/shop/web-0', pod('web-0', '10.200.1.3', { waypoint: byHost, services: { 'shop/web.shop.svc.cluster.local': { ports: [{ service_port: 80, target_port: 8080 }] } } }));
    x.set(ADDRESS_TYPE, 'shop/web.shop.svc.cluster.local', service('web', '10.96.0.10', 80, 8080, { waypoint: byHost }));
    x.set(ADDRESS_TYPE, 'Kubernetes//Pod/shop/db-0', pod('db-0', '10.200.1.5', { waypoint: { address: { network: '', address: ipBytes('10.200.1.9') }, hbone_mtls_port: 15008 } }));
    const p = r.proxy();
    p.client.start();
    await until('the first sync', () => p.wds.published);
    const snap = p.store.snapshot;
    const opts = { source: SLEEP, pick: () => 0 };
    expect(buildRoute(snap, { ip: '10.96.0.10', port: 80 }, opts)).toMatchObject({
      kind: 'hbone', target: { ip: '10.200.1.9', port: 15008 }, authority: { ip: '10.96.0.10', port: 80 }, identities: ['spiffe://cluster.local/ns/shop/sa/waypoint'], viaWaypoint: true,
    });
    expect(buildRoute(snap, { ip: '10.200.1.3', port: 8080 }, opts)).toMatchObject({ kind: 'hbone', target: { ip: '10.200.1.9', port: 15008 }, authority: { ip: '10.200.1.3', port: 8080 }, viaWaypoint: true });
    expect(buildRoute(snap, { ip: '10.200.1.5', port: 5432 }, opts)).toMatchObject({ kind: 'hbone', target: { ip: '10.200.1.9', port: 15008 }, authority: { ip: '10.200.1.5', port: 5432 }, viaWaypoint: true });

    // istiod removes the waypoint: the service's connections are refused, never sent around it
    x.remove(ADDRESS_TYPE, ['Kubernetes//Pod/shop/waypoint-0', `shop/${WP_HOST}`]);
    await until('the waypoint gone', () => !p.store.snapshot.byIp.has('10.200.1.9'));
    expect(buildRoute(p.store.snapshot, { ip: '10.96.0.10', port: 80 }, opts)).toMatchObject({ kind: 'reject', reason: expect.stringMatching(/unknown waypoint/) });
  });
});
