/**
 * ts/proxy/configdump.ts on states from each source, against what ztunnel's /config_dump holds
 * for them (src/admin.rs handle_config_dump, src/xds.rs LocalClient::load_config,
 * src/state/service.rs ServiceStore, src/state/workload.rs Workload's serde), read back the way
 * istioctl reads it (test/fixtures/istioctl.ts: istio istioctl/pkg/writer/ztunnel/configdump/
 * api.go). test/proxy/admin.test.ts has the endpoint and the field-by-field forms.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import yaml from 'js-yaml';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { PolicyCache } from '../../ts/policy/authz.js';
import { configDump } from '../../ts/proxy/configdump.js';
import { buildKubeState } from '../../ts/state/kube.js';
import { parseLocalConfig } from '../../ts/state/localconfig.js';
import { StateSnapshot } from '../../ts/state/store.js';
import type { MeshState, Service, Workload } from '../../ts/state/types.js';
import { serdeJsonAsync } from '../../ts/util/serdejson.js';
import { prime, serviceRows, workloadRows } from '../fixtures/istioctl.js';
import { serdePretty } from '../fixtures/serde.js';

const EXAMPLE = join(__dirname, '..', '..', 'vendor', 'istio', 'ztunnel', 'examples', 'localhost.yaml');

/* eslint-disable @typescript-eslint/no-explicit-any */
type Dump = Record<string, any>;

/** The dump of `state` as /config_dump writes it, checked to be serde_json's text of itself. */
async function dumpOf(state: MeshState, localConfig: boolean): Promise<{ text: string; d: Dump }> {
  const policies = new PolicyCache(pino({ level: 'silent' })).get(state.policies, state.authorizations);
  const text = await serdeJsonAsync(configDump({ snapshot: new StateSnapshot(state), policies, certificates: [], pods: [], config: {}, version: {}, localConfig }));
  expect(text).toBe(serdePretty(JSON.parse(text)));
  return { text, d: JSON.parse(text) as Dump };
}

/** `v` without its empty strings: what serde's `skip_serializing_if = "is_default"` leaves out of a written file. */
function withoutEmpty(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(withoutEmpty);
  if (v === null || typeof v !== 'object') return v;
  return Object.fromEntries(Object.entries(v).filter(([, x]) => x !== '').map(([k, x]) => [k, withoutEmpty(x)]));
}

const wl = (name: string, o: Partial<Workload> = {}): Workload => ({
  uid: `u-${name}`, name, namespace: 'shop', serviceAccount: name, trustDomain: 'cluster.local', workloadIps: [], protocol: 'HBONE',
  node: 'node-1', network: '', services: {}, labels: {}, healthy: true, ...o,
});
const svc = (name: string, o: Partial<Service> = {}): Service => ({
  name, namespace: 'shop', hostname: `${name}.shop.svc.cluster.local`, vips: [], ports: { 80: 8080 }, subjectAltNames: [], ...o,
});

