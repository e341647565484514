/**
 * Workload certificates from istiod's CA, against the test suite's fake istiod
 * (test/fixtures/istiod/ca.ts) over real gRPC + TLS. What is followed upstream (istio/ztunnel):
 * src/identity/caclient.rs (the request: CSR, validity_duration, ImpersonatedIdentity),
 * src/identity/auth.rs (authorization: Bearer <token>, clusterid), src/tls/csr.rs (P-256, the
 * URI SAN only), src/identity/manager.rs (refresh at half the lifetime, per-identity backoff
 * 1 s x2 up to 150 s +/-20%, the last valid certificate kept, Unavailable errors at once) and
 * src/config.rs (CA_ADDRESS, CA_ROOT_CA, AUTH_TOKEN, CLUSTER_ID, SECRET_TTL 24 h).
 */
import { createPrivateKey, createPublicKey, X509Certificate } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { caOptionsFromFlags, IstioCaClient } from '../../ts/identity/istio-ca.js';
import { Ztunnel } from '../../ts/proxy/ztunnel.js';
import { PodProxy } from '../../ts/proxy/pod.js';
import { openPath } from '../../ts/native/index.js';
import { StateStore } from '../../ts/state/store.js';
import { CERT_RETRY, CertManager, refreshAt, retryDelayMs } from '../../ts/identity/manager.js';
import { spiffeUri } from '../../ts/identity/spiffe.js';
import { addCaService, servingCredentials, makeRoot, type FakeCa } from '../fixtures/istiod/ca.js';
import { until } from '../netns/lab.js';
import { handshake } from './handshake.js';

const TOKEN = 'eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOlsiaXN0aW8tY2EiXX0.c2ln'; // a projected token's shape (audience istio-ca)
const alice = { trustDomain: 'cluster.local', namespace: 'default', serviceAccount: 'alice' };
const bob = { trustDomain: 'cluster.local', namespace: 'shop', serviceAccount: 'bob' };

let server: grpc.Server;
let ca: FakeCa;
let dir: string;
let address: string;
const managers: CertManager[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'inpod-istio-ca-'));
  server = new grpc.Server();
  const root = await makeRoot();
  ca = await addCaService(server, { root, token: TOKEN });
  const creds = await servingCredentials(root);
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', creds, (e, p) => (e ? reject(e) : resolve(p))));
  address = `https://127.0.0.1:${port}`;
  writeFileSync(join(dir, 'root-cert.pem'), root.certPem);
  writeFileSync(join(dir, 'istio-token'), TOKEN);
});
afterEach(() => {
  managers.splice(0).forEach((m) => m.close());
  ca.failWith = null;
  ca.delayMs = 0;
  ca.requests.length = 0;
});
afterAll(async () => {
  await new Promise<void>((r) => server.tryShutdown(() => r()));
  rmSync(dir, { recursive: true, force: true });
});

function manager(opts: ConstructorParameters<typeof CertManager>[1] = {}): CertManager {
  const client = IstioCaClient.open({ address, rootCertFile: join(dir, 'root-cert.pem'), tokenFile: join(dir, 'istio-token'), trustDomain: 'cluster.local' });
  const m = new CertManager(client, opts);
  managers.push(m);
  return m;
}

