/**
 * Two pods whose identities come from the fake istiod's CA, through the real path (eBPF
 * capture, the proxy, HBONE): while the CA is down neither pod can be certified, so their
 * HBONE fails as ztunnel's does (the outbound attempt errors before connecting, src/proxy/pool.rs
 * new_pool_conn; inbound handshakes fail, src/proxy/inbound.rs fetch_cert), never served with
 * another identity; once the CA is back, the manager's retries (src/identity/manager.rs) certify
 * them and the bytes arrive, each side holding its own istiod-issued identity.
 */
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IstioCaClient } from '../../ts/identity/istio-ca.js';
import { uriSans } from '../../ts/identity/spiffe.js';
import { addCaService, makeRoot, servingCredentials, type FakeCa } from '../fixtures/istiod/ca.js';
import { until } from '../netns/lab.js';
import { TestMesh } from '../security/mesh.js';

let server: grpc.Server;
let ca: FakeCa;
let dir: string;
let m: TestMesh | undefined;
const caClient = (address: string): IstioCaClient => IstioCaClient.open({ address, rootCertFile: join(dir, 'root-cert.pem'), tokenFile: join(dir, 'istio-token'), trustDomain: 'cluster.local' });
let address: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'inpod-istio-ca-hbone-'));
  const root = await makeRoot();
  writeFileSync(join(dir, 'root-cert.pem'), root.certPem);
  writeFileSync(join(dir, 'istio-token'), 'token-of-the-ztunnel-sa');
  server = new grpc.Server();
  ca = await addCaService(server, { root });
  const creds = await servingCredentials(root);
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', creds, (e, p) => (e ? reject(e) : resolve(p))));
  address = `https://127.0.0.1:${port}`;
});
afterAll(async () => {
  await m?.close();
  await new Promise<void>((r) => server.tryShutdown(() => r()));
  rmSync(dir, { recursive: true, force: true });
});

/** A TLS handshake to `ip`:15008 from the node (outside the mesh); what the pod's proxy presented, or the error. */
async function probeHbone(ip: string, o: { cert?: { chainPem: string; keyPem: string }; maxVersion?: tls.SecureVersion } = {}): Promise<{ sans: string[]; issuer: string } | { error: string }> {
  const sock = await m!.fromNode(ip, 15008);
  return new Promise((resolve) => {
    const c = tls.connect({ socket: sock, ALPNProtocols: ['h2'], rejectUnauthorized: false, cert: o.cert?.chainPem, key: o.cert?.keyPem, maxVersion: o.maxVersion ?? 'TLSv1.3' }, () => {
      const peer = c.getPeerX509Certificate();
      resolve({ sans: uriSans(peer?.subjectAltName), issuer: peer?.issuer ?? '' });
      c.destroy();
    });
    c.on('error', (e) => resolve({ error: (e as NodeJS.ErrnoException).code ?? e.message }));
  });
}

describe('HBONE with identities from istiod\'s CA', () => {
  it('fails both ways while the CA is down (never with another identity), then carries the bytes with each pod\'s own istiod-issued certificate once it is back', async () => {
    ca.failWith = grpc.status.UNAVAILABLE;
    m = await TestMesh.create('ebpf', [
      { name: 'client', namespace: 'default', serviceAccount: 'sleep' },
      { name: 'server', namespace: 'shop', serviceAccount: 'web' },
    ], { identity: caClient(address) });
    const srv = m.pods.server!;
    await m.sh.server!.listen({ port: 8080, tag: 'app' });
    expect(ca.requests.map((r) => r.request.metadata.ImpersonatedIdentity).sort()).toEqual(['spiffe://cluster.local/ns/default/sa/sleep', 'spiffe://cluster.local/ns/shop/sa/web']);

    // outbound: the client's proxy has no certificate for default/sleep: the connection is reset
    const from = m.records.length;
    const r = await m.sh.client!.connect({ host: srv.ip, port: 8080, send: 'during', timeoutMs: 5000 });
    expect(r.ok ? r.reply : r.error).toMatch(/ECONNRESET|EOF/);
    await until('the failed outbound line', () => m!.logs(from, (l) => l.msg === 'outbound connection failed' && l.code === 'INPOD_ERR_CA').length > 0, { timeoutMs: 5000 });
    expect(await m.sh.server!.accepted((await m.sh.server!.listenerByTag('app')).id)).toEqual([]);
    // inbound: the server pod's HBONE listener has no certificate to present: the handshake fails
    const peer = await caClient(address).issue({ trustDomain: 'cluster.local', namespace: 'default', serviceAccount: 'peer' }, 3600_000).catch((e: Error) => e);
    expect(peer).toBeInstanceOf(Error); // the CA is down for everyone
    expect(await probeHbone(srv.ip)).toMatchObject({ error: expect.stringMatching(/HANDSHAKE_FAILURE|ECONNRESET/) });

    // the CA is back: the manager's next retry certifies both pods
    ca.failWith = null;
    await until('the client reaches the server over HBONE', async () => {
      const x = await m!.sh.client!.connect({ host: srv.ip, port: 8080, send: 'after', timeoutMs: 3000 });
      if (x.ok) await m!.sh.client!.close(x.connId);
      return x.ok && x.reply === 'app:after';
    }, { timeoutMs: 20_000, intervalMs: 250 });
    // the server's proxy admitted it with the client's istiod-issued identity (its access-log line)
    await until('the inbound access-log line', () => m!.records.some((l) => l.msg === 'connection complete' && l.direction === 'inbound' && l['src.identity'] === 'spiffe://cluster.local/ns/default/sa/sleep'), { timeoutMs: 5000 });
    // the server pod now presents its own identity, issued under the fake istiod's root
    const client = await caClient(address).issue({ trustDomain: 'cluster.local', namespace: 'default', serviceAccount: 'peer' }, 3600_000);
    const seen = await probeHbone(srv.ip, { cert: client });
    expect(seen).toEqual({ sans: ['spiffe://cluster.local/ns/shop/sa/web'], issuer: new X509Certificate(ca.root.certPem).subject });
    // and the certificate swapped in at recovery kept the listener at TLS 1.3 only
    expect(await probeHbone(srv.ip, { cert: client, maxVersion: 'TLSv1.2' })).toMatchObject({ error: expect.any(String) });
  });
});
