/**
 * Attacks on the proxy's xDS side (ts/xds): a control plane it should not trust, and resources
 * made to be read as something looser than they say. Each test names what it tried and what
 * the proxy did. Real gRPC with TLS on loopback, against the fake istiod (test/fixtures/istiod).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { PolicyAuthorizer } from '../../ts/policy/authorizer.js';
import type { ConnContext } from '../../ts/proxy/hooks.js';
import { ADDRESS_TYPE, AUTHORIZATION_TYPE, T, encodePlain } from '../../ts/xds/proto.js';
import { RECORDED_ADDRESSES, RECORDED_AUTHORIZATIONS } from '../fixtures/istiod/resources.js';
import { metric, rig, silent, until, type Rig } from '../xds/harness.js';

const rigs: Rig[] = [];
afterEach(async () => {
  for (const r of rigs.splice(0)) await r.close();
});

async function recorded(): Promise<Rig> {
  const r = await rig();
  rigs.push(r);
  for (const [name, a] of Object.entries(RECORDED_ADDRESSES)) r.xds.set(ADDRESS_TYPE, name, a);
  for (const [name, a] of Object.entries(RECORDED_AUTHORIZATIONS)) r.xds.set(AUTHORIZATION_TYPE, name, a);
  return r;
}

const to = (dst: string, sa: string, port = 8080): ConnContext => ({
  direction: 'inbound', transport: 'hbone', src: { ip: '10.200.9.9', port: 40000, identity: `spiffe://cluster.local/ns/other/sa/${sa}` },
  dst: { ip: dst, port }, pod: { uid: 'u', name: 'p', namespace: 'shop' },
});

describe('xDS attacks', () => {
  it("impersonates istiod with a certificate of another root: the proxy never opens the stream, applies nothing, and keeps retrying", async () => {
    const real = await recorded();
    const fake = await recorded(); // serves the same resources, under its own root
    const p = real.proxy({ address: fake.istiod.address }); // the proxy trusts the real root only
    const ends: string[] = [];
    p.client.on('disconnected', (d) => ends.push(d.reason));
    p.client.start();
    await until('two refused attempts', () => ends.length >= 2);
    expect(ends.every((e) => e === 'ConnectionError')).toBe(true);
    expect(fake.xds.streams).toHaveLength(0); // the TLS handshake failed: no request reached it
    expect(p.store.snapshot.state.workloads).toEqual([]);
    expect(await metric(p.registry, 'istio_xds_connection_terminations_total', { reason: 'ConnectionError' })).toBeGreaterThanOrEqual(2);
  });

  it("answers as istiod at an address its certificate does not name (a certificate for another host, same root): refused, unless that name is what --alt-xds-hostname says istiod is", async () => {
    const r = await rig({ hosts: ['istiod.istio-system.svc'] }); // reached as localhost:port
    rigs.push(r);
    const p = r.proxy();
    const ends: string[] = [];
    p.client.on('disconnected', (d) => ends.push(d.reason));
    p.client.start();
    await until('two refused attempts', () => ends.length >= 2);
    expect(ends.slice(0, 2)).toEqual(['ConnectionError', 'ConnectionError']);
    expect(r.xds.streams).toHaveLength(0);
    p.client.stop();
    const q = r.proxy({ altHostname: 'istiod.istio-system.svc' });
    q.client.start();
    await until('the sync', () => q.client.synced);
    expect(r.xds.streams).toHaveLength(1);
  });

  it('pushes an update of a DENY whose only match is a string match of no kind (read as ztunnel reads it, the DENY would deny nothing): NACKed, the DENY still denies', async () => {
    const r = await recorded();
    const deny = (principals: object[]) => ({ name: 'deny-other', namespace: 'shop', scope: 1, action: 1, rules: [{ clauses: [{ matches: [{ not_principals: principals }] }] }] });
    r.xds.set(AUTHORIZATION_TYPE, 'shop/deny-other', deny([{ prefix: 'cluster.local/ns/shop/' }]));
    const p = r.proxy();
    const authz = new PolicyAuthorizer(p.store, silent);
    p.client.start();
    await until('the first sync', () => p.wds.published);
    expect(authz.authorize(to('10.200.1.2', 'intruder'))).toMatchObject({ allow: false, reason: 'denied by shop/deny-other' });
    const nonce = r.xds.set(AUTHORIZATION_TYPE, 'shop/deny-other', deny([{}]));
    await until('the NACK', () => r.xds.answers(nonce).length === 1);
    expect(r.xds.answers(nonce)[0]!.error_detail?.message).toMatch(/^shop\/deny-other: .*not_principals\[0\]: a string match with no exact, prefix, suffix or presence/);
    expect(authz.authorize(to('10.200.1.2', 'intruder'))).toMatchObject({ allow: false, reason: 'denied by shop/deny-other' });
  });

  it('smuggles a bare Authorization into an Address response, to be decoded as a workload: refused by its type, nothing applied', async () => {
    const r = await recorded();
    const p = r.proxy();
    p.client.start();
    await until('the first sync', () => p.wds.published);
    const before = p.store.snapshot;
    const nonce = r.xds.setRaw(ADDRESS_TYPE, [{ name: 'shop/allow-all', version: '', resource: { type_url: AUTHORIZATION_TYPE, value: encodePlain(T.authorization, { name: 'allow-all', namespace: 'shop' }) } }]);
    await until('the NACK', () => r.xds.answers(nonce).length === 1);
    expect(r.xds.answers(nonce)[0]!.error_detail?.message).toBe(`shop/allow-all: holds a ${AUTHORIZATION_TYPE}, in a response of ${ADDRESS_TYPE}`);
    expect(p.store.snapshot).toBe(before);
  });

  it('names an AUDIT action (2) to have a policy enforced as something else: NACKed; the ALLOW in place keeps its meaning', async () => {
    const r = await recorded();
    const p = r.proxy();
    const authz = new PolicyAuthorizer(p.store, silent);
    p.client.start();
    await until('the first sync', () => p.wds.published);
    const nonce = r.xds.set(AUTHORIZATION_TYPE, 'shop/allow-sleep', { name: 'allow-sleep', namespace: 'shop', scope: 2, action: 2, rules: [] });
    await until('the NACK', () => r.xds.answers(nonce).length === 1);
    expect(r.xds.answers(nonce)[0]!.error_detail?.message).toMatch(/^shop\/allow-sleep: authorization\.action: 2 is not a value of Action/);
    expect(authz.authorize({ ...to('10.200.1.3', 'intruder'), pod: { uid: 'Kubernetes//Pod/shop/web-0', name: 'web-0', namespace: 'shop' } }).allow).toBe(false);
  });
});
