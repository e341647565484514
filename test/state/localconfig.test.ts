import { mkdtempSync, readFileSync, rmSync, writeFileSync, renameSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseLocalConfig } from '../../ts/state/localconfig.js';
import { StateStore } from '../../ts/state/store.js';
import { buildRoute } from '../../ts/proxy/route.js';
import { until } from '../netns/lab.js';

const CONFIG = `
workloads:
  - uid: cluster1//v1/Pod/default/client
    name: client
    namespace: default
    serviceAccount: sleep
    workloadIps: ["10.200.1.2"]
    protocol: HBONE
    node: node1
  - name: server-a
    namespace: shop
    serviceAccount: web
    workloadIps: ["10.200.1.3"]
    protocol: HBONE
    services:
      "shop/web.shop.svc.cluster.local":
        80: 8080
  - name: server-b
    namespace: shop
    serviceAccount: web
    workloadIps: ["10.200.1.4"]
    protocol: HBONE
    services:
      "shop/web.shop.svc.cluster.local": {}
  - name: legacy
    namespace: default
    workloadIps: ["10.200.1.5"]
    protocol: TCP
  - name: behind-waypoint
    namespace: shop
    workloadIps: ["10.200.1.6"]
    protocol: HBONE
    waypoint:
      destination: "/10.200.1.9"
      hboneMtlsPort: 15008
  - name: waypoint
    namespace: shop
    serviceAccount: waypoint
    workloadIps: ["10.200.1.9"]
    protocol: HBONE
services:
  - name: web
    namespace: shop
    hostname: web.shop.svc.cluster.local
    vips: ["/10.96.0.10"]
    ports:
      80: 8080
    subjectAltNames: ["spiffe://cluster.local/ns/shop/sa/web-alt"]
policies: []
`;

describe('local config', () => {
  it('accepts the ztunnel local-config format', () => {
    const s = parseLocalConfig(CONFIG);
    expect(s.workloads).toHaveLength(6);
    expect(s.workloads[0]).toMatchObject({ uid: 'cluster1//v1/Pod/default/client', serviceAccount: 'sleep', trustDomain: 'cluster.local', protocol: 'HBONE' });
    // ztunnel's defaults (workload.rs Workload): uid and network empty, TCP
    expect(s.workloads[3]).toMatchObject({ serviceAccount: 'default', protocol: 'TCP', uid: '', network: '' });
    expect(s.workloads[4]!.waypoint).toEqual({ address: '10.200.1.9', network: '', hboneMtlsPort: 15008 });
    expect(s.services[0]).toMatchObject({ vips: [{ network: '', address: '10.96.0.10' }], ports: { 80: 8080 } });
    expect(s.authorizations).toEqual([]);
  });

  it.each([
    ['workloads:\n  - name: x\n    namespace: y\n', /workloads\[0\]\.workloadIps: missing: this field is required/],
    ['workloads:\n  - name: x\n    namespace: y\n    workloadIps: ["10.0.0.300"]\n', /workloads\[0\]\.workloadIps\[0\]: expected an IP address/],
    ['workloads:\n  - name: x\n    namespace: y\n    workloadIps: ["10.0.0.1"]\n    protocol: QUIC\n', /workloads\[0\]\.protocol: expected one of TCP, HBONE, got "QUIC"/],
    ['services:\n  - name: s\n    namespace: n\n    hostname: h\n    vips: []\n    ports:\n      80: 99999\n', /services\[0\]\.ports\.80: expected a whole number from 0 to 65535/],
    ['services:\n  - name: s\n    namespace: n\n    hostname: h\n    vips: ["10.0.0.1"]\n    ports: {}\n', /services\[0\]\.vips\[0\]: expected "network\/ip"/],
    ['workloads: {a: 1}\n', /workloads: expected a list/],
    ['workloads: [\n', /not valid YAML/],
    ['- {name: a, namespace: b, workloadIps: []}\n', /config: expected a mapping with workloads, services and policies/],
  ])('names the broken field: %#', (text, message) => {
    expect(() => parseLocalConfig(text)).toThrow(message);
  });
});