describe('certificates from istiod\'s CA (CreateCertificate over gRPC + TLS)', () => {
  it('issues a certificate per identity, asking as ztunnel asks: bearer token, clusterid, ImpersonatedIdentity, validity_duration, a CSR naming only the identity', async () => {
    const m = manager({ ttlMs: 3600_000 });
    const [a, b] = await Promise.all([m.get(alice), m.get(bob)]);
    expect(ca.requests).toHaveLength(2);
    const sent = ca.requests.find((r) => r.request.metadata.ImpersonatedIdentity === spiffeUri(alice))!;
    expect(sent.headers).toMatchObject({ authorization: `Bearer ${TOKEN}`, clusterid: 'Kubernetes' });
    expect(sent.request.validity_duration).toBe(3600);
    expect(sent.csrSans).toEqual(['spiffe://cluster.local/ns/default/sa/alice']);
    const x = new X509Certificate(a.certPem);
    expect(x.subjectAltName).toBe('URI:spiffe://cluster.local/ns/default/sa/alice');
    expect(x.verify(new X509Certificate(ca.root.certPem).publicKey)).toBe(true);
    expect(a.notAfter.getTime() - a.notBefore.getTime()).toBe(3600_000);
    expect(m.rootPem).toBe(ca.root.certPem);
    // the two identities talk mTLS with what istiod issued, each seeing the other's SPIFFE id
    const r = await handshake(b, a, m.rootPem);
    expect(r).toEqual({ clientSaw: [spiffeUri(bob)], serverSaw: [spiffeUri(alice)] });
    // a second request for the same identity is served from the cache
    expect((await m.get(alice)).serial).toBe(a.serial);
    expect(ca.requests).toHaveLength(2);
  });

  it('keeps the private key in the proxy: no request carries its bytes (PKCS#8 DER, PEM body, or the raw scalar), and the CSR holds the certificate\'s public key', async () => {
    const m = manager();
    const c = await m.get(alice);
    const key = createPrivateKey(c.keyPem);
    const secrets = [
      key.export({ type: 'pkcs8', format: 'der' }),
      Buffer.from(key.export({ type: 'pkcs8', format: 'der' }).toString('base64').slice(0, 64)),
      Buffer.from(key.export({ format: 'jwk' }).d!, 'base64url'),
      Buffer.from(key.export({ format: 'jwk' }).d!),
    ];
    expect(ca.requests).toHaveLength(1);
    for (const r of ca.requests) {
      const wire = Buffer.concat([r.raw, Buffer.from(JSON.stringify(r.headers))]);
      for (const s of secrets) expect(wire.includes(s)).toBe(false);
      expect(r.request.csr).toMatch(/^-----BEGIN CERTIFICATE REQUEST-----/);
      expect(r.request.csr).not.toMatch(/PRIVATE KEY/);
    }
    // the certificate's key is the one the proxy holds
    const pub = new X509Certificate(c.certPem).publicKey.export({ type: 'spki', format: 'der' });
    expect(Buffer.compare(pub, createPublicKey(key).export({ type: 'spki', format: 'der' }))).toBe(0);
  });

  it('rotates at half the lifetime (ztunnel\'s refresh_at), before expiry, in the background; the new certificate is served without a wait', async () => {
    const m = manager({ ttlMs: 3000 });
    const first = await m.get(alice);
    await until('the background rotation', () => ca.requests.length >= 2 && 'serial' in ca.requests[1]!.outcome, { timeoutMs: 5000 });
    const at = ca.requests[1]!.at;
    expect(at).toBeGreaterThanOrEqual(refreshAt(first) - 5); // not before the half-life
    expect(at).toBeLessThan(first.notAfter.getTime()); // before expiry
    await until('the rotated certificate', async () => (await m.get(alice)).serial !== first.serial, { timeoutMs: 2000 });
    const rotated = await m.get(alice);
    expect(new X509Certificate(rotated.certPem).subjectAltName).toBe(`URI:${spiffeUri(alice)}`);
    expect(rotated.keyPem).not.toBe(first.keyPem); // a new key for each certificate, as ztunnel's CSR per fetch
  });
});

