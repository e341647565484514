import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync, statSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { LocalCa } from '../../ts/identity/ca.js';
import { CertManager } from '../../ts/identity/manager.js';
import { handshake } from './handshake.js';

const dirs: string[] = [];
function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'inpod-ca-'));
  dirs.push(d);
  return d;
}
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

const alice = { trustDomain: 'cluster.local', namespace: 'default', serviceAccount: 'alice' };
const bob = { trustDomain: 'cluster.local', namespace: 'shop', serviceAccount: 'bob' };

describe('local CA', () => {
  it('creates a root in the cacerts layout and issues P-256 certs with the SPIFFE URI SAN', async () => {
    const dir = tmp();
    const ca = await LocalCa.open(dir, 'cluster.local');
    expect(statSync(join(dir, 'ca-key.pem')).mode & 0o777).toBe(0o600);
    const c = await ca.issue(alice, 3600_000);
    const x = new X509Certificate(c.certPem);
    expect(x.subjectAltName).toBe('URI:spiffe://cluster.local/ns/default/sa/alice');
    expect(x.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    expect(x.checkIssued(new X509Certificate(ca.rootPem))).toBe(true);
    expect(x.verify(new X509Certificate(ca.rootPem).publicKey)).toBe(true);
    // a second process opening the same dir gets the same CA
    const again = await LocalCa.open(dir, 'cluster.local');
    expect(again.rootPem).toBe(ca.rootPem);
  });

  it('gives two workloads an mTLS handshake in which each sees the other SPIFFE identity', async () => {
    const ca = await LocalCa.open(tmp(), 'cluster.local');
    const r = await handshake(await ca.issue(bob, 3600_000), await ca.issue(alice, 3600_000), ca.rootPem);
    expect(r.clientSaw).toEqual(['spiffe://cluster.local/ns/shop/sa/bob']);
    expect(r.serverSaw).toEqual(['spiffe://cluster.local/ns/default/sa/alice']);
  });

  it('loads an Istio cacerts directory with an RSA intermediate made by openssl, and chains through it', async () => {
    const dir = tmp();
    const sh = (cmd: string): void => void execFileSync('sh', ['-c', cmd], { cwd: dir, stdio: 'pipe' });
    sh('openssl req -x509 -newkey rsa:2048 -nodes -keyout root-key.pem -out root-cert.pem -days 3 -subj "/O=Istio/CN=Root CA"');
    writeFileSync(join(dir, 'ext.cnf'), 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n');
    sh('openssl req -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca.csr -subj "/O=Istio/CN=Intermediate CA"');
    sh('openssl x509 -req -in ca.csr -CA root-cert.pem -CAkey root-key.pem -CAcreateserial -out ca-cert.pem -days 2 -extfile ext.cnf');
    sh('cat ca-cert.pem root-cert.pem > cert-chain.pem');
    const ca = await LocalCa.open(dir, 'cluster.local');
    const leaf = await ca.issue(alice, 3600_000);
    expect(new X509Certificate(leaf.certPem).checkIssued(new X509Certificate(readFileSync(join(dir, 'ca-cert.pem'))))).toBe(true);
    // verified against the root alone: the chain sent carries the intermediate
    const r = await handshake(await ca.issue(bob, 3600_000), leaf, ca.rootPem);
    expect(r.serverSaw).toEqual(['spiffe://cluster.local/ns/default/sa/alice']);
  });

  it('refuses a partial cacerts directory and names the missing files', async () => {
    const dir = tmp();
    writeFileSync(join(dir, 'ca-cert.pem'), 'x');
    await expect(LocalCa.open(dir, 'cluster.local')).rejects.toMatchObject({
      code: 'INPOD_ERR_CA',
      message: expect.stringMatching(/missing ca-key.pem, root-cert.pem, cert-chain.pem/),
    });
  });
});

describe('certificate manager', () => {
  it('caches per identity and rotates after half the lifetime', async () => {
    let now = Date.now();
    const m = new CertManager(await LocalCa.open(tmp(), 'cluster.local'), { ttlMs: 3600_000, now: () => now });
    const [a1, a2] = await Promise.all([m.get(alice), m.get(alice)]);
    expect(a1.serial).toBe(a2.serial);
    expect((await m.get(bob)).serial).not.toBe(a1.serial);
    now += 29 * 60_000;
    expect((await m.get(alice)).serial).toBe(a1.serial);
    now += 2 * 60_000; // past half of the hour (plus the minute of backdating)
    const rotated = await m.get(alice);
    expect(rotated.serial).not.toBe(a1.serial);
    expect((await m.list()).every((c) => !('keyPem' in c))).toBe(true);
  });
});

describe('local CA creation', () => {
  it('ends with one CA when several processes create it at once', async () => {
    const dir = tmp();
    const cas = await Promise.all(Array.from({ length: 4 }, () => LocalCa.open(dir, 'cluster.local')));
    expect(new Set(cas.map((c) => c.rootPem)).size).toBe(1);
    expect(cas[0]!.rootPem).toBe(readFileSync(join(dir, 'root-cert.pem'), 'utf8'));
  });
});
