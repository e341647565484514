/**
 * Workload certificates for the identities with pods on this node: issued on first use, cached,
 * and replaced once half their lifetime has passed (Istio rotates at the same point), so a
 * connection never starts with a certificate about to expire. Concurrent requests for one
 * identity share one issuance.
 */
import { spiffeUri, type Identity } from './spiffe.js';
import type { IssuedCert, LocalCa } from './ca.js';

export interface CertManagerOptions {
  ttlMs?: number; // default 24 h, as Istio
  now?: () => number;
}

export class CertManager {
  readonly #ca: LocalCa;
  readonly #ttl: number;
  readonly #now: () => number;
  readonly #cache = new Map<string, Promise<IssuedCert>>();

  constructor(ca: LocalCa, opts: CertManagerOptions = {}) {
    this.#ca = ca;
    this.#ttl = opts.ttlMs ?? 24 * 3600_000;
    this.#now = opts.now ?? Date.now;
  }

  get rootPem(): string {
    return this.#ca.rootPem;
  }

  get trustDomain(): string {
    return this.#ca.trustDomain;
  }

  /** The current certificate for `id`, issuing or rotating it when needed. */
  async get(id: Identity): Promise<IssuedCert> {
    const key = spiffeUri(id);
    const cached = this.#cache.get(key);
    if (cached) {
      const c = await cached.catch(() => null);
      if (c && this.#fresh(c)) return c;
    }
    const p = this.#ca.issue(id, this.#ttl);
    this.#cache.set(key, p);
    p.catch(() => this.#cache.delete(key));
    return p;
  }

  #fresh(c: IssuedCert): boolean {
    const half = c.notBefore.getTime() + (c.notAfter.getTime() - c.notBefore.getTime()) / 2;
    return this.#now() < half;
  }

  /** Every certificate currently held (for /config_dump; never the keys). */
  async list(): Promise<Omit<IssuedCert, 'keyPem'>[]> {
    const out: Omit<IssuedCert, 'keyPem'>[] = [];
    for (const p of this.#cache.values()) {
      const c = await p.catch(() => null);
      if (c) {
        const { keyPem: _k, ...pub } = c;
        out.push(pub);
      }
    }
    return out;
  }
}