describe('a CA outage', () => {
  it('retries on ztunnel\'s backoff schedule: 1 s, x2, capped at 150 s, +/-20%', () => {
    expect([1, 2, 3, 4, 8, 9, 20].map((n) => retryDelayMs(n, 0.5))).toEqual([1000, 2000, 4000, 8000, 128_000, 150_000, 150_000]);
    expect(retryDelayMs(1, 0)).toBe(800);
    expect(retryDelayMs(1, 0.999999)).toBe(1200);
    expect(CERT_RETRY).toEqual({ firstMs: 1000, multiplier: 2, maxMs: 150_000, jitter: 0.2 });
  });

  it('fails the identity it cannot certify (at once after the first attempt), never with another identity\'s certificate, retries with growing delays and recovers', async () => {
    const retry = { firstMs: 150, maxMs: 2000 };
    const m = manager({ retry, random: () => 0.5 });
    const bobs = await m.get(bob);
    ca.failWith = grpc.status.UNAVAILABLE;
    await expect(m.get(alice)).rejects.toMatchObject({ code: 'INPOD_ERR_CA', retryable: true, message: expect.stringMatching(/no certificate for spiffe:\/\/cluster.local\/ns\/default\/sa\/alice: CreateCertificate .* failed: UNAVAILABLE/) });
    // ztunnel's Unavailable: later requests fail with the last error without a new fetch of their own
    const before = ca.requests.length;
    await expect(m.get(alice)).rejects.toMatchObject({ code: 'INPOD_ERR_CA' });
    expect(ca.requests.length).toBe(before);
    // bob's certificate is unaffected, and nothing hands bob's to alice
    expect((await m.get(bob)).serial).toBe(bobs.serial);
    const aliceTries = () => ca.requests.filter((r) => r.request.metadata.ImpersonatedIdentity === spiffeUri(alice));
    await until('four attempts for alice', () => aliceTries().length >= 4, { timeoutMs: 5000 });
    const gaps = aliceTries().slice(1, 4).map((r, i) => r.at - aliceTries()[i]!.at);
    gaps.forEach((g, i) => expect(g).toBeGreaterThanOrEqual(retryDelayMs(i + 1, 0.5, { ...CERT_RETRY, ...retry }) - 5));
    // the CA is back: the next retry succeeds and alice gets her own certificate
    ca.failWith = null;
    await until('alice certified after the outage', () => m.get(alice).then(() => true, () => false), { timeoutMs: 5000 });
    expect(new X509Certificate((await m.get(alice)).certPem).subjectAltName).toBe(`URI:${spiffeUri(alice)}`);
  });

  it('keeps serving the valid certificate while renewals fail, until it expires; then fails; then recovers', async () => {
    const m = manager({ ttlMs: 3000, retry: { firstMs: 200, maxMs: 400 }, random: () => 0.5 });
    const c = await m.get(alice);
    ca.failWith = grpc.status.UNAVAILABLE;
    await until('a failed renewal', () => ca.requests.some((r) => 'status' in r.outcome), { timeoutMs: 5000 });
    expect((await m.get(alice)).serial).toBe(c.serial); // still valid: kept
    await until('the certificate expired', () => Date.now() > c.notAfter.getTime() + 50, { timeoutMs: 5000 });
    await expect(m.get(alice)).rejects.toMatchObject({ code: 'INPOD_ERR_CA' });
    ca.failWith = null;
    await until('a new certificate', () => m.get(alice).then((n) => n.serial !== c.serial, () => false), { timeoutMs: 5000 });
  });

  it('waits for a slow CA on the first request and then serves what it issued', async () => {
    ca.delayMs = 300;
    const m = manager();
    const t0 = Date.now();
    const c = await m.get(alice);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(290);
    expect(c.identity).toBe(spiffeUri(alice));
  });
});

describe('inpod ztunnel in Istio mode (--ca-address)', () => {
  it('takes ztunnel\'s defaults for the root and the token file, and keeps the node-local CA without --ca-address', () => {
    expect(caOptionsFromFlags({}, 'cluster.local')).toBeUndefined();
    expect(caOptionsFromFlags({ 'ca-address': 'https://istiod.istio-system.svc:15012' }, 'cluster.local', () => true, {})).toEqual({
      address: 'https://istiod.istio-system.svc:15012',
      rootCertFile: '/var/run/secrets/istio/root-cert.pem',
      tokenFile: '/var/run/secrets/tokens/istio-token',
      clusterId: 'Kubernetes',
      altHostname: undefined,
      trustDomain: 'cluster.local',
    });
    // the cluster as the xDS client names it (ztunnel config.rs: ISTIO_META_CLUSTER_ID, then CLUSTER_ID)
    expect(caOptionsFromFlags({ 'ca-address': 'istiod:15012' }, 'td', () => true, { CLUSTER_ID: 'east' })?.clusterId).toBe('east');
    expect(caOptionsFromFlags({ 'ca-address': 'istiod:15012', 'cluster-id': 'west' }, 'td', () => true, { CLUSTER_ID: 'east' })?.clusterId).toBe('west');
    // no token file mounted: none is sent (ztunnel's AuthSource::None)
    expect(caOptionsFromFlags({ 'ca-address': 'https://istiod:15012', 'ca-root-ca': '/r.pem' }, 'td', () => false)).toMatchObject({ rootCertFile: '/r.pem', tokenFile: undefined });
    expect(() => caOptionsFromFlags({ 'ca-address': 'https://istiod:15012/path/x' }, 'td')).toThrow(/--ca-address "https:\/\/istiod:15012\/path\/x": expected https:\/\/host:port/);
  });

  it('serves pods with istiod-issued certificates and makes no CA of its own (no CA key on the node)', async () => {
    const caDir = join(dir, 'never-created');
    const client = IstioCaClient.open({ address, rootCertFile: join(dir, 'root-cert.pem'), tokenFile: join(dir, 'istio-token'), trustDomain: 'cluster.local' });
    const zt = await Ztunnel.create({ trustDomain: 'cluster.local', caDir, identity: client, state: new StateStore() });
    try {
      const c = await zt.certs.get(alice);
      expect(ca.requests.map((r) => r.request.metadata.ImpersonatedIdentity)).toEqual([spiffeUri(alice)]);
      expect(new X509Certificate(c.certPem).verify(new X509Certificate(ca.root.certPem).publicKey)).toBe(true);
      expect(zt.certs.rootPem).toBe(ca.root.certPem);
      expect(existsSync(caDir)).toBe(false);
    } finally {
      await zt.close();
    }
  });
});

