/**
 * Checks a CA's answer before the proxy uses it (pure: no I/O). istiod answers CreateCertificate
 * with `cert_chain`: the leaf first, then intermediates, the root (or several roots in one
 * string) last (ztunnel src/tls/certificate.rs WorkloadCertificate::new). ztunnel then checks the
 * leaf names the identity it asked for (src/identity/caclient.rs); here the whole chain must also
 * lead, signature by signature, to a root the proxy was configured to trust (CA_ROOT_CA), so a CA
 * endpoint that is not istiod cannot hand the proxy an identity.
 */
import { X509Certificate } from 'node:crypto';
import { MeshError } from '../util/errors.js';
import { uriSans } from './spiffe.js';

const PEM_RE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;
/** deeper chains than this are refused (Istio uses root -> [intermediates] -> leaf) */
const MAX_DEPTH = 8;

/** Every certificate in a PEM bundle, in order. */
export function splitPem(pem: string): string[] {
  return pem.match(PEM_RE) ?? [];
}

export interface VerifiedChain {
  /** the leaf, PEM */
  certPem: string;
  /** leaf + intermediates (what the proxy sends in TLS), PEM; the roots are left out as ztunnel does */
  chainPem: string;
  notBefore: Date;
  notAfter: Date;
  serial: string;
}

function parse(pem: string, what: string): X509Certificate {
  try {
    return new X509Certificate(pem);
  } catch (e) {
    throw new MeshError('INPOD_ERR_CA', `the CA answered with an unreadable ${what} (${(e as Error).message}); is CA_ADDRESS istiod?`, { cause: e });
  }
}

/**
 * Verifies `certChain` (CreateCertificate's answer) for `spiffeId` against `trustedRootsPem` at
 * `now`. Throws MeshError INPOD_ERR_CA naming what failed: an empty answer, a leaf that does not
 * carry exactly `spiffeId` as its URI SAN or is a CA, a certificate outside its validity, or a
 * chain that does not reach a trusted root.
 */
export function verifyIssuedChain(certChain: string[], spiffeId: string, trustedRootsPem: string, now: Date): VerifiedChain {
  const first = certChain[0];
  if (first === undefined || splitPem(first).length !== 1) {
    throw new MeshError('INPOD_ERR_CA', `the CA answered without a leaf certificate for ${spiffeId}`, { retryable: true });
  }
  const leafPem = splitPem(first)[0]!;
  const leaf = parse(leafPem, 'leaf certificate');
  const sans = uriSans(leaf.subjectAltName);
  if (sans.length !== 1 || sans[0] !== spiffeId) {
    throw new MeshError('INPOD_ERR_CA', `the CA issued a certificate for ${sans.join(', ') || 'no SPIFFE identity'}, expected ${spiffeId}; it is not used`);
  }
  if (leaf.ca) throw new MeshError('INPOD_ERR_CA', `the CA issued a CA certificate for ${spiffeId}; it is not used`);
  // the middle elements are intermediates; the last (when there are several) holds the CA's roots,
  // which are only a hint: trust comes from the configured roots
  const intermediates = certChain.slice(1, certChain.length > 1 ? -1 : undefined).flatMap(splitPem).map((p) => ({ pem: p, x: parse(p, 'intermediate certificate') }));
  const roots = splitPem(trustedRootsPem).map((p) => parse(p, 'trusted root'));
  if (roots.length === 0) throw new MeshError('INPOD_ERR_CA', 'no trusted root certificate is configured; set --ca-root-ca to istiod\'s root-cert.pem');
  const inTime = (x: X509Certificate, what: string): void => {
    if (now < new Date(x.validFrom) || now >= new Date(x.validTo)) {
      throw new MeshError('INPOD_ERR_CA', `the CA's ${what} (${x.subject || x.serialNumber}) is not valid now (${x.validFrom} to ${x.validTo}); check the node clock and istiod's CA`, { retryable: true });
    }
  };
  inTime(leaf, `certificate for ${spiffeId}`);
  const signs = (issuer: X509Certificate, cert: X509Certificate): boolean => issuer.ca && cert.checkIssued(issuer) && cert.verify(issuer.publicKey);
  let cur = leaf;
  for (let depth = 0; depth < MAX_DEPTH; depth++) {
    const root = roots.find((r) => signs(r, cur));
    if (root) {
      inTime(root, 'root certificate');
      return {
        certPem: leafPem,
        chainPem: `${[leafPem, ...intermediates.map((i) => i.pem)].join('\n')}\n`,
        notBefore: new Date(leaf.validFrom),
        notAfter: new Date(leaf.validTo),
        serial: leaf.serialNumber.toLowerCase(),
      };
    }
    const next = intermediates.find((i) => i.x !== cur && signs(i.x, cur));
    if (!next) break;
    inTime(next.x, 'intermediate certificate');
    cur = next.x;
  }
  throw new MeshError('INPOD_ERR_CA', `the certificate the CA issued for ${spiffeId} does not chain to the trusted root (--ca-root-ca); is CA_ADDRESS the istiod whose root that is?`);
}
