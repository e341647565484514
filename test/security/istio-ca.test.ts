/**
 * The CA client as an attacker would try it: an endpoint posing as istiod, and a CA (or a
 * man in the middle holding some CA) answering with a certificate the proxy did not ask for.
 * Upstream: ztunnel src/identity/caclient.rs checks the leaf names the identity asked for;
 * src/tls/control.rs verifies istiod's serving certificate against CA_ROOT_CA. Here the chain
 * must also lead to that root (ts/identity/verify.ts).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IstioCaClient } from '../../ts/identity/istio-ca.js';
import { CertManager } from '../../ts/identity/manager.js';
import { spiffeUri } from '../../ts/identity/spiffe.js';
import { addCaService, makeRoot, servingCredentials, type FakeCa, type FakeRoot } from '../fixtures/istiod/ca.js';

const alice = { trustDomain: 'cluster.local', namespace: 'default', serviceAccount: 'alice' };
let dir: string;
const servers: grpc.Server[] = [];

async function istiod(root: FakeRoot): Promise<{ ca: FakeCa; address: string }> {
  const server = new grpc.Server();
  servers.push(server);
  const ca = await addCaService(server, { root });
  const creds = await servingCredentials(root);
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', creds, (e, p) => (e ? reject(e) : resolve(p))));
  return { ca, address: `https://127.0.0.1:${port}` };
}

let trusted: FakeRoot;
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'inpod-istio-ca-sec-'));
  trusted = await makeRoot('trusted istiod root');
  writeFileSync(join(dir, 'root-cert.pem'), trusted.certPem);
  writeFileSync(join(dir, 'istio-token'), 'secret-projected-token');
});
afterAll(async () => {
  await Promise.all(servers.map((s) => new Promise<void>((r) => s.tryShutdown(() => r()))));
  rmSync(dir, { recursive: true, force: true });
});

const client = (address: string): IstioCaClient =>
  IstioCaClient.open({ address, rootCertFile: join(dir, 'root-cert.pem'), tokenFile: join(dir, 'istio-token'), trustDomain: 'cluster.local' });

describe('the CA client against a false istiod', () => {
  it('poses as istiod with a serving certificate of another root: the TLS handshake fails, the token is never sent, no certificate', async () => {
    const impostor = await istiod(await makeRoot('impostor root'));
    const c = client(impostor.address);
    try {
      await expect(c.issue(alice, 3600_000)).rejects.toMatchObject({ code: 'INPOD_ERR_CA', message: expect.stringMatching(/UNAVAILABLE/) });
      expect(impostor.ca.requests).toHaveLength(0);
    } finally {
      c.close();
    }
  });

  it('answers a request for alice with a certificate for another identity: refused, and the manager serves nothing for alice', async () => {
    const real = await istiod(trusted);
    real.ca.issueAs = 'spiffe://cluster.local/ns/kube-system/sa/admin';
    const m = new CertManager(client(real.address));
    try {
      await expect(m.get(alice)).rejects.toMatchObject({ code: 'INPOD_ERR_CA', message: expect.stringMatching(/issued a certificate for spiffe:\/\/cluster.local\/ns\/kube-system\/sa\/admin, expected spiffe:\/\/cluster.local\/ns\/default\/sa\/alice/) });
      expect(await m.list()).toEqual([]);
    } finally {
      m.close();
    }
  });

  it('answers with alice\'s certificate signed by a root the proxy does not trust: refused', async () => {
    const real = await istiod(trusted);
    real.ca.signWith = await makeRoot('rogue CA');
    const c = client(real.address);
    try {
      await expect(c.issue(alice, 3600_000)).rejects.toMatchObject({ code: 'INPOD_ERR_CA', message: expect.stringMatching(/does not chain to the trusted root/) });
      expect(real.ca.requests[0]!.request.metadata.ImpersonatedIdentity).toBe(spiffeUri(alice));
    } finally {
      c.close();
    }
  });
});
