/**
 * istiod's CA as an IdentityProvider, as ztunnel's CaClient (src/identity/caclient.rs):
 * `istio.v1.auth.IstioCertificateService/CreateCertificate` over gRPC with TLS verified against
 * istiod's root (CA_ROOT_CA), a fresh P-256 key and a CSR per request whose only content is the
 * SPIFFE URI SAN (src/tls/csr.rs), `validity_duration` = the TTL in seconds (SECRET_TTL, 24 h by
 * default, src/config.rs), `ImpersonatedIdentity` in the request metadata (ztunnel sends it in
 * its shared, node-proxy mode), and the headers src/identity/auth.rs adds: `authorization: Bearer
 * <projected SA token, read from its file on every request>` and `clusterid`. The private key
 * stays in this process's memory: only the CSR (public key + SAN, signed) is sent, and nothing is
 * written to disk. The answer is verified (verify.ts) before it is returned.
 * The schema is ztunnel's proto/citadel.proto, vendored verbatim (vendor/istio/ztunnel/README.md).
 */
import { grpcTarget } from '../util/grpc.js';
import { clusterIdOf, type Env } from '../xds/node.js';
import 'reflect-metadata'; // required by @peculiar/x509 (tsyringe)
import { KeyObject, webcrypto } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as x509 from '@peculiar/x509';
import protobuf from 'protobufjs';
import { MeshError } from '../util/errors.js';
import { logger, type Logger } from '../util/log.js';
import type { IssuedCert } from './ca.js';
import type { IdentityProvider } from './provider.js';
import { spiffeUri, type Identity } from './spiffe.js';
import { splitPem, verifyIssuedChain } from './verify.js';

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

/** The vendored schema (two levels above this module both as source and as built JavaScript). */
export const CITADEL_PROTO = fileURLToPath(new URL('../../vendor/istio/ztunnel/proto/citadel.proto', import.meta.url));
export const CREATE_CERTIFICATE = '/istio.v1.auth.IstioCertificateService/CreateCertificate';
/** the metadata key istiod reads the impersonated identity from (caclient.rs) */
export const IMPERSONATED_IDENTITY = 'ImpersonatedIdentity';
/** ztunnel's defaults (src/config.rs): CA_ADDRESS, CA_ROOT_CA, AUTH_TOKEN, CLUSTER_ID, SECRET_TTL */
export const CA_DEFAULTS = {
  address: 'https://istiod.istio-system.svc:15012',
  rootCert: '/var/run/secrets/istio/root-cert.pem',
  token: '/var/run/secrets/tokens/istio-token',
  clusterId: 'Kubernetes',
  ttlMs: 24 * 3600_000,
} as const;

const root = new protobuf.Root().loadSync(CITADEL_PROTO, { keepCase: true });
const Req = root.lookupType('istio.v1.auth.IstioCertificateRequest');
const Resp = root.lookupType('istio.v1.auth.IstioCertificateResponse');

export interface CertificateRequest {
  csr: string;
  validity_duration: number;
  /** google.protobuf.Struct's string values, flattened */
  metadata: Record<string, string>;
}

/** CreateCertificate's request and response on the wire (shared with the test suite's fake istiod). */
export const caWire = {
  encodeRequest(r: CertificateRequest): Buffer {
    const fields = Object.fromEntries(Object.entries(r.metadata).map(([k, v]) => [k, { stringValue: v }]));
    const msg = { csr: r.csr, validity_duration: r.validity_duration, ...(Object.keys(fields).length ? { metadata: { fields } } : {}) };
    return Buffer.from(Req.encode(Req.fromObject(msg)).finish());
  },
  decodeRequest(b: Buffer): CertificateRequest {
    const o = Req.toObject(Req.decode(b), { longs: Number, defaults: true }) as { csr: string; validity_duration: number; metadata?: { fields?: Record<string, { stringValue?: string }> } };
    const metadata = Object.fromEntries(Object.entries(o.metadata?.fields ?? {}).map(([k, v]) => [k, v.stringValue ?? '']));
    return { csr: o.csr, validity_duration: o.validity_duration, metadata };
  },
  encodeResponse(certChain: string[]): Buffer {
    return Buffer.from(Resp.encode(Resp.fromObject({ cert_chain: certChain })).finish());
  },
  decodeResponse(b: Buffer): string[] {
    return (Resp.toObject(Resp.decode(b), { defaults: true }) as { cert_chain: string[] }).cert_chain;
  },
};

