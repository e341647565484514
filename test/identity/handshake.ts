/** A real mTLS 1.3 handshake between two workload certificates, for the identity tests. */
import tls from 'node:tls';
import { uriSans } from '../../ts/identity/spiffe.js';

/** Connects a client with `client` to a server with `server`, both verifying against `ca`; returns the SPIFFE ids each side saw. */
export async function handshake(server: { chainPem: string; keyPem: string }, client: { chainPem: string; keyPem: string }, ca: string) {
  const srv = tls.createServer({ cert: server.chainPem, key: server.keyPem, ca, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3' });
  const seen = new Promise<string[]>((resolve) => srv.on('secureConnection', (s) => { resolve(uriSans(s.getPeerCertificate().subjectaltname)); s.end(); }));
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as { port: number }).port;
  try {
    const clientSaw = await new Promise<string[]>((resolve, reject) => {
      const c = tls.connect({ port, host: '127.0.0.1', cert: client.chainPem, key: client.keyPem, ca, checkServerIdentity: () => undefined, minVersion: 'TLSv1.3' }, () => {
        resolve(uriSans(c.getPeerCertificate().subjectaltname));
        c.end();
      });
      c.on('error', reject);
    });
    return { clientSaw, serverSaw: await seen };
  } finally {
    srv.close();
  }
}