describe('/config_dump as ztunnel holds each source\'s state (ts/proxy/configdump.ts)', () => {
  it('ztunnel\'s examples/localhost.yaml: staticConfig gives the file back (admin.rs re-reads it into LocalConfig), the state holds its workloads as the services\' endpoints (xds.rs load_config)', async () => {
    const file = readFileSync(EXAMPLE, 'utf8');
    const { text, d } = await dumpOf(parseLocalConfig(file), true);
    expect(d.staticConfig).toMatchObject(withoutEmpty(yaml.load(file)) as object);
    const ex = d.staticConfig.services.find((s: Dump) => s.hostname === 'example.com');
    expect(ex.endpoints).toEqual({}); // as written: the file's services give none
    // the live state: a local workload lists no services of its own (they are its LocalWorkload's) ...
    expect(d.workloads.map((w: Dump) => [w.uid, w.services])).toEqual([['cluster1//v1/Pod/default/local', undefined], ['cluster1//v1/Pod/default/local-tcp', undefined]]);
    // ... its memberships are endpoints of the services, by uid, with their port maps
    expect(d.services.map((s: Dump) => [s.hostname, s.vips, s.endpoints])).toEqual(['example.com', 'example2.com'].map((h, i) => [h, [['/127.10.0.1'], ['remote/127.10.0.2']][i], {
      'cluster1//v1/Pod/default/local': { port: { 80: 8080 }, status: 'Healthy', workloadUid: 'cluster1//v1/Pod/default/local' },
      'cluster1//v1/Pod/default/local-tcp': { port: { 80: 8080 }, status: 'Healthy', workloadUid: 'cluster1//v1/Pod/default/local-tcp' },
    }]));
    expect(d.policies).toEqual([{ action: 'Allow', dryRun: false, name: 'deny-9999', namespace: 'default', rules: [[[{ notDestinationPorts: [9999] }]]], scope: 'Namespace' }]);
    expect(d.stagedServices).toEqual({});
    // and istioctl ztunnel-config reads it
    const ic = prime(text);
    expect(workloadRows(ic)).toEqual([['default', 'local', '127.0.0.1', 'local', 'None', 'HBONE'], ['default', 'local-tcp', '127.0.0.2', 'local', 'None', 'TCP']]);
    expect(serviceRows(ic)).toEqual([['default', 'local', '127.10.0.1', 'None', '2/2'], ['default', 'remote', '127.10.0.2', 'None', '2/2']]);
  });

  it('endpoints as service.rs keeps them: declared ones, then healthy claimers (all with loadBalancer AllowAll); claims on a service the state lacks are stagedServices', async () => {
    const state: MeshState = {
      workloads: [
        wl('a', { services: { 'shop/web.shop.svc.cluster.local': { 80: 8080 }, 'shop/lb.shop.svc.cluster.local': { 80: 9090 } } }),
        wl('b', { healthy: false, services: { 'shop/web.shop.svc.cluster.local': { 80: 8080 }, 'shop/lb.shop.svc.cluster.local': { 80: 9090 }, 'shop/gone.shop.svc.cluster.local': { 80: 1 } } }),
      ],
      services: [
        svc('web', { endpoints: { 'u-ext': { workloadUid: 'u-ext', port: { 80: 7070 }, status: 'Unhealthy' }, 'u-a': { workloadUid: 'u-a', port: { 80: 1 }, status: 'Unhealthy' } } }),
        svc('lb', { loadBalancer: { routingPreferences: ['Zone'], mode: 'Failover', healthPolicy: 'AllowAll' } }),
      ],
      policies: [],
    };
    const { d } = await dumpOf(state, false);
    const eps = (name: string): Record<string, string> => Object.fromEntries(Object.entries(d.services.find((s: Dump) => s.name === name).endpoints as Record<string, Dump>).map(([k, e]) => [k, `${e.status} ${e.port[80]}`]));
    expect(eps('web')).toEqual({ 'u-a': 'Healthy 8080', 'u-ext': 'Unhealthy 7070' }); // the claim replaces the declared u-a; unhealthy b left out
    expect(eps('lb')).toEqual({ 'u-a': 'Healthy 9090', 'u-b': 'Unhealthy 9090' });
    expect(d.services.find((s: Dump) => s.name === 'lb').loadBalancer).toEqual({ healthPolicy: 'AllowAll', mode: 'Failover', routingPreferences: ['Zone'] });
    expect(d.stagedServices).toEqual({ 'shop/gone.shop.svc.cluster.local': { 'u-b': { port: { 80: 1 }, status: 'Unhealthy', workloadUid: 'u-b' } } });
    // from a source other than a local config a workload lists what it claims (workload.rs: the xDS workload's services)
    expect(d.workloads.find((w: Dump) => w.name === 'b').services).toEqual(['shop/gone.shop.svc.cluster.local', 'shop/lb.shop.svc.cluster.local', 'shop/web.shop.svc.cluster.local']);
  });

  it('a workload\'s authorizationPolicies as istiod sends them: the keys its source gave (the implicit waypoint policy) and the selector policies its labels match', async () => {
    const only = { name: 'only-sleep', namespace: 'shop', spec: { selector: { matchLabels: { app: 'web' } }, action: 'ALLOW', rules: [{ from: [{ source: { principals: ['cluster.local/ns/shop/sa/sleep'] } }] }] } };
    const state: MeshState = {
      workloads: [wl('web', { labels: { app: 'web' }, authorizationPolicies: ['shop/istio_allow_waypoint_wp'] }), wl('db', { labels: { app: 'db' } })],
      services: [],
      policies: [only],
    };
    const { d } = await dumpOf(state, false);
    expect(d.workloads.map((w: Dump) => [w.name, w.authorizationPolicies])).toEqual([['db', undefined], ['web', ['shop/istio_allow_waypoint_wp', 'shop/only-sleep']]]);
  });

  it('a pod from the Kubernetes API carries what istiod gives ztunnel: workloadName/Type, canonicalName/Revision, clusterId, locality, and istioctl reads them', async () => {
    const pod = {
      metadata: {
        uid: 'p1', name: 'reviews-v2-5d8f7c9b4-x2x9z', generateName: 'reviews-v2-5d8f7c9b4-', namespace: 'shop',
        labels: { app: 'reviews', version: 'v2', 'pod-template-hash': '5d8f7c9b4' },
        ownerReferences: [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: 'reviews-v2-5d8f7c9b4', controller: true, uid: 'rs' }],
      },
      spec: { nodeName: 'node-1', serviceAccountName: 'reviews', containers: [] },
      status: { podIP: '10.0.0.9', phase: 'Running' },
    };
    const node = { metadata: { name: 'node-1', labels: { 'topology.kubernetes.io/region': 'eu-west1', 'topology.kubernetes.io/zone': 'eu-west1-b' } } };
    const { text, d } = await dumpOf(buildKubeState([pod as never], [], [], [], 'cluster.local', { nodes: [node as never] }), false);
    expect(d.workloads[0]).toMatchObject({
      workloadName: 'reviews-v2', workloadType: 'pod', canonicalName: 'reviews', canonicalRevision: 'v2', clusterId: 'Kubernetes',
      locality: { region: 'eu-west1', subzone: '', zone: 'eu-west1-b' },
    });
    expect(prime(text).workloads[0]).toMatchObject({
      workloadName: 'reviews-v2', workloadType: 'pod', canonicalName: 'reviews', canonicalRevision: 'v2', clusterId: 'Kubernetes',
      locality: { region: 'eu-west1', zone: 'eu-west1-b', subzone: '' },
    });
  });

  it('gateway addresses by hostname or address, network gateways, application tunnels, CIDR VIPs and weighted waypoints in serde\'s forms (workload.rs GatewayAddress untagged, ApplicationTunnel; service.rs)', async () => {
    const state: MeshState = {
      workloads: [wl('a', {
        waypoint: { address: '', network: '', hostname: { namespace: 'shop', hostname: 'wp.shop.svc.cluster.local' }, hboneMtlsPort: 15008 },
        networkGateway: { address: '10.1.0.1', network: 'east', hboneMtlsPort: 15008 },
        applicationTunnel: { protocol: 'PROXY' },
      })],
      services: [svc('web', {
        vips: [{ network: 'east', address: 'fd00::1' }], cidrVips: [{ network: '', cidr: '10.2.0.0/24' }],
        weightedWaypoints: [{ destination: { address: '10.96.0.5', network: '', hboneMtlsPort: 15008 }, weight: 90 }],
      })],
      policies: [],
    };
    const { text, d } = await dumpOf(state, false);
    expect(d.workloads[0]).toMatchObject({
      waypoint: { destination: 'shop/wp.shop.svc.cluster.local', hboneMtlsPort: 15008 },
      networkGateway: { destination: 'east/10.1.0.1', hboneMtlsPort: 15008 },
      applicationTunnel: { port: null, protocol: 'PROXY' },
    });
    expect(d.services[0]).toMatchObject({
      vips: ['east/fd00::1'], cidrVips: [{ cidr: '10.2.0.0/24', network: '' }], weightedWaypoints: [{ destination: { destination: '/10.96.0.5', hboneMtlsPort: 15008 }, weight: 90 }],
    });
    prime(text); // istioctl's structs take every one of these
  });
});
