/**
 * The local config the telemetry tests describe connections against (ztunnel's format): sleep in
 * default, web in shop behind two services, db outside the mesh.
 */
import { parseLocalConfig } from '../../ts/state/localconfig.js';
import type { MeshState } from '../../ts/state/types.js';

/** `sleepService`: sleep's canonical service; `locality`: sleep's region/zone (r1/z1) or none. */
export function shopState(o: { sleepService?: string; locality?: boolean } = {}): MeshState {
  const locality = o.locality ? ', locality: {region: r1, zone: z1, subzone: ""}' : '';
  return parseLocalConfig(`
workloads:
  - {uid: u-sleep, name: sleep-7f-abc, namespace: default, serviceAccount: sleep, workloadIps: ["10.0.0.1"], protocol: HBONE,
     workloadName: sleep, canonicalName: ${o.sleepService ?? 'sleep'}, canonicalRevision: v1, clusterId: Kubernetes${locality}}
  - {uid: u-web, name: web-5d-xyz, namespace: shop, serviceAccount: web, workloadIps: ["10.0.0.2"], protocol: HBONE,
     workloadName: web, canonicalName: web, canonicalRevision: v2, clusterId: Kubernetes,
     services: {"shop/web.shop.svc.cluster.local": {80: 8080}, "shop/admin.shop.svc.cluster.local": {}}}
  - {uid: u-db, name: db-0, namespace: data, serviceAccount: db, workloadIps: ["10.0.0.3"], protocol: TCP}
services:
  - {name: web, namespace: shop, hostname: web.shop.svc.cluster.local, vips: ["/10.96.0.10"], ports: {80: 8080}}
  - {name: admin, namespace: shop, hostname: admin.shop.svc.cluster.local, vips: ["/10.96.0.11"], ports: {9090: 0}}
`);
}
