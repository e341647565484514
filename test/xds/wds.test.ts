/**
 * The WDS state (ts/xds/wds.ts): a response applied whole or not at all, nothing published until
 * every type has arrived, updates before removals (ztunnel src/xds/client.rs HandlerWrapper
 * chains the updates, then the removals), removals by xDS name (src/xds.rs remove_internal).
 */
import { describe, expect, it } from 'vitest';
import { StateStore } from '../../ts/state/store.js';
import { WdsState, type TypeHandler } from '../../ts/xds/wds.js';
import { ADDRESS_TYPE, AUTHORIZATION_TYPE, T, encodePlain, type Resource } from '../../ts/xds/proto.js';
import { RECORDED_ADDRESSES, RECORDED_AUTHORIZATIONS, ipBytes } from '../fixtures/istiod/resources.js';
import { silent } from './harness.js';
import { PolicyWatcher } from '../../ts/proxy/policy-watch.js';
import type { ConnContext } from '../../ts/proxy/hooks.js';

const res = (type: string, name: string, body: object): Resource => ({ name, version: '1', resource: { type_url: type, value: encodePlain(type === ADDRESS_TYPE ? T.address : T.authorization, body) } });
const recorded = (type: string, m: Record<string, object>): Resource[] => Object.entries(m).map(([n, b]) => res(type, n, b));

function setup(): { store: StateStore; wds: WdsState; addr: TypeHandler; authz: TypeHandler; updates: () => number } {
  const store = new StateStore();
  let n = 0;
  store.on('update', () => n++);
  const wds = new WdsState(store, silent);
  const h = wds.handlers();
  return { store, wds, addr: h.get(ADDRESS_TYPE)!, authz: h.get(AUTHORIZATION_TYPE)!, updates: () => n };
}

describe('the WDS state', () => {
  it('publishes nothing until both types have arrived: workloads are never served without their policies', () => {
    const { store, wds, addr, authz, updates } = setup();
    expect(addr.apply(recorded(ADDRESS_TYPE, RECORDED_ADDRESSES), [])).toEqual([]);
    expect(wds.published).toBe(false);
    expect(updates()).toBe(0);
    expect(store.snapshot.state.workloads).toEqual([]);
    expect(authz.apply(recorded(AUTHORIZATION_TYPE, RECORDED_AUTHORIZATIONS), [])).toEqual([]);
    expect(wds.published).toBe(true);
    expect(updates()).toBe(1);
    expect(store.snapshot.state.workloads).toHaveLength(2);
    expect(store.snapshot.state.authorizations?.map((a) => a.name)).toEqual(['allow-sleep']);
  });

  it('applies no part of a response with one refused resource, and names every refused one', () => {
    const { store, addr, authz } = setup();
    addr.apply(recorded(ADDRESS_TYPE, RECORDED_ADDRESSES), []);
    authz.apply([], []);
    const before = store.snapshot;
    const rejections = addr.apply([
      res(ADDRESS_TYPE, 'new-0', { workload: { uid: 'new-0', addresses: [ipBytes('10.200.1.7')] } }),
      { name: 'empty', version: '1' },
      { name: 'wrong-type', version: '1', resource: { type_url: AUTHORIZATION_TYPE, value: encodePlain(T.authorization, { name: 'x' }) } },
      res(ADDRESS_TYPE, 'bad-ip', { workload: { uid: 'bad-ip', addresses: [Buffer.from([1, 2])] } }),
    ], ['Kubernetes//Pod/shop/sleep-0']);
    expect(rejections).toEqual([
      { name: 'empty', reason: 'XDS payload without resource' },
      { name: 'wrong-type', reason: `holds a ${AUTHORIZATION_TYPE}, in a response of ${ADDRESS_TYPE}` },
      { name: 'bad-ip', reason: 'workload.addresses[0]: an IP address is 4 or 16 bytes, got 2' },
    ]);
    // neither the good workload nor the removal in the same response happened
    expect(store.snapshot).toBe(before);
    expect(store.snapshot.byIp.has('10.200.1.7')).toBe(false);
    expect(store.snapshot.byIp.has('10.200.1.2')).toBe(true);
    expect(store.lastError?.message).toMatch(/refused \(NACK\) and the last good state kept: empty: XDS payload without resource; wrong-type: /);
  });

  it("never finds a host-network workload by its IP, which is its node's (ztunnel's WorkloadStore::insert skips it)", () => {
    const { store, addr, authz } = setup();
    addr.apply([
      res(ADDRESS_TYPE, 'Kubernetes//Pod/kube-system/node-exporter', { workload: { uid: 'Kubernetes//Pod/kube-system/node-exporter', name: 'node-exporter', namespace: 'kube-system', addresses: [ipBytes('172.18.0.2')], network_mode: 1 } }),
    ], []);
    authz.apply([], []);
    expect(store.snapshot.byUid.get('Kubernetes//Pod/kube-system/node-exporter')?.networkMode).toBe('HostNetwork');
    expect(store.snapshot.byIp.has('172.18.0.2')).toBe(false);
  });

  it('applies the updates of a response before its removals, removes by xDS name, and ignores a removal of a name it does not hold', () => {
    const { store, addr, authz } = setup();
    addr.apply(recorded(ADDRESS_TYPE, RECORDED_ADDRESSES), []);
    authz.apply(recorded(AUTHORIZATION_TYPE, RECORDED_AUTHORIZATIONS), []);
    // the same name updated and removed in one response: removed
    expect(addr.apply([res(ADDRESS_TYPE, 'shop/web.shop.svc.cluster.local', { service: { name: 'web', namespace: 'shop', hostname: 'web.shop.svc.cluster.local' } })], ['shop/web.shop.svc.cluster.local', 'never-sent'])).toEqual([]);
    expect(store.snapshot.state.services).toEqual([]);
    expect(authz.apply([], ['shop/allow-sleep'])).toEqual([]);
    expect(store.snapshot.state.authorizations).toEqual([]);
    expect(store.snapshot.state.workloads).toHaveLength(2);
  });

  it('decides open connections again on a policy push, never on a push of addresses alone (same policy arrays)', () => {
    const { store, addr, authz } = setup();
    addr.apply(recorded(ADDRESS_TYPE, RECORDED_ADDRESSES), []);
    authz.apply(recorded(AUTHORIZATION_TYPE, RECORDED_AUTHORIZATIONS), []);
    let decided = 0;
    const watcher = new PolicyWatcher(store, { authorize: () => (decided++, { allow: true }) });
    watcher.admitted({ ctx: {} as ConnContext, close: () => {}, log: silent });
    const [name, body] = Object.entries(RECORDED_ADDRESSES)[0]!;
    addr.apply([res(ADDRESS_TYPE, name, body)], []);
    expect(decided).toBe(0);
    authz.apply(recorded(AUTHORIZATION_TYPE, RECORDED_AUTHORIZATIONS), []);
    expect(decided).toBe(1);
    watcher.close();
  });
});