export interface IstioCaOptions {
  /** CA_ADDRESS: `https://host:port` (or `host:port`) */
  address: string;
  /** CA_ROOT_CA: PEM file with the root(s) istiod's serving certificate and the issued chains must lead to */
  rootCertFile: string;
  /** AUTH_TOKEN: the projected service account token (audience istio-ca); undefined sends none */
  tokenFile?: string;
  /** CLUSTER_ID, sent as the `clusterid` header with the token */
  clusterId?: string;
  trustDomain: string;
  /** ALT_CA_HOSTNAME: the name istiod's serving certificate is checked against instead of the address's host */
  altHostname?: string;
  /** each CreateCertificate's deadline (default 30 s) */
  timeoutMs?: number;
  now?: () => number;
  log?: Logger;
}

/** The Istio-mode flags of `inpod ztunnel`, named after ztunnel's environment variables. */
export interface CaFlags {
  'ca-address'?: string; // CA_ADDRESS
  'ca-root-ca'?: string; // CA_ROOT_CA
  'auth-token'?: string; // AUTH_TOKEN
  'cluster-id'?: string; // CLUSTER_ID
  'alt-ca-hostname'?: string; // ALT_CA_HOSTNAME
}

/**
 * The CA client's options from the flags, or undefined without --ca-address (the node-local CA
 * stays). As ztunnel's config.rs: the root defaults to /var/run/secrets/istio/root-cert.pem, the
 * token to /var/run/secrets/tokens/istio-token when that file exists (else none is sent).
 */
export function caOptionsFromFlags(f: CaFlags, trustDomain: string, exists: (p: string) => boolean = existsSync, env: Env = process.env): Omit<IstioCaOptions, 'log'> | undefined {
  const address = f['ca-address'];
  if (!address) return undefined;
  grpcTarget(address, '--ca-address');
  return {
    address,
    rootCertFile: f['ca-root-ca'] ?? CA_DEFAULTS.rootCert,
    tokenFile: f['auth-token'] ?? (exists(CA_DEFAULTS.token) ? CA_DEFAULTS.token : undefined),
    // as the xDS client: ISTIO_META_CLUSTER_ID, CLUSTER_ID, else Kubernetes (ztunnel config.rs)
    clusterId: f['cluster-id'] ?? clusterIdOf(env),
    altHostname: f['alt-ca-hostname'],
    trustDomain,
  };
}

export class IstioCaClient implements IdentityProvider {
  #rootPem: string;
  #client: grpc.Client;
  readonly #log: Logger;
  #closed = false;
  #reloading?: Promise<void>;

  private constructor(readonly trustDomain: string, rootPem: string, private readonly opts: IstioCaOptions) {
    this.#rootPem = rootPem;
    this.#client = IstioCaClient.#channel(opts, rootPem);
    this.#log = opts.log ?? logger('ca-client');
  }

  /** istiod's root as last read from the root file (it may be rotated: see issue()). */
  get rootPem(): string {
    return this.#rootPem;
  }

  /** Reads the root file and makes the (lazily connecting) channel; throws MeshError INPOD_ERR_CA/USAGE. */
  static open(opts: IstioCaOptions): IstioCaClient {
    let rootPem: string;
    try {
      rootPem = readFileSync(opts.rootCertFile, 'utf8');
    } catch (e) {
      throw new MeshError('INPOD_ERR_CA', `cannot read istiod's root certificate ${opts.rootCertFile} (${(e as Error).message}); mount the istio-ca-root-cert ConfigMap there or pass --ca-root-ca`, { cause: e });
    }
    if (splitPem(rootPem).length === 0) throw new MeshError('INPOD_ERR_CA', `${opts.rootCertFile} holds no PEM certificate; it should be istiod's root-cert.pem`);
    return new IstioCaClient(opts.trustDomain, rootPem, opts);
  }