/** ztunnel's own example, copied verbatim (vendor/istio/ztunnel/README.md names the commit). */
const LOCALHOST = readFileSync(new URL('../../vendor/istio/ztunnel/examples/localhost.yaml', import.meta.url), 'utf8');

describe("local config as ztunnel reads it (src/xds.rs LocalConfig, src/state/workload.rs, src/state/service.rs, src/rbac.rs)", () => {
  it("loads ztunnel's examples/localhost.yaml as it is: both workloads, both services, its policy in ztunnel's form", () => {
    // before: "workloads[0].network: expected a non-empty string, got """
    const s = parseLocalConfig(LOCALHOST, 'localhost.yaml');
    expect(s.workloads.map((w) => [w.uid, w.name, w.workloadIps, w.protocol, w.network, w.node])).toEqual([
      ['cluster1//v1/Pod/default/local', 'local', ['127.0.0.1'], 'HBONE', '', 'local'],
      ['cluster1//v1/Pod/default/local-tcp', 'local-tcp', ['127.0.0.2'], 'TCP', '', 'local'],
    ]);
    expect(s.workloads[0]!.services).toEqual({ 'default/example.com': { 80: 8080 }, 'default/example2.com': { 80: 8080 } });
    expect(s.services.map((x) => [x.name, x.hostname, x.vips, x.canonical])).toEqual([
      ['local', 'example.com', [{ network: '', address: '127.10.0.1' }], true],
      ['remote', 'example2.com', [{ network: 'remote', address: '127.10.0.2' }], true],
    ]);
    expect(s.policies).toEqual([]);
    expect(s.authorizations).toEqual([
      { name: 'deny-9999', namespace: 'default', scope: 'Namespace', action: 'Allow', dryRun: false, rules: [[[{ notDestinationPorts: [9999] }]]] },
    ]);
  });

  it('keeps the network of a vip written network/ip (workload.rs NetworkAddress: split at the first slash)', () => {
    // before, "remote/127.10.0.2" became "127.10.0.2": the network was lost
    const s = parseLocalConfig('services:\n  - {name: r, namespace: n, hostname: h, vips: ["remote/127.10.0.2", "/10.0.0.1"], ports: {80: 8080}}\n');
    expect(s.services[0]!.vips).toEqual([{ network: 'remote', address: '127.10.0.2' }, { network: '', address: '10.0.0.1' }]);
  });

  it('accepts a workload without a name, as ztunnel (workload.rs Workload: name has a serde default)', () => {
    // before: "workloads[0].name: required string is missing"
    const s = parseLocalConfig('workloads:\n  - {namespace: n, workloadIps: ["10.0.0.1"]}\n');
    expect(s.workloads[0]).toMatchObject({ name: '', uid: '', namespace: 'n', workloadIps: ['10.0.0.1'] });
  });

  it("keeps every field of ztunnel's Workload and Service in the state, under ztunnel's names", () => {
    // before, workloadName, canonicalName, clusterId, locality, networkMode... were dropped
    const s = parseLocalConfig(`
workloads:
  - uid: u1
    name: web-7d9-abc
    namespace: shop
    serviceAccount: web
    trustDomain: td.example
    workloadIps: ["10.0.0.1", "fd00::1"]
    protocol: HBONE
    networkMode: HostNetwork
    network: net1
    node: n1
    hostname: web.example
    workloadName: web
    workloadType: deployment
    canonicalName: web-svc
    canonicalRevision: v2
    clusterId: c1
    locality: {region: r, zone: z, subzone: sz}
    nativeTunnel: true
    applicationTunnel: {protocol: PROXY, port: 15088}
    authorizationPolicies: [shop/only-a]
    status: Unhealthy
    capacity: 3
    waypoint: {destination: "shop/waypoint.shop.svc.cluster.local", hboneMtlsPort: 15008}
    networkGateway: {destination: "net1/10.9.9.9", hboneMtlsPort: 15009}
    services: {"shop/web.shop.svc.cluster.local": {80: 8080}}
services:
  - name: web
    namespace: shop
    hostname: web.shop.svc.cluster.local
    vips: ["net1/10.96.0.1"]
    cidrVips: [{network: net1, cidr: 10.97.0.0/24}]
    ports: {80: 8080}
    endpoints: {u1: {workloadUid: u1, port: {80: 8080}, status: Healthy}}
    subjectAltNames: [spiffe://td.example/ns/shop/sa/web]
    waypoint: {destination: "/10.0.0.9", hboneMtlsPort: 15008}
    weightedWaypoints: [{destination: {destination: "/10.0.0.9", hboneMtlsPort: 15008}, weight: 90}]
    loadBalancer: {routingPreferences: [Zone, Node], mode: Failover, healthPolicy: AllowAll}
    ipFamilies: Dual
    canonical: true
    visibility: Namespace
`);
    expect(s.workloads[0]).toEqual({
      uid: 'u1', name: 'web-7d9-abc', namespace: 'shop', serviceAccount: 'web', trustDomain: 'td.example', workloadIps: ['10.0.0.1', 'fd00::1'],
      protocol: 'HBONE', networkMode: 'HostNetwork', network: 'net1', node: 'n1', hostname: 'web.example', workloadName: 'web', workloadType: 'deployment',
      canonicalName: 'web-svc', canonicalRevision: 'v2', clusterId: 'c1', locality: { region: 'r', zone: 'z', subzone: 'sz' }, nativeTunnel: true,
      applicationTunnel: { protocol: 'PROXY', port: 15088 }, authorizationPolicies: ['shop/only-a'], healthy: false, capacity: 3,
      waypoint: { address: '', network: '', hostname: { namespace: 'shop', hostname: 'waypoint.shop.svc.cluster.local' }, hboneMtlsPort: 15008 },
      networkGateway: { address: '10.9.9.9', network: 'net1', hboneMtlsPort: 15009 },
      services: { 'shop/web.shop.svc.cluster.local': { 80: 8080 } }, labels: {},
    });
    expect(s.services[0]).toEqual({
      name: 'web', namespace: 'shop', hostname: 'web.shop.svc.cluster.local', vips: [{ network: 'net1', address: '10.96.0.1' }],
      cidrVips: [{ network: 'net1', cidr: '10.97.0.0/24' }], ports: { 80: 8080 }, endpoints: { u1: { workloadUid: 'u1', port: { 80: 8080 }, status: 'Healthy' } },
      subjectAltNames: ['spiffe://td.example/ns/shop/sa/web'], waypoint: { address: '10.0.0.9', network: '', hboneMtlsPort: 15008 },
      weightedWaypoints: [{ destination: { address: '10.0.0.9', network: '', hboneMtlsPort: 15008 }, weight: 90 }],
      loadBalancer: { routingPreferences: ['Zone', 'Node'], mode: 'Failover', healthPolicy: 'AllowAll' }, ipFamilies: 'Dual', canonical: true, visibility: 'Namespace',
    });
  });

  it.each([
    ['a top-level key', 'workload: []\n', /^config\.workload: unknown field: ztunnel refuses it too; the local config has workloads, policies, services/],
    ['a workload field (inpod once took labels)', 'workloads:\n  - {namespace: n, workloadIps: [], labels: {app: web}}\n', /^workloads\[0\]\.labels: unknown field/],
    ['the singular workloadIp', 'workloads:\n  - {namespace: n, workloadIp: 10.0.0.1}\n', /^workloads\[0\]\.workloadIp: unknown field/],
    ['a service field', 'services:\n  - {name: s, namespace: n, hostname: h, vips: [], ports: {}, vip: x}\n', /^services\[0\]\.vip: unknown field/],
    ['a gateway address field', 'workloads:\n  - {namespace: n, workloadIps: [], waypoint: {address: "/10.0.0.9", hboneMtlsPort: 15008}}\n', /^workloads\[0\]\.waypoint\.address: unknown field/],
    ['a policy field', 'policies:\n  - {name: p, namespace: n, scope: Namespace, action: Allow, rules: [], dryRun: false, selector: {}}\n', /^policies\[0\]\.selector: unknown field/],
  ])('refuses an unknown field as serde deny_unknown_fields does: %s', (_name, text, message) => {
    // before, each was accepted and ignored
    expect(() => parseLocalConfig(text)).toThrow(message);
  });

  it('requires what ztunnel requires: a workload\'s namespace and workloadIps, a gateway\'s hboneMtlsPort, every field of a policy', () => {
    expect(() => parseLocalConfig('workloads:\n  - {workloadIps: []}\n')).toThrow(/workloads\[0\]\.namespace: missing/);
    expect(() => parseLocalConfig('workloads:\n  - {namespace: n, workloadIps: [], waypoint: {destination: "/10.0.0.9"}}\n')).toThrow(/waypoint\.hboneMtlsPort: missing/);
    expect(() => parseLocalConfig('policies:\n  - {name: p, namespace: n, scope: Namespace, action: Allow, rules: []}\n')).toThrow(/policies\[0\]\.dryRun: missing/);
    // the one exception: a workload's services map (ztunnel requires it, inpod configs never wrote it)
    expect(parseLocalConfig('workloads:\n  - {namespace: n, workloadIps: []}\n').workloads[0]!.services).toEqual({});
  });

  it("refuses an Istio AuthorizationPolicy in policies: ztunnel's local config takes only its own Authorization", () => {
    // before, Istio's shape was accepted and translated; ztunnel refuses it (unknown field spec)
    expect(() => parseLocalConfig('policies:\n  - {name: p, namespace: shop, spec: {action: ALLOW}}\n')).toThrow(
      /policies\[0\]: an Istio AuthorizationPolicy \(metadata\/spec\) is not ztunnel's local-config form.*--kubeconfig, --manifests/,
    );
  });
});

