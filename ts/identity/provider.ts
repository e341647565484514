/**
 * Where the proxy's workload certificates come from. CertManager (manager.ts) caches and rotates
 * them; an IdentityProvider only issues one when asked. Two implementations: LocalCa (ca.ts, a
 * node-local CA, the default) and IstioCaClient (istio-ca.ts, istiod's CA over gRPC, as
 * ztunnel's CaClient in src/identity/caclient.rs).
 */
import type { IssuedCert } from './ca.js';
import type { Identity } from './spiffe.js';

export interface IdentityProvider {
  readonly trustDomain: string;
  /** The PEM trust bundle HBONE peers' certificates are verified against. */
  readonly rootPem: string;
  /**
   * A certificate for `id`, asked to be valid for `ttlMs` (the CA may shorten it), with the
   * SPIFFE URI SAN of `id` and a key that never left this process. Rejects with a MeshError
   * (INPOD_ERR_CA; `retryable` when a later attempt may succeed); never resolves with a
   * certificate of another identity.
   */
  issue(id: Identity, ttlMs: number): Promise<IssuedCert>;
  /** Releases connections the provider holds (idempotent). */
  close?(): void;
}