  static #channel(opts: IstioCaOptions, rootPem: string): grpc.Client {
    const options: grpc.ChannelOptions = opts.altHostname ? { 'grpc.ssl_target_name_override': opts.altHostname, 'grpc.default_authority': opts.altHostname } : {};
    return new grpc.Client(grpcTarget(opts.address, '--ca-address'), grpc.credentials.createSsl(Buffer.from(rootPem)), options);
  }

  /**
   * A rotated root file (the istio-ca-root-cert ConfigMap updated in place) is taken before the
   * next request, as ztunnel's RootCertManager makes its CA client rebuild the channel
   * (src/tls/control.rs, caclient.rs): a new channel trusting the new root. A file that cannot
   * be read or holds no certificate keeps the old root and channel (logged).
   */
  async #reloadRoot(): Promise<void> {
    let pem: string;
    try {
      pem = await readFile(this.opts.rootCertFile, 'utf8');
    } catch (e) {
      this.#log.warn({ file: this.opts.rootCertFile, err: (e as Error).message }, 'cannot re-read istiod\'s root; keeping the one loaded');
      return;
    }
    if (pem === this.#rootPem) return;
    if (splitPem(pem).length === 0) {
      this.#log.warn({ file: this.opts.rootCertFile }, 'istiod\'s root file holds no certificate; keeping the one loaded');
      return;
    }
    const old = this.#client;
    this.#client = IstioCaClient.#channel(this.opts, pem);
    this.#rootPem = pem;
    old.close();
    this.#log.info({ file: this.opts.rootCertFile }, 'istiod\'s root changed: CA channel rebuilt');
  }

  async issue(id: Identity, ttlMs: number): Promise<IssuedCert> {
    if (this.#closed) throw new MeshError('INPOD_ERR_CA', 'the CA client is closed');
    const uri = spiffeUri(id);
    // the key pair lives in this process only: the CSR carries the public half
    const keys = (await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify'])) as CryptoKeyPair;
    const csr = await x509.Pkcs10CertificateRequestGenerator.create({
      keys,
      signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
      extensions: [new x509.SubjectAlternativeNameExtension([{ type: 'url', value: uri }], true)],
    });
    // one reload at a time: concurrent requests share it
    this.#reloading ??= this.#reloadRoot().finally(() => (this.#reloading = undefined));
    await this.#reloading;
    const request = caWire.encodeRequest({
      csr: csr.toString('pem'),
      validity_duration: Math.max(1, Math.round(ttlMs / 1000)),
      metadata: { [IMPERSONATED_IDENTITY]: uri },
    });
    const md = await this.#headers();
    const chain = await new Promise<string[]>((resolve, reject) => {
      this.#client.makeUnaryRequest(CREATE_CERTIFICATE, (b: Buffer) => b, (b: Buffer) => caWire.decodeResponse(b), request, md,
        { deadline: Date.now() + (this.opts.timeoutMs ?? 30_000) },
        (err, resp) => {
          if (err) {
            reject(new MeshError('INPOD_ERR_CA', `CreateCertificate for ${uri} at ${this.opts.address} failed: ${grpc.status[err.code] ?? err.code} ${err.details}; is istiod reachable and is its root ${this.opts.rootCertFile}?`, { retryable: true, cause: err }));
          } else resolve(resp ?? []);
        });
    });
    const v = verifyIssuedChain(chain, uri, this.rootPem, new Date((this.opts.now ?? Date.now)()));
    this.#log.debug({ identity: uri, serial: v.serial, notAfter: v.notAfter.toISOString() }, 'certificate issued by istiod');
    return { identity: uri, ...v, keyPem: KeyObject.from(keys.privateKey).export({ type: 'pkcs8', format: 'pem' }).toString() };
  }

  /** authorization + clusterid as ztunnel's AuthSource::Token, the token read afresh (kubelet rotates it). */
  async #headers(): Promise<grpc.Metadata> {
    const md = new grpc.Metadata();
    if (this.opts.tokenFile === undefined) return md;
    let token: string;
    try {
      token = (await readFile(this.opts.tokenFile, 'utf8')).trim();
    } catch (e) {
      throw new MeshError('INPOD_ERR_CA', `cannot read the service account token ${this.opts.tokenFile} (${(e as Error).message}); project a token with audience istio-ca there or pass --auth-token`, { retryable: true, cause: e });
    }
    if (!token) throw new MeshError('INPOD_ERR_CA', `the service account token file ${this.opts.tokenFile} is empty`, { retryable: true });
    md.set('authorization', `Bearer ${token}`);
    md.set('clusterid', this.opts.clusterId ?? CA_DEFAULTS.clusterId);
    return md;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#client.close();
  }
}
