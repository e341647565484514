import { mkdtempSync, rmSync, writeFileSync, renameSync } from 'node:fs';
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
    expect(s.workloads[3]).toMatchObject({ serviceAccount: 'default', protocol: 'TCP', uid: 'default/legacy' });
    expect(s.workloads[4]!.waypoint).toEqual({ address: '10.200.1.9', hboneMtlsPort: 15008 });
    expect(s.services[0]).toMatchObject({ vips: ['10.96.0.10'], ports: { 80: 8080 } });
  });

  it.each([
    ['workloads:\n  - name: x\n    namespace: y\n', /workloads\[0\]\.workloadIps: expected a non-empty list/],
    ['workloads:\n  - name: x\n    namespace: y\n    workloadIps: ["10.0.0.300"]\n', /workloads\[0\]\.workloadIps\[0\]: expected an IP address/],
    ['workloads:\n  - name: x\n    namespace: y\n    workloadIps: ["10.0.0.1"]\n    protocol: QUIC\n', /workloads\[0\]\.protocol: expected HBONE or TCP/],
    ['services:\n  - name: s\n    namespace: n\n    hostname: h\n    ports:\n      80: 99999\n', /services\[0\]\.ports\.80: expected a port number/],
    ['workloads: {a: 1}\n', /config\.workloads: expected a list/],
    ['workloads: [\n', /not valid YAML/],
  ])('names the broken field: %#', (text, message) => {
    expect(() => parseLocalConfig(text)).toThrow(message);
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
    const a = buildRoute(snap, { ip: '10.96.0.10', port: 80 }, () => 0);
    const b = buildRoute(snap, { ip: '10.96.0.10', port: 80 }, () => 1);
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
    expect((await failed).message).toMatch(/workloads\[0\]\.namespace: required string is missing/);
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
