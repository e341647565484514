/**
 * On-demand lookups as ztunnel's XDS_ON_DEMAND (src/xds/client.rs construct_initial_request,
 * Demander, handle_demand_event, notify_on_demand; src/state.rs fetch_on_demand) against a fake
 * istiod answering as istiod's generateDeltasOndemand (pilot/pkg/xds/workload.go): addresses
 * one by one, by "network/ip" or uid; policies still subscribed whole.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { status } from '@grpc/grpc-js';
import { ADDRESS_TYPE, AUTHORIZATION_TYPE } from '../../ts/xds/proto.js';
import { RECORDED_ADDRESSES, RECORDED_AUTHORIZATIONS } from '../fixtures/istiod/resources.js';
import { rig, until, type Proxy, type Rig } from './harness.js';

let r: Rig | undefined;
afterEach(async () => {
  await r?.close();
  r = undefined;
});

const WEB = 'Kubernetes//Pod/shop/web-0';
const SLEEP = 'Kubernetes//Pod/shop/sleep-0';

async function onDemandProxy(): Promise<Proxy> {
  r = await rig();
  for (const [name, a] of Object.entries(RECORDED_ADDRESSES)) r.xds.set(ADDRESS_TYPE, name, a);
  for (const [name, a] of Object.entries(RECORDED_AUTHORIZATIONS)) r.xds.set(AUTHORIZATION_TYPE, name, a);
  return r.proxy({ onDemand: true });
}

describe('on-demand lookups', () => {
  it("asks for nothing but the policies at first, then for one address at a time, and follows what it asked for", async () => {
    const p = await onDemandProxy();
    p.client.start();
    await until('the policies', () => p.client.synced && p.wds.published);
    const first = r!.xds.streams[0]!.requests.filter((q) => !q.response_nonce);
    expect(first.map((q) => [q.type_url, q.resource_names_subscribe, q.resource_names_unsubscribe])).toEqual([
      [ADDRESS_TYPE, ['*'], ['*']],
      [AUTHORIZATION_TYPE, [], []],
    ]);
    expect(p.store.snapshot.state.workloads).toEqual([]);
    expect(p.store.snapshot.state.authorizations?.map((a) => a.name)).toEqual(['allow-sleep']);

    // a connection to 10.200.1.3: the proxy asks for "/10.200.1.3" (network/ip) and waits
    await p.client.demand(ADDRESS_TYPE, '/10.200.1.3');
    expect(p.store.snapshot.state.workloads.map((w) => w.uid)).toEqual([WEB]);
    // istiod now pushes web-0's changes (subscribed by its name), not sleep-0's
    const before = p.store.snapshot;
    r!.xds.set(ADDRESS_TYPE, SLEEP, { workload: { ...(RECORDED_ADDRESSES[SLEEP] as { workload: object }).workload, canonical_revision: 'v2' } });
    r!.xds.set(ADDRESS_TYPE, WEB, { workload: { ...(RECORDED_ADDRESSES[WEB] as { workload: object }).workload, canonical_revision: 'v2' } });
    await until('web-0 updated', () => p.store.snapshot.byIp.get('10.200.1.3')?.canonicalRevision === 'v2');
    expect(p.store.snapshot).not.toBe(before);
    expect(p.store.snapshot.byIp.has('10.200.1.2')).toBe(false);
  });

  it('sends a lookup made while the stream is still opening on that stream, not the next one', async () => {
    const p = await onDemandProxy();
    p.client.start();
    await p.client.demand(ADDRESS_TYPE, '/10.200.1.3', 3000); // resolves on the answer, or on the timeout
    expect(r!.xds.streams[0]!.requests.some((q) => (q.resource_names_subscribe ?? []).includes('/10.200.1.3'))).toBe(true);
    await until('the policies', () => p.wds.published);
    expect(p.store.snapshot.state.workloads.map((w) => w.uid)).toEqual([WEB]);
  });

  it('resolves a lookup of an address istiod does not know (answered as removed), leaving nothing in the state for it', async () => {
    const p = await onDemandProxy();
    p.client.start();
    await until('the policies', () => p.wds.published);
    await p.client.demand(ADDRESS_TYPE, '/10.9.9.9', 10_000);
    const asked = r!.xds.streams[0]!.requests.filter((q) => (q.resource_names_subscribe ?? []).includes('/10.9.9.9'));
    expect(asked).toHaveLength(1);
    expect(p.store.snapshot.byIp.has('10.9.9.9')).toBe(false);
  });

  it('asks again on the next stream for what it looked up, and keeps it meanwhile', async () => {
    const p = await onDemandProxy();
    p.client.start();
    await until('the policies', () => p.wds.published);
    await p.client.demand(ADDRESS_TYPE, SLEEP);
    expect(p.store.snapshot.byIp.get('10.200.1.2')?.name).toBe('sleep-0');
    r!.xds.drop(status.UNAVAILABLE);
    await until('the reconnect', () => r!.xds.streams.length === 2 && p.client.connected);
    const again = r!.xds.streams[1]!.requests.find((q) => q.type_url === ADDRESS_TYPE && !q.response_nonce)!;
    expect(Object.keys(again.initial_resource_versions ?? {})).toEqual([SLEEP]);
    // istiod removes sleep-0: the new stream follows it
    r!.xds.remove(ADDRESS_TYPE, [SLEEP]);
    await until('sleep-0 removed', () => !p.store.snapshot.byIp.has('10.200.1.2'));
  });

  it('answers at once, asking nothing, for a type subscribed whole or a client not on demand', async () => {
    r = await rig();
    const p = r.proxy();
    p.client.start();
    await until('the sync', () => p.client.synced);
    await p.client.demand(ADDRESS_TYPE, '/10.0.0.1');
    expect(r.xds.streams[0]!.requests.some((q) => (q.resource_names_subscribe ?? []).length > 0)).toBe(false);
  });
});
