/**
 * The fake istiod as istiod is to ztunnel: one address and one root for both its xDS
 * (./xds.ts) and its CA (./ca.ts, IstioCertificateService), each added as a service of the same
 * server (test/fixtures/istiod/index.ts). The proxy's xDS client and CA client both verify it
 * against the one root file and both send the token.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { startFakeIstiod, type FakeIstiod } from '../fixtures/istiod/index.js';
import { addXdsService, type FakeXds } from '../fixtures/istiod/xds.js';
import { addCaService, type FakeCa } from '../fixtures/istiod/ca.js';
import { RECORDED_ADDRESSES, RECORDED_AUTHORIZATIONS } from '../fixtures/istiod/resources.js';
import { IstioCaClient } from '../../ts/identity/istio-ca.js';
import { StateStore } from '../../ts/state/store.js';
import { XdsClient } from '../../ts/xds/client.js';
import { XdsMetrics } from '../../ts/xds/metrics.js';
import { xdsNode } from '../../ts/xds/node.js';
import { ADDRESS_TYPE, AUTHORIZATION_TYPE } from '../../ts/xds/proto.js';
import { WdsState } from '../../ts/xds/wds.js';
import { silent, until } from './harness.js';

let istiod: FakeIstiod | undefined;
const stops: (() => void)[] = [];
afterEach(async () => {
  for (const s of stops.splice(0)) s();
  await istiod?.close();
  istiod = undefined;
});

describe('the fake istiod', () => {
  it('serves xDS and the CA on one address under one root, as istiod does', async () => {
    let xds!: FakeXds;
    let ca!: FakeCa;
    istiod = await startFakeIstiod({ services: [(s) => void (xds = addXdsService(s, { requireToken: true })), async (s, { root }) => void (ca = await addCaService(s, { root }))] });
    for (const [name, a] of Object.entries(RECORDED_ADDRESSES)) xds.set(ADDRESS_TYPE, name, a);
    for (const [name, a] of Object.entries(RECORDED_AUTHORIZATIONS)) xds.set(AUTHORIZATION_TYPE, name, a);
    const token = join(istiod.dir, 'istio-token');
    writeFileSync(token, 'the-token');

    const store = new StateStore();
    const wds = new WdsState(store, silent);
    const client = new XdsClient({
      address: istiod.address, rootCert: istiod.rootCertFile, tokenFile: token, clusterId: 'Kubernetes', node: xdsNode({}).node,
      handlers: wds.handlers(), metrics: new XdsMetrics(new Registry()), log: silent,
    });
    stops.push(() => client.stop());
    client.start();
    await until('the state from istiod', () => wds.published);

    // a workload the state names gets its certificate from the same istiod
    const web = store.snapshot.byIp.get('10.200.1.3')!;
    const cas = IstioCaClient.open({ address: `https://${istiod.address}`, rootCertFile: istiod.rootCertFile, tokenFile: token, trustDomain: 'cluster.local', log: silent });
    stops.push(() => cas.close());
    const cert = await cas.issue({ trustDomain: web.trustDomain, namespace: web.namespace, serviceAccount: web.serviceAccount }, 3600_000);
    expect(cert.identity).toBe('spiffe://cluster.local/ns/shop/sa/web');
    expect(ca.requests).toHaveLength(1);
    expect(xds.streams[0]!.metadata.authorization).toBe('Bearer the-token');
  });
});
