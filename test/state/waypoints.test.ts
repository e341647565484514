/**
 * Waypoints in the standalone Kubernetes mode, assigned as istiod assigns them (istio
 * pilot/pkg/serviceregistry/ambient/waypoints.go fetchWaypointForTarget / fetchWaypointForService
 * / fetchWaypointForWorkload / GetUseWaypoint / getGatewayAddress / makeAllowedRoutes,
 * workloads.go computeWaypoint, policies.go implicitWaypointPolicy): a table over the objects
 * (buildKubeState), then the same through the real informers against the fake API server, live.
 */
import * as k8s from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildRoute } from '../../ts/proxy/route.js';
import { buildKubeState, KubeStateSource, type KubeStateOptions } from '../../ts/state/kube.js';
import { StateStore, StateSnapshot } from '../../ts/state/store.js';
import type { GatewayAddress } from '../../ts/state/types.js';
import type { GatewayObject } from '../../ts/state/waypoints.js';
import { FakeApiServer } from '../fixtures/apiserver.js';

type Labels = Record<string, string>;
const ns = (name: string, labels: Labels = {}) => ({ metadata: { name, labels } });
const pod = (name: string, namespace: string, ip: string, labels: Labels = {}, sa = name) => ({
  metadata: { name, namespace, uid: `uid-${name}`, labels, annotations: { 'ambient.istio.io/redirection': 'enabled' } },
  spec: { serviceAccountName: sa, nodeName: 'n1' },
  status: { phase: 'Running', podIP: ip },
});
const service = (name: string, namespace: string, vip: string, labels: Labels = {}, port = 80) => ({ metadata: { name, namespace, labels }, spec: { clusterIP: vip, ports: [{ port, targetPort: port }] } });
const HBONE_LISTENER = { name: 'mesh', port: 15008, protocol: 'HBONE' };
const gateway = (name: string, namespace: string, o: { labels?: Labels; addresses?: { type?: string; value: string }[]; listeners?: unknown[]; cls?: string; annotations?: Labels } = {}): GatewayObject => ({
  metadata: { name, namespace, labels: o.labels ?? {}, annotations: o.annotations ?? {} },
  spec: { gatewayClassName: o.cls ?? 'istio-waypoint', listeners: (o.listeners ?? [HBONE_LISTENER]) as never },
  status: { addresses: o.addresses ?? [{ type: 'Hostname', value: `${name}.${namespace}.svc.cluster.local` }] },
});
const host = (hostname: string, namespace = 'shop'): GatewayAddress => ({ address: '', network: '', hostname: { namespace, hostname }, hboneMtlsPort: 15008 });
const WP = host('waypoint.shop.svc.cluster.local');

interface World {
  namespaces?: ReturnType<typeof ns>[];
  pods?: ReturnType<typeof pod>[];
  services?: ReturnType<typeof service>[];
  gateways?: GatewayObject[];
  classes?: { metadata: { name: string; labels?: Labels } }[];
  auto?: boolean;
}
const WAYPOINT_PODS = [pod('waypoint-0', 'shop', '10.200.1.9', { 'gateway.networking.k8s.io/gateway-name': 'waypoint' }, 'waypoint')];
function build(w: World) {
  const opts: KubeStateOptions = { namespaces: w.namespaces ?? [ns('shop')], gateways: w.gateways ?? [gateway('waypoint', 'shop')], gatewayClasses: w.classes ?? [], autoAllowWaypointPolicy: w.auto };
  const st = buildKubeState([...WAYPOINT_PODS, ...(w.pods ?? [])] as never, (w.services ?? []) as never, [], [], 'cluster.local', opts);
  return {
    st,
    svc: (name: string) => st.services.find((s) => s.name === name)!.waypoint,
    pod: (name: string) => st.workloads.find((x) => x.name === name)!.waypoint,
  };
}
const USE = (name: string, extra: Labels = {}) => ({ 'istio.io/use-waypoint': name, ...extra });

