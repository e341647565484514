/**
 * The delta ADS client against a fake istiod over real gRPC with TLS on loopback, as ztunnel's
 * client behaves against istiod (ztunnel src/xds/client.rs: initial requests, ACK/NACK,
 * run_loop's reconnect; src/xds.rs: the state updates; src/identity/auth.rs: the token;
 * src/xds/metrics.rs: the series).
 */
import { writeFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { status } from '@grpc/grpc-js';
import { ADDRESS_TYPE, AUTHORIZATION_TYPE, T, encodePlain } from '../../ts/xds/proto.js';
import { ipBytes, RECORDED_ADDRESSES, RECORDED_AUTHORIZATIONS } from '../fixtures/istiod/resources.js';
import { metric, rig, until, type Rig } from './harness.js';
import { startFakeIstiod } from '../fixtures/istiod/index.js';
import { addXdsService, type FakeXds } from '../fixtures/istiod/xds.js';

let r: Rig | undefined;
afterEach(async () => {
  await r?.close();
  r = undefined;
});

/** The fake istiod holding the recorded namespace. */
async function recorded(opts = {}): Promise<Rig> {
  r = await rig(opts);
  for (const [name, a] of Object.entries(RECORDED_ADDRESSES)) r.xds.set(ADDRESS_TYPE, name, a);
  for (const [name, a] of Object.entries(RECORDED_AUTHORIZATIONS)) r.xds.set(AUTHORIZATION_TYPE, name, a);
  return r;
}

const WEB = 'Kubernetes//Pod/shop/web-0';
const webWith = (o: object): object => {
  const a = RECORDED_ADDRESSES[WEB] as { workload: object };
  return { workload: { ...a.workload, ...o } };
};

describe('the xDS client against istiod', () => {
  it('subscribes to Address and Authorization with the node ztunnel sends, syncs the recorded namespace, then applies an update and a removal, ACKing each', async () => {
    const { xds } = await recorded();
    const p = r!.proxy();
    p.client.start();
    await until('the first sync', () => p.client.synced && p.wds.published);
    const s = p.store.snapshot;
    expect(s.state.workloads.map((w) => w.uid).sort()).toEqual(['Kubernetes//Pod/shop/sleep-0', WEB]);
    expect(s.byIp.get('10.200.1.3')).toMatchObject({
      name: 'web-0', namespace: 'shop', serviceAccount: 'web', trustDomain: 'cluster.local', protocol: 'HBONE', node: 'node-a',
      services: { 'shop/web.shop.svc.cluster.local': { 80: 8080 } }, authorizationPolicies: ['shop/allow-sleep'],
      canonicalName: 'web', canonicalRevision: 'v1', workloadType: 'deployment', clusterId: 'Kubernetes', locality: { region: 'eu', zone: 'eu-1', subzone: '' }, healthy: true,
    });
    expect(s.byVip.get('10.96.0.10')).toMatchObject({ name: 'web', hostname: 'web.shop.svc.cluster.local', ports: { 80: 8080 } });
    expect(s.endpoints.get('shop/web.shop.svc.cluster.local')?.map((w) => w.name)).toEqual(['web-0']);
    expect(s.state.authorizations).toEqual([{ name: 'allow-sleep', namespace: 'shop', scope: 'WorkloadSelector', action: 'Allow', dryRun: false, rules: [[[{ principals: [{ Exact: 'cluster.local/ns/shop/sa/sleep' }] }]]] }]);

    // the initial requests: one per type, wildcard, with ztunnel's node (src/xds/client.rs Config::node)
    const first = xds.streams[0]!.requests.filter((q) => !q.response_nonce);
    expect(first.map((q) => q.type_url)).toEqual([ADDRESS_TYPE, AUTHORIZATION_TYPE]);
    expect(first[0]!.resource_names_subscribe).toEqual([]);
    expect(first[0]!.node?.id).toBe('ztunnel~10.0.0.9~ztunnel-abc.istio-system~istio-system.svc.cluster.local');
    expect(first[0]!.node?.metadata?.fields).toMatchObject({
      NAME: { string_value: 'ztunnel-abc' }, NAMESPACE: { string_value: 'istio-system' }, INSTANCE_IPS: { string_value: '10.0.0.9' }, NODE_NAME: { string_value: 'node-a' },
    });
    // each initial response was ACKed: nonce, no error_detail
    await until('both ACKs', () => xds.streams[0]!.requests.filter((q) => q.response_nonce).length === 2);
    const acks = xds.streams[0]!.requests.filter((q) => q.response_nonce);
    expect(acks.map((q) => [q.type_url, q.error_detail ?? null])).toEqual([[ADDRESS_TYPE, null], [AUTHORIZATION_TYPE, null]]);

    // an update: web-0 moves to another IP and revision
    const update = xds.set(ADDRESS_TYPE, WEB, webWith({ addresses: [ipBytes('10.200.1.30')], canonical_revision: 'v2' }));
    await until('the update', () => p.store.snapshot.byIp.has('10.200.1.30'));
    expect(p.store.snapshot.byIp.get('10.200.1.3')).toBeUndefined();
    expect(p.store.snapshot.byIp.get('10.200.1.30')?.canonicalRevision).toBe('v2');
    await until('its ACK', () => xds.answers(update).length === 1);
    expect(xds.answers(update)[0]).toMatchObject({ type_url: ADDRESS_TYPE, error_detail: null });

    // a removal: the service goes
    const removal = xds.remove(ADDRESS_TYPE, ['shop/web.shop.svc.cluster.local']);
    await until('the removal', () => !p.store.snapshot.byVip.has('10.96.0.10'));
    await until('its ACK', () => xds.answers(removal).length === 1);
    expect(p.store.snapshot.state.workloads).toHaveLength(2);
  });

  it('NACKs a response with a bad resource, naming it in error_detail, and applies none of it: the last good state stays', async () => {
    const { xds } = await recorded();
    const p = r!.proxy();
    p.client.start();
    await until('the first sync', () => p.wds.published);
    const before = p.store.snapshot;
    // one good update and one resource istiod could never have meant (tunnel protocol 7), in one response
    const bad = xds.setRaw(ADDRESS_TYPE, [
      { name: WEB, version: '', resource: { type_url: ADDRESS_TYPE, value: encodeAddress(webWith({ canonical_revision: 'v9' })) } },
      { name: 'Kubernetes//Pod/shop/odd-0', version: '', resource: { type_url: ADDRESS_TYPE, value: encodeAddress({ workload: { uid: 'Kubernetes//Pod/shop/odd-0', name: 'odd-0', namespace: 'shop', addresses: [ipBytes('10.200.1.9')], tunnel_protocol: 7 } }) } },
    ]);
    await until('the NACK', () => xds.answers(bad).length === 1);
    const nack = xds.answers(bad)[0]!;
    expect(nack.type_url).toBe(ADDRESS_TYPE);
    expect(nack.error_detail?.message).toBe('Kubernetes//Pod/shop/odd-0: workload.tunnel_protocol: 7 is not a value of TunnelProtocol this proxy knows (0, 1): a newer istiod? refused rather than guessed');
    // nothing of the response was applied, not even the good half
    expect(p.store.snapshot).toBe(before);
    expect(p.store.snapshot.byIp.get('10.200.1.3')?.canonicalRevision).toBe('v1');
    expect(p.store.snapshot.byIp.has('10.200.1.9')).toBe(false);
    expect(p.store.health().lastError).toMatchObject({ code: 'INPOD_ERR_XDS_RESOURCE' });

    // bytes that are not an Address at all, and a policy with a string match of no kind (ztunnel would drop it and widen the ALLOW)
    const garbage = xds.setRaw(ADDRESS_TYPE, [{ name: 'junk', version: '', resource: { type_url: ADDRESS_TYPE, value: Buffer.from([0x0a, 0x7f, 0x01]) } }]);
    await until('the NACK of garbage', () => xds.answers(garbage).length === 1);
    expect(xds.answers(garbage)[0]!.error_detail?.message).toMatch(/^junk: decode: /);
    const open = xds.set(AUTHORIZATION_TYPE, 'shop/allow-sleep', { name: 'allow-sleep', namespace: 'shop', scope: 2, action: 0, rules: [{ clauses: [{ matches: [{ principals: [{}] }] }] }] });
    await until('the NACK of the policy', () => xds.answers(open).length === 1);
    expect(xds.answers(open)[0]!.error_detail?.message).toMatch(/^shop\/allow-sleep: authorization\.rules\[0\]\.clauses\[0\]\.matches\[0\]\.principals\[0\]: a string match with no exact/);
    expect(p.store.snapshot).toBe(before);

    // the next good push applies, and clears the error
    const good = xds.set(ADDRESS_TYPE, WEB, webWith({ canonical_revision: 'v3' }));
    await until('the good push', () => p.store.snapshot.byIp.get('10.200.1.3')?.canonicalRevision === 'v3');
    await until('its ACK', () => xds.answers(good).length === 1);
    expect(xds.answers(good)[0]!.error_detail).toBeNull();
    expect(p.store.health().lastError).toBeUndefined();
  });

  it('keeps the state through a dropped stream, reconnects with backoff, resumes with initial_resource_versions and applies what changed meanwhile', async () => {
    const { xds } = await recorded();
    const p = r!.proxy();
    const ends: string[] = [];
    p.client.on('disconnected', (d) => ends.push(d.reason));
    p.client.start();
    await until('the first sync', () => p.wds.published);
    const held = p.store.snapshot;
    const bytes = await metric(p.registry, 'istio_xds_message_bytes_total', { url: ADDRESS_TYPE });

    xds.drop(status.UNAVAILABLE, 'istiod restarting');
    await until('the client to see the drop', () => ends.length === 1);
    expect(ends).toEqual(['Error']);
    // while it is away the proxy serves what it had
    expect(p.store.snapshot).toBe(held);
    // ... and istiod changes meanwhile: sleep-0 is deleted (no stream to tell)
    xds.remove(ADDRESS_TYPE, ['Kubernetes//Pod/shop/sleep-0']);

    await until('the reconnect', () => xds.openStreams.length === 1 && xds.streams.length === 2);
    await until('the removal applied', () => !p.store.snapshot.byIp.has('10.200.1.2'));
    const again = xds.streams[1]!.requests.filter((q) => !q.response_nonce);
    expect(again.map((q) => q.type_url)).toEqual([ADDRESS_TYPE, AUTHORIZATION_TYPE]);
    expect(Object.keys(again[0]!.initial_resource_versions ?? {}).sort()).toEqual(['Kubernetes//Pod/shop/sleep-0', WEB, 'shop/web.shop.svc.cluster.local'].sort());
    expect(Object.keys(again[1]!.initial_resource_versions ?? {})).toEqual(['shop/allow-sleep']);
    // web-0 was not sent again (istiod skips what the client retained at the same version): it is the kept state
    expect(await metric(p.registry, 'istio_xds_message_bytes_total', { url: ADDRESS_TYPE })).toBe(bytes);
    expect(p.store.snapshot.byIp.get('10.200.1.3')?.name).toBe('web-0');
    expect(await metric(p.registry, 'istio_xds_connection_terminations_total', { reason: 'Error' })).toBe(1);
  });

  it('rides out an istiod restart: while the server is gone the state is kept and attempts back off; once it is back on its address, the state is resynced', async () => {
    const { istiod } = await recorded();
    const p = r!.proxy();
    const ends: string[] = [];
    p.client.on('disconnected', (d) => ends.push(d.reason));
    p.client.start();
    await until('the first sync', () => p.wds.published);
    const held = p.store.snapshot;
    istiod.server.forceShutdown();
    await until('two failed attempts after the loss', () => ends.filter((e) => e === 'ConnectionError').length >= 2);
    expect(p.store.snapshot).toBe(held);
    expect(p.client.connected).toBe(false);
    // istiod comes back, same address and root, and sleep-0 is gone meanwhile
    let xds2!: FakeXds;
    const back = await startFakeIstiod({ services: [(s) => void (xds2 = addXdsService(s))], port: istiod.port, root: istiod.root });
    try {
      for (const [name, a] of Object.entries(RECORDED_ADDRESSES)) if (name !== 'Kubernetes//Pod/shop/sleep-0') xds2.set(ADDRESS_TYPE, name, a);
      for (const [name, a] of Object.entries(RECORDED_AUTHORIZATIONS)) xds2.set(AUTHORIZATION_TYPE, name, a);
      await until('the resync', () => p.client.connected && !p.store.snapshot.byIp.has('10.200.1.2'), 20_000);
      expect(p.store.snapshot.byIp.get('10.200.1.3')?.name).toBe('web-0');
      expect(Object.keys(xds2.streams[0]!.requests[0]!.initial_resource_versions ?? {})).toContain('Kubernetes//Pod/shop/sleep-0');
    } finally {
      await back.close();
    }
  });

  it('sends the projected token as ztunnel does (authorization: Bearer, clusterid), read from the file again on every connect', async () => {
    const { xds } = await recorded({ requireToken: true });
    const p = r!.proxy({ token: 'first-token' });
    p.client.start();
    await until('the first sync', () => p.wds.published);
    expect(xds.streams[0]!.metadata).toMatchObject({ authorization: 'Bearer first-token', clusterid: 'Kubernetes' });
    writeFileSync(p.tokenFile, 'rotated-token\n'); // kubelet rotates the projected token
    xds.drop();
    await until('the reconnect', () => xds.openStreams.length === 1);
    expect(xds.streams[1]!.metadata).toMatchObject({ authorization: 'Bearer rotated-token', clusterid: 'Kubernetes' });
  });

  it('is refused by an istiod that wants a token when it has none, and keeps retrying with a growing backoff', async () => {
    await recorded({ requireToken: true });
    const p = r!.proxy({ tokenFile: undefined });
    const waits: number[] = [];
    p.client.on('disconnected', (d) => waits.push(d.retryInMs));
    p.client.start();
    await until('three refusals', () => waits.length >= 3);
    expect(p.client.synced).toBe(false);
    expect(p.store.snapshot.state.workloads).toEqual([]);
    expect(waits.slice(0, 3)).toEqual([20, 40, 80]); // run_loop: 10 ms doubled per failure (up to 15 s)
    expect(r!.xds.streams[0]!.metadata.authorization).toBeUndefined();
  });

  it("moves ztunnel's istio_xds_* series: messages and their bytes by type URL, terminations by reason", async () => {
    const { xds } = await recorded();
    const p = r!.proxy();
    p.client.start();
    await until('the first sync', () => p.wds.published);
    expect(await metric(p.registry, 'istio_xds_message_total', { url: ADDRESS_TYPE })).toBe(1);
    expect(await metric(p.registry, 'istio_xds_message_total', { url: AUTHORIZATION_TYPE })).toBe(1);
    const bytes = Object.values(RECORDED_ADDRESSES).reduce((n, a) => n + encodeAddress(a).length, 0);
    expect(await metric(p.registry, 'istio_xds_message_bytes_total', { url: ADDRESS_TYPE })).toBe(bytes);
    xds.set(ADDRESS_TYPE, WEB, webWith({ canonical_revision: 'v2' }));
    await until('the update', () => p.store.snapshot.byIp.get('10.200.1.3')?.canonicalRevision === 'v2');
    expect(await metric(p.registry, 'istio_xds_message_total', { url: ADDRESS_TYPE })).toBe(2);
    xds.drop(status.CANCELLED, 'closing');
    await until('the reconnect', () => xds.streams.length === 2 && p.client.connected);
    expect(await metric(p.registry, 'istio_xds_connection_terminations_total', { reason: 'Reconnect' })).toBe(1);
    const text = await p.registry.metrics();
    expect(text).toContain(`istio_xds_message_total{url="${ADDRESS_TYPE}"}`);
    expect(text).toContain('# HELP istio_xds_connection_terminations_total The total number of completed connections to xds server (unstable)');
  });
});

function encodeAddress(a: object): Buffer {
  return encodePlain(T.address, a);
}
