/**
 * Policies pushed live by istiod decide the proxy's next connections: the authorizer reads the
 * store the xDS client feeds (ztunnel src/xds.rs insert_authorization / remove_authorization,
 * src/state.rs assert_rbac), over real gRPC with TLS.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { PolicyAuthorizer } from '../../ts/policy/authorizer.js';
import type { ConnContext } from '../../ts/proxy/hooks.js';
import { ADDRESS_TYPE, AUTHORIZATION_TYPE } from '../../ts/xds/proto.js';
import { RECORDED_ADDRESSES, RECORDED_AUTHORIZATIONS } from '../fixtures/istiod/resources.js';
import { rig, silent, until, type Rig } from './harness.js';

let r: Rig | undefined;
afterEach(async () => {
  await r?.close();
  r = undefined;
});

/** An HBONE connection to web-0 (10.200.1.3:8080) from `sa` of namespace shop. */
const toWeb = (sa: string, port = 8080): ConnContext => ({
  direction: 'inbound', transport: 'hbone', src: { ip: '10.200.1.2', port: 40000, identity: `spiffe://cluster.local/ns/shop/sa/${sa}` },
  dst: { ip: '10.200.1.3', port }, pod: { uid: 'Kubernetes//Pod/shop/web-0', name: 'web-0', namespace: 'shop' },
});

describe('policies from istiod', () => {
  it('decide the next connections as soon as they are pushed, and stop deciding them once removed', async () => {
    r = await rig();
    for (const [name, a] of Object.entries(RECORDED_ADDRESSES)) r.xds.set(ADDRESS_TYPE, name, a);
    for (const [name, a] of Object.entries(RECORDED_AUTHORIZATIONS)) r.xds.set(AUTHORIZATION_TYPE, name, a);
    const p = r.proxy();
    const authz = new PolicyAuthorizer(p.store, silent);
    p.client.start();
    await until('the first sync', () => p.wds.published);
    // the recorded WorkloadSelector ALLOW, named by web-0: only sleep gets in
    expect(authz.authorize(toWeb('sleep'))).toEqual({ allow: true, reason: 'allowed by shop/allow-sleep' });
    expect(authz.authorize(toWeb('intruder')).allow).toBe(false);

    // istiod pushes a namespace DENY of port 8080 for sleep: its next connection is refused
    r.xds.set(AUTHORIZATION_TYPE, 'shop/deny-8080', {
      name: 'deny-8080', namespace: 'shop', scope: 1, action: 1,
      rules: [{ clauses: [{ matches: [{ principals: [{ exact: 'cluster.local/ns/shop/sa/sleep' }] }] }, { matches: [{ destination_ports: [8080] }] }] }],
    });
    await until('the DENY to arrive', () => (p.store.snapshot.state.authorizations ?? []).length === 2);
    expect(authz.authorize(toWeb('sleep'))).toEqual({ allow: false, reason: 'denied by shop/deny-8080' });
    expect(authz.authorize(toWeb('sleep', 9090)).allow).toBe(true);

    // and removed: allowed again
    r.xds.remove(AUTHORIZATION_TYPE, ['shop/deny-8080']);
    await until('the DENY to go', () => (p.store.snapshot.state.authorizations ?? []).length === 1);
    expect(authz.authorize(toWeb('sleep')).allow).toBe(true);
  });

  it('keep enforcing the last good policy when istiod pushes one the proxy cannot read', async () => {
    r = await rig();
    for (const [name, a] of Object.entries(RECORDED_ADDRESSES)) r.xds.set(ADDRESS_TYPE, name, a);
    for (const [name, a] of Object.entries(RECORDED_AUTHORIZATIONS)) r.xds.set(AUTHORIZATION_TYPE, name, a);
    const p = r.proxy();
    const authz = new PolicyAuthorizer(p.store, silent);
    p.client.start();
    await until('the first sync', () => p.wds.published);
    // the same policy, now with a principal of no kind: read as ztunnel reads it, the match would be
    // dropped, leaving an empty match that matches nothing; refused instead
    const nonce = r.xds.set(AUTHORIZATION_TYPE, 'shop/allow-sleep', {
      name: 'allow-sleep', namespace: 'shop', scope: 2, action: 0,
      rules: [{ clauses: [{ matches: [{ principals: [{ exact: 'cluster.local/ns/shop/sa/sleep' }, {}] }] }] }],
    });
    await until('the NACK', () => r!.xds.answers(nonce).length === 1);
    expect(r.xds.answers(nonce)[0]!.error_detail?.message).toMatch(/^shop\/allow-sleep: /);
    expect(authz.authorize(toWeb('sleep')).allow).toBe(true);
    expect(authz.authorize(toWeb('intruder')).allow).toBe(false);
  });
});