describe('which services and pods get a waypoint (istiod waypoints.go)', () => {
  it.each([
    ['the namespace label gives its services the waypoint (service traffic by default)', { namespaces: [ns('shop', USE('waypoint'))], services: [service('web', 'shop', '10.96.0.10')] }, 'web', WP],
    ['a service label alone', { services: [service('web', 'shop', '10.96.0.10', USE('waypoint'))] }, 'web', WP],
    ['a service label overrides the namespace\'s', { namespaces: [ns('shop', USE('other'))], gateways: [gateway('waypoint', 'shop'), gateway('other', 'shop')], services: [service('web', 'shop', '10.96.0.10', USE('waypoint'))] }, 'web', WP],
    ['`none` on the service opts it out of the namespace\'s', { namespaces: [ns('shop', USE('waypoint'))], services: [service('web', 'shop', '10.96.0.10', USE('none'))] }, 'web', undefined],
    ['a waypoint that does not exist: none (not ready)', { services: [service('web', 'shop', '10.96.0.10', USE('missing'))] }, 'web', undefined],
    ['a Gateway without status addresses and not of the waypoint class: none (not ready)', { gateways: [gateway('waypoint', 'shop', { addresses: [], cls: 'other' })], services: [service('web', 'shop', '10.96.0.10', USE('waypoint'))] }, 'web', undefined],
    ['a waypoint for workload traffic only: no service waypoint', { gateways: [gateway('waypoint', 'shop', { labels: { 'istio.io/waypoint-for': 'workload' } })], services: [service('web', 'shop', '10.96.0.10', USE('waypoint'))] }, 'web', undefined],
    ['waypoint-for all', { gateways: [gateway('waypoint', 'shop', { labels: { 'istio.io/waypoint-for': 'all' } })], services: [service('web', 'shop', '10.96.0.10', USE('waypoint'))] }, 'web', WP],
    ['waypoint-for none', { gateways: [gateway('waypoint', 'shop', { labels: { 'istio.io/waypoint-for': 'none' } })], services: [service('web', 'shop', '10.96.0.10', USE('waypoint'))] }, 'web', undefined],
    ['the GatewayClass\'s waypoint-for when the Gateway has none', { classes: [{ metadata: { name: 'istio-waypoint', labels: { 'istio.io/waypoint-for': 'workload' } } }], services: [service('web', 'shop', '10.96.0.10', USE('waypoint'))] }, 'web', undefined],
    ['the Gateway\'s waypoint-for over its class\'s', { classes: [{ metadata: { name: 'istio-waypoint', labels: { 'istio.io/waypoint-for': 'workload' } } }], gateways: [gateway('waypoint', 'shop', { labels: { 'istio.io/waypoint-for': 'service' } })], services: [service('web', 'shop', '10.96.0.10', USE('waypoint'))] }, 'web', WP],
    ['a status IP address when there is no hostname', { gateways: [gateway('waypoint', 'shop', { addresses: [{ type: 'IPAddress', value: '10.96.0.99' }] })], services: [service('web', 'shop', '10.96.0.10', USE('waypoint'))] }, 'web', { address: '10.96.0.99', network: '', hboneMtlsPort: 15008 }],
    ['the hostname preferred over an IP', { gateways: [gateway('waypoint', 'shop', { addresses: [{ type: 'IPAddress', value: '10.96.0.99' }, { type: 'Hostname', value: 'waypoint.shop.svc.cluster.local' }] })], services: [service('web', 'shop', '10.96.0.10', USE('waypoint'))] }, 'web', WP],
    ['an address of no type is not used (istiod reads typed ones)', { gateways: [gateway('waypoint', 'shop', { addresses: [{ value: '10.96.0.99' }], cls: 'other' })], services: [service('web', 'shop', '10.96.0.10', USE('waypoint'))] }, 'web', undefined],
    ['no status yet, class istio-waypoint: its Service (inpod\'s standalone fallback)', { gateways: [gateway('waypoint', 'shop', { addresses: [] })], services: [service('waypoint', 'shop', '10.96.0.99', {}, 15008), service('web', 'shop', '10.96.0.10', USE('waypoint'))] }, 'web', WP],
    ['no status yet, name-override: the Service it names', { gateways: [gateway('waypoint', 'shop', { addresses: [], annotations: { 'gateway.istio.io/name-override': 'wp-svc' } })], services: [service('wp-svc', 'shop', '10.96.0.99', {}, 15008), service('web', 'shop', '10.96.0.10', USE('waypoint'))] }, 'web', host('wp-svc.shop.svc.cluster.local')],
    ['no status and no Service: none', { gateways: [gateway('waypoint', 'shop', { addresses: [] })], services: [service('web', 'shop', '10.96.0.10', USE('waypoint'))] }, 'web', undefined],
    ['use-waypoint-namespace names another namespace; the HBONE listener allows only its own (Same, the default)', { namespaces: [ns('shop'), ns('app')], services: [service('web', 'app', '10.96.0.10', USE('waypoint', { 'istio.io/use-waypoint-namespace': 'shop' }))] }, 'web', undefined],
    ['... allowedRoutes All lets it attach', { namespaces: [ns('shop'), ns('app')], gateways: [gateway('waypoint', 'shop', { listeners: [{ ...HBONE_LISTENER, allowedRoutes: { namespaces: { from: 'All' } } }] })], services: [service('web', 'app', '10.96.0.10', USE('waypoint', { 'istio.io/use-waypoint-namespace': 'shop' }))] }, 'web', WP],
    ['... allowedRoutes Selector matching the namespace\'s labels', { namespaces: [ns('shop'), ns('app', { team: 'a' })], gateways: [gateway('waypoint', 'shop', { listeners: [{ ...HBONE_LISTENER, allowedRoutes: { namespaces: { from: 'Selector', selector: { matchLabels: { team: 'a' } } } } }] })], services: [service('web', 'app', '10.96.0.10', USE('waypoint', { 'istio.io/use-waypoint-namespace': 'shop' }))] }, 'web', WP],
    ['... allowedRoutes Selector not matching', { namespaces: [ns('shop'), ns('app', { team: 'b' })], gateways: [gateway('waypoint', 'shop', { listeners: [{ ...HBONE_LISTENER, allowedRoutes: { namespaces: { from: 'Selector', selector: { matchExpressions: [{ key: 'team', operator: 'In', values: ['a'] }] } } } }] })], services: [service('web', 'app', '10.96.0.10', USE('waypoint', { 'istio.io/use-waypoint-namespace': 'shop' }))] }, 'web', undefined],
    ['the namespace\'s use-waypoint-namespace', { namespaces: [ns('shop'), ns('app', USE('waypoint', { 'istio.io/use-waypoint-namespace': 'shop' }))], gateways: [gateway('waypoint', 'shop', { listeners: [{ ...HBONE_LISTENER, allowedRoutes: { namespaces: { from: 'All' } } }] })], services: [service('web', 'app', '10.96.0.10')] }, 'web', WP],
    ['the waypoint\'s own service gets none', { namespaces: [ns('shop', USE('waypoint'))], services: [service('waypoint', 'shop', '10.96.0.99', { 'gateway.istio.io/managed': 'istio.io-mesh-controller' }, 15008)] }, 'waypoint', undefined],
  ] as [string, World, string, GatewayAddress | undefined][])('service: %s', (_n, world, name, want) => {
    expect(build(world).svc(name)).toEqual(want);
  });

  const WL = { 'istio.io/waypoint-for': 'workload' };
  it.each([
    ['a pod in a namespace labelled with a service waypoint: none (inherited, not for workloads)', { namespaces: [ns('shop', USE('waypoint'))], pods: [pod('web-0', 'shop', '10.200.1.3')] }, 'web-0', undefined],
    ['a namespace label with a workload waypoint', { namespaces: [ns('shop', USE('waypoint'))], gateways: [gateway('waypoint', 'shop', { labels: WL })], pods: [pod('web-0', 'shop', '10.200.1.3')] }, 'web-0', WP],
    ['a pod label with an `all` waypoint', { gateways: [gateway('waypoint', 'shop', { labels: { 'istio.io/waypoint-for': 'all' } })], pods: [pod('web-0', 'shop', '10.200.1.3', USE('waypoint'))] }, 'web-0', WP],
    ['`none` on the pod opts it out', { namespaces: [ns('shop', USE('waypoint'))], gateways: [gateway('waypoint', 'shop', { labels: WL })], pods: [pod('web-0', 'shop', '10.200.1.3', USE('none'))] }, 'web-0', undefined],
    ['the waypoint\'s own pods get none', { namespaces: [ns('shop', USE('waypoint'))], gateways: [gateway('waypoint', 'shop', { labels: WL })] }, 'waypoint-0', undefined],
  ] as [string, World, string, GatewayAddress | undefined][])('pod: %s', (_n, world, name, want) => {
    expect(build(world).pod(name)).toEqual(want);
  });

  it('with PILOT_AUTO_ALLOW_WAYPOINT_POLICY: an ALLOW for the waypoint\'s service accounts, named by the workloads behind it', () => {
    const slice = { metadata: { namespace: 'shop', labels: { 'kubernetes.io/service-name': 'web' } }, endpoints: [{ targetRef: { kind: 'Pod', uid: 'uid-web-0' } }] };
    const st = buildKubeState([...WAYPOINT_PODS, pod('web-0', 'shop', '10.200.1.3'), pod('other-0', 'shop', '10.200.1.4')] as never,
      [service('web', 'shop', '10.96.0.10', USE('waypoint'))] as never, [slice], [], 'cluster.local',
      { namespaces: [ns('shop')], gateways: [gateway('waypoint', 'shop')], autoAllowWaypointPolicy: true });
    expect(st.authorizations).toEqual([{
      name: 'istio_allow_waypoint_shop_waypoint', namespace: 'shop', scope: 'WorkloadSelector', action: 'Allow', dryRun: false,
      rules: [[[{ principals: [{ Exact: 'cluster.local/ns/shop/sa/waypoint' }] }]]],
    }]);
    expect(st.workloads.find((w) => w.name === 'web-0')!.authorizationPolicies).toEqual(['shop/istio_allow_waypoint_shop_waypoint']);
    expect(st.workloads.find((w) => w.name === 'other-0')!.authorizationPolicies).toBeUndefined();
    // off (istiod's default): none
    expect(build({ services: [service('web', 'shop', '10.96.0.10', USE('waypoint'))] }).st.authorizations).toBeUndefined();
  });

  it('survives malformed lists in Gateways (a manifest directory is untrusted input)', () => {
    const bad = { metadata: { name: 'waypoint', namespace: 'shop' }, spec: { gatewayClassName: 'istio-waypoint', listeners: 'x' }, status: { addresses: 'y' } } as unknown as GatewayObject;
    expect(build({ gateways: [bad], services: [service('web', 'shop', '10.96.0.10', USE('waypoint'))] }).svc('web')).toBeUndefined();
  });
});