describe('routing decision', () => {
  const store = new StateStore();
  store.set(parseLocalConfig(CONFIG));
  const snap = store.snapshot;

  it('tunnels to a mesh workload over HBONE, verifying its identity', () => {
    expect(buildRoute(snap, { ip: '10.200.1.3', port: 8080 })).toMatchObject({
      kind: 'hbone',
      target: { ip: '10.200.1.3', port: 15008 },
      authority: { ip: '10.200.1.3', port: 8080 },
      identities: ['spiffe://cluster.local/ns/shop/sa/web'],
    });
  });

  it('balances a service VIP over its endpoints and maps the port', () => {
    const a = buildRoute(snap, { ip: '10.96.0.10', port: 80 }, { pick: () => 0 });
    const b = buildRoute(snap, { ip: '10.96.0.10', port: 80 }, { pick: () => 1 });
    expect(a).toMatchObject({ kind: 'hbone', authority: { ip: '10.200.1.3', port: 8080 } });
    expect(b).toMatchObject({ kind: 'hbone', authority: { ip: '10.200.1.4', port: 8080 } });
    expect(a.kind === 'hbone' && a.identities).toContain('spiffe://cluster.local/ns/shop/sa/web-alt');
    expect(buildRoute(snap, { ip: '10.96.0.10', port: 443 })).toMatchObject({ kind: 'reject', reason: expect.stringMatching(/no port 443/) });
  });

  it('sends plain TCP workloads and unknown addresses through as passthrough', () => {
    expect(buildRoute(snap, { ip: '10.200.1.5', port: 5432 })).toMatchObject({ kind: 'passthrough', target: { ip: '10.200.1.5', port: 5432 } });
    expect(buildRoute(snap, { ip: '192.0.2.7', port: 443 })).toEqual({ kind: 'passthrough', target: { ip: '192.0.2.7', port: 443 } });
  });

  it('tunnels to the waypoint with the final destination as authority', () => {
    expect(buildRoute(snap, { ip: '10.200.1.6', port: 9000 })).toMatchObject({
      kind: 'hbone',
      target: { ip: '10.200.1.9', port: 15008 },
      authority: { ip: '10.200.1.6', port: 9000 },
      identities: ['spiffe://cluster.local/ns/shop/sa/waypoint'],
      viaWaypoint: true,
    });
  });
});