describe('certificates of the pods on this node', () => {
  it('are kept while a pod of the identity is on the node and forgotten (no more refreshes) when its last pod leaves, as ztunnel\'s clear_cert', async () => {
    const client = IstioCaClient.open({ address, rootCertFile: join(dir, 'root-cert.pem'), tokenFile: join(dir, 'istio-token'), trustDomain: 'cluster.local' });
    // pods that open no listeners: each only asks for its certificate, as the HBONE listener does
    class CertOnlyPod extends PodProxy {
      override async start(): Promise<void> {
        await this.inputs.certs.get(this.identity);
      }
    }
    const zt = await Ztunnel.create({ trustDomain: 'cluster.local', caDir: join(dir, 'unused'), identity: client, state: new StateStore(), podProxy: (i, ns, deps) => new CertOnlyPod(i, ns, deps) });
    const netns = (name: string) => {
      writeFileSync(join(dir, name), '', { flag: 'a' });
      return openPath(join(dir, name));
    };
    try {
      for (const [uid, sa] of [['a1', 'alice'], ['a2', 'alice'], ['b1', 'bob']] as const) {
        await zt.addPod({ uid, name: uid, namespace: 'default', serviceAccount: sa }, netns(uid));
      }
      const held = async () => (await zt.certs.list()).map((c) => c.identity).sort();
      expect(await held()).toEqual([spiffeUri(alice), 'spiffe://cluster.local/ns/default/sa/bob']);
      zt.removePod('a1');
      expect(await held()).toEqual([spiffeUri(alice), 'spiffe://cluster.local/ns/default/sa/bob']); // a2 still has alice
      zt.removePod('a2');
      expect(await held()).toEqual(['spiffe://cluster.local/ns/default/sa/bob']);
    } finally {
      await zt.close();
    }
  });
});

describe('istiod\'s root rotated in its file', () => {
  it('is taken before the next request (ztunnel\'s RootCertManager): a CA the old root does not vouch for is refused, then trusted once the file holds its root', async () => {
    const root2 = await makeRoot('rotated root');
    const other = new grpc.Server();
    const ca2 = await addCaService(other, { root: root2 });
    const creds = await servingCredentials(root2);
    const port = await new Promise<number>((resolve, reject) => other.bindAsync('127.0.0.1:0', creds, (e, p) => (e ? reject(e) : resolve(p))));
    const rootFile = join(dir, 'rotating-root.pem');
    writeFileSync(rootFile, ca.root.certPem); // the old root
    const client = IstioCaClient.open({ address: `https://127.0.0.1:${port}`, rootCertFile: rootFile, tokenFile: join(dir, 'istio-token'), trustDomain: 'cluster.local' });
    try {
      await expect(client.issue(alice, 3600_000)).rejects.toMatchObject({ code: 'INPOD_ERR_CA', message: expect.stringMatching(/UNAVAILABLE/) });
      expect(ca2.requests).toHaveLength(0); // the token went nowhere
      writeFileSync(rootFile, root2.certPem);
      const c = await client.issue(alice, 3600_000);
      expect(new X509Certificate(c.certPem).verify(new X509Certificate(root2.certPem).publicKey)).toBe(true);
      expect(client.rootPem).toBe(root2.certPem);
      // a file emptied by a remount half-way keeps the root in use
      writeFileSync(rootFile, '');
      expect((await client.issue(alice, 3600_000)).identity).toBe(spiffeUri(alice));
      expect(client.rootPem).toBe(root2.certPem);
    } finally {
      client.close();
      await new Promise<void>((r) => other.tryShutdown(() => r()));
    }
  });
});