describe('waypoints from the Kubernetes API (fake API server, real informers)', () => {
  const api = new FakeApiServer();
  const store = new StateStore();
  let src: KubeStateSource;
  const next = (): Promise<StateSnapshot> => new Promise((r) => store.once('update', r));
  const until = async (f: (s: StateSnapshot) => boolean): Promise<StateSnapshot> => {
    while (!f(store.snapshot)) await next();
    return store.snapshot;
  };

  beforeAll(async () => {
    await api.start();
    api.apply('namespaces', { metadata: { name: 'shop', labels: USE('waypoint') } });
    api.apply('gatewayclasses', { metadata: { name: 'istio-waypoint' } });
    api.apply('gateways', gateway('waypoint', 'shop') as never);
    for (const p of [...WAYPOINT_PODS, pod('web-0', 'shop', '10.200.1.3'), pod('sleep', 'shop', '10.200.1.2')]) api.apply('pods', p as never);
    api.apply('services', service('web', 'shop', '10.96.0.10') as never);
    api.apply('services', { ...service('waypoint', 'shop', '10.96.0.99', { 'gateway.istio.io/managed': 'istio.io-mesh-controller' }, 15008) } as never);
    api.apply('endpointslices', { metadata: { name: 'waypoint-1', namespace: 'shop', labels: { 'kubernetes.io/service-name': 'waypoint' } }, endpoints: [{ targetRef: { kind: 'Pod', uid: 'uid-waypoint-0' } }] } as never);
    const kc = new k8s.KubeConfig();
    kc.loadFromString(api.kubeconfig());
    src = new KubeStateSource(kc, store, 'cluster.local');
    await src.start();
  });
  afterAll(async () => {
    src?.stop();
    await api.stop();
  });

  it('a namespace label routes the service through the waypoint Gateway, and follows label and Gateway changes live', async () => {
    let snap = await until((s) => s.byServiceKey.get('shop/web.shop.svc.cluster.local')?.waypoint !== undefined);
    expect(snap.byServiceKey.get('shop/web.shop.svc.cluster.local')!.waypoint).toEqual(WP);
    expect(buildRoute(snap, { ip: '10.96.0.10', port: 80 }, { source: { identity: 'spiffe://cluster.local/ns/shop/sa/sleep', ip: '10.200.1.2' } })).toMatchObject({
      kind: 'hbone', target: { ip: '10.200.1.9', port: 15008 }, authority: { ip: '10.96.0.10', port: 80 }, identities: ['spiffe://cluster.local/ns/shop/sa/waypoint'], viaWaypoint: true,
    });
    // the service opts out
    api.apply('services', service('web', 'shop', '10.96.0.10', USE('none')) as never);
    snap = await until((s) => s.byServiceKey.get('shop/web.shop.svc.cluster.local')?.waypoint === undefined);
    expect(buildRoute(snap, { ip: '10.96.0.10', port: 80 })).toMatchObject({ kind: 'reject', reason: /no healthy endpoints/ });
    // back in; then the Gateway turns to workload traffic: the service loses it, the pod gains it
    api.apply('services', service('web', 'shop', '10.96.0.10') as never);
    await until((s) => s.byServiceKey.get('shop/web.shop.svc.cluster.local')?.waypoint !== undefined);
    api.apply('gateways', gateway('waypoint', 'shop', { labels: { 'istio.io/waypoint-for': 'workload' } }) as never);
    snap = await until((s) => s.byIp.get('10.200.1.3')?.waypoint !== undefined);
    expect(snap.byServiceKey.get('shop/web.shop.svc.cluster.local')!.waypoint).toBeUndefined();
    expect(buildRoute(snap, { ip: '10.200.1.3', port: 8080 })).toMatchObject({ target: { ip: '10.200.1.9', port: 15008 }, authority: { ip: '10.200.1.3', port: 8080 }, viaWaypoint: true });
    // the Gateway goes away: no waypoint anywhere
    api.delete('gateways', 'shop', 'waypoint');
    snap = await until((s) => s.byIp.get('10.200.1.3')?.waypoint === undefined);
    expect(snap.state.workloads.every((w) => !w.waypoint) && snap.state.services.every((s) => !s.waypoint)).toBe(true);
  });
});
