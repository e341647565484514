/**
 * The node-local certificate authority. It loads Istio's `cacerts` layout from a directory
 * (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem), or creates a self-signed ECDSA P-256
 * root there in that same layout when the directory holds none, and issues workload certificates
 * with the SPIFFE URI SAN. X.509 is built with @peculiar/x509 over WebCrypto, never by hand.
 */
import 'reflect-metadata'; // required by @peculiar/x509 (tsyringe)
import { createPrivateKey, randomBytes, webcrypto, KeyObject } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';
import { MeshError } from '../util/errors.js';
import { spiffeUri, type Identity } from './spiffe.js';

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

const EC_ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const RSA_ALG = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' } as const;

export interface IssuedCert {
  identity: string; // the SPIFFE URI
  certPem: string; // leaf only
  chainPem: string; // leaf + intermediates (what a TLS peer is sent)
  keyPem: string; // PKCS#8
  notBefore: Date;
  notAfter: Date;
  serial: string;
}

export const CACERTS_FILES = ['ca-cert.pem', 'ca-key.pem', 'root-cert.pem', 'cert-chain.pem'] as const;

function pemKey(key: KeyObject): string {
  return key.export({ type: 'pkcs8', format: 'pem' }).toString();
}

export class LocalCa {
  private constructor(
    readonly trustDomain: string,
    readonly caCert: x509.X509Certificate,
    private readonly caKey: CryptoKey,
    private readonly signingAlg: typeof EC_ALG | typeof RSA_ALG,
    /** The trust bundle peers are verified against. */
    readonly rootPem: string,
    /** ca-cert up to (not including) the root, appended to every issued leaf. */
    readonly chainPem: string,
  ) {}

  /** Loads the cacerts layout from `dir`, creating a new root CA there if none exists. */
  static async open(dir: string, trustDomain: string): Promise<LocalCa> {
    let present = CACERTS_FILES.filter((f) => existsSync(join(dir, f)));
    if (present.length === 0) await LocalCa.#create(dir, trustDomain);
    // another process may be creating it right now: wait for its last file (cert-chain.pem)
    for (let i = 0; i < 100 && existsSync(join(dir, 'ca-key.pem')) && !existsSync(join(dir, 'cert-chain.pem')); i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    present = CACERTS_FILES.filter((f) => existsSync(join(dir, f)));
    if (present.length !== CACERTS_FILES.length) {
      const missing = CACERTS_FILES.filter((f) => !present.includes(f));
      throw new MeshError('INPOD_ERR_CA', `${dir} holds part of an Istio cacerts layout; missing ${missing.join(', ')}. ` +
        'Provide all four files (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem) or an empty directory');
    }
    const read = (f: string): string => readFileSync(join(dir, f), 'utf8');
    let caCert: x509.X509Certificate;
    let keyObj: KeyObject;
    try {
      caCert = new x509.X509Certificate(read('ca-cert.pem'));
      keyObj = createPrivateKey(read('ca-key.pem'));
    } catch (e) {
      throw new MeshError('INPOD_ERR_CA', `cannot read the CA in ${dir}: ${(e as Error).message}`, { cause: e });
    }
    const rsa = keyObj.asymmetricKeyType === 'rsa';
    const alg = rsa ? RSA_ALG : EC_ALG;
    const der = keyObj.export({ type: 'pkcs8', format: 'der' });
    const caKey = await webcrypto.subtle.importKey('pkcs8', der, rsa ? RSA_ALG : { name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign']);
    const chain = read('cert-chain.pem').trim();
    return new LocalCa(trustDomain, caCert, caKey as CryptoKey, alg, read('root-cert.pem'), `${chain}\n`);
  }

  static async #create(dir: string, trustDomain: string): Promise<void> {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const keys = (await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify'])) as CryptoKeyPair;
    const now = Date.now();
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: randomBytes(16).toString('hex'),
      name: `O=${trustDomain}, CN=inpod root CA`,
      notBefore: new Date(now - 60_000),
      notAfter: new Date(now + 10 * 365 * 24 * 3600_000),
      keys,
      signingAlgorithm: EC_ALG,
      extensions: [
        new x509.BasicConstraintsExtension(true, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      ],
    });
    const pem = cert.toString('pem');
    const key = pemKey(KeyObject.from(keys.privateKey));
    // Two processes may race to create the CA (proxies starting together on a shared dir): the
    // key file is created exclusively, so one wins; cert-chain.pem, written last, marks it done.
    try {
      writeFileSync(join(dir, 'ca-key.pem'), key, { mode: 0o600, flag: 'wx' });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') return;
      throw e;
    }
    writeFileSync(join(dir, 'ca-cert.pem'), pem);
    writeFileSync(join(dir, 'root-cert.pem'), pem);
    writeFileSync(join(dir, 'cert-chain.pem'), pem);
  }

  /** Issues a certificate for `id` valid for `ttlMs` (backdated a minute for clock skew). */
  async issue(id: Identity, ttlMs: number): Promise<IssuedCert> {
    const keys = (await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify'])) as CryptoKeyPair;
    const uri = spiffeUri(id);
    const now = Date.now();
    const notBefore = new Date(now - 60_000);
    const notAfter = new Date(now + ttlMs);
    const serial = randomBytes(16).toString('hex');
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: serial,
      subject: '',
      issuer: this.caCert.subject,
      notBefore,
      notAfter,
      publicKey: keys.publicKey,
      signingKey: this.caKey,
      signingAlgorithm: this.signingAlg,
      extensions: [
        new x509.SubjectAlternativeNameExtension([{ type: 'url', value: uri }], true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
        new x509.BasicConstraintsExtension(false, undefined, true),
        await x509.AuthorityKeyIdentifierExtension.create(this.caCert),
      ],
    });
    const certPem = cert.toString('pem');
    return {
      identity: uri,
      certPem,
      chainPem: `${certPem}\n${this.chainPem}`,
      keyPem: pemKey(KeyObject.from(keys.privateKey)),
      notBefore,
      notAfter,
      serial,
    };
  }
}