describe('hot reload', () => {
  const dir = mkdtempSync(join(tmpdir(), 'inpod-cfg-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('picks up a changed file, and keeps the last good state when the new one is broken', async () => {
    const file = join(dir, 'config.yaml');
    writeFileSync(file, CONFIG);
    const store = new StateStore();
    store.watchFile(file, 20);
    expect(store.snapshot.byIp.size).toBe(6);
    const updated = new Promise((r) => store.once('update', r));
    writeFileSync(`${file}.tmp`, CONFIG.replace('10.200.1.5', '10.200.1.55'));
    renameSync(`${file}.tmp`, file);
    await updated;
    expect(store.snapshot.byIp.has('10.200.1.55')).toBe(true);
    const failed = new Promise<Error>((r) => store.once('error', r));
    writeFileSync(file, 'workloads:\n  - name: x\n    workloadIps: ["10.0.0.1"]\n');
    expect((await failed).message).toMatch(/workloads\[0\]\.namespace: missing: this field is required/);
    expect(store.snapshot.byIp.has('10.200.1.55')).toBe(true);
    store.close();
  });

  it('refuses an empty file at reload as empty (never "no workloads"), keeps the state, and health() says why', async () => {
    const file = join(dir, 'empty.yaml');
    writeFileSync(file, CONFIG);
    const store = new StateStore();
    store.watchFile(file, 20);
    const failed = new Promise<Error>((r) => store.once('error', r));
    writeFileSync(file, '# emptied\n');
    expect((await failed).message).toBe(`${file}: the file is empty (still being written?); to remove every workload write "workloads: []"`);
    expect(store.snapshot.byIp.size).toBe(6);
    expect(store.health()).toMatchObject({ source: file, loading: false, workloads: 6, lastError: { code: 'INPOD_ERR_CONFIG', message: expect.stringMatching(/the file is empty/) } });
    const cleared = new Promise((r) => store.once('update', r));
    writeFileSync(file, 'workloads: []\n');
    await cleared;
    expect(store.snapshot.byIp.size).toBe(0);
    expect(store.health().lastError).toBeUndefined();
    store.close();
  });

  it('reads a file changed during a reload once that reload ends: the last write wins', async () => {
    const file = join(dir, 'twice.yaml');
    writeFileSync(file, CONFIG);
    const store = new StateStore();
    store.watchFile(file, 1);
    const updates: number[] = [];
    store.on('update', (s) => updates.push(s.byIp.size));
    writeFileSync(file, 'workloads: []\n');
    await until('the store to report loading', () => store.health().loading, { intervalMs: 5 }); // a brief state: look often
    writeFileSync(file, CONFIG.replace('10.200.1.5', '10.200.1.55'));
    await until('the reloaded workload', () => store.snapshot.byIp.has('10.200.1.55'));
    expect(updates.at(-1)).toBe(6);
    store.close();
  });

  it('accepts an empty file at start as no workloads (there is no last good state to keep)', () => {
    const file = join(dir, 'start-empty.yaml');
    writeFileSync(file, '');
    const store = new StateStore();
    store.watchFile(file);
    expect(store.snapshot.state.workloads).toEqual([]);
    store.close();
  });
});
