/**
 * Workload certificates for the identities with pods on this node, on ztunnel's schedule
 * (src/identity/manager.rs SecretManager):
 * - the first request for an identity fetches its certificate from the IdentityProvider and
 *   waits for that fetch; concurrent requests share it;
 * - a certificate is refreshed in the background once half its lifetime has passed (notBefore +
 *   (notAfter - notBefore) / 2, ztunnel's WorkloadCertificate::refresh_at); a request that
 *   finds it past that point (the timer is late) waits for the refresh;
 * - a failed fetch is retried with a per-identity exponential backoff: 1 s, then doubling, capped
 *   at 150 s, each randomized by +/-20% (ztunnel's ExponentialBackoff settings), reset by a success;
 * - while the previous certificate is still valid it is kept and served (the retry is brought
 *   forward to its expiry if that comes first); once none is valid, requests fail at once with
 *   the last error (ztunnel's CertState::Unavailable) until a retry succeeds. A request never
 *   gets a certificate of another identity, nor an expired one.
 */
import { MeshError } from '../util/errors.js';
import { logger, type Logger } from '../util/log.js';
import type { IssuedCert } from './ca.js';
import type { IdentityProvider } from './provider.js';
import { spiffeUri, type Identity } from './spiffe.js';

/** ztunnel's backoff (manager.rs): first retry after 1 s, x2 each time, capped at 150 s, +/-20% */
export interface RetrySchedule {
  firstMs: number;
  multiplier: number;
  maxMs: number;
  jitter: number;
}
export const CERT_RETRY: Readonly<RetrySchedule> = { firstMs: 1000, multiplier: 2, maxMs: 150_000, jitter: 0.2 };
/** setTimeout's largest delay; a later refresh is re-armed when it fires */
const MAX_TIMER_MS = 2 ** 31 - 1;

export interface CertManagerOptions {
  ttlMs?: number; // default 24 h, as Istio (SECRET_TTL)
  now?: () => number;
  /** [0, 1) source for the backoff's randomization (tests pass () => 0.5: no jitter) */
  random?: () => number;
  /** overrides of CERT_RETRY (tests shorten it) */
  retry?: Partial<RetrySchedule>;
  log?: Logger;
}

/** The delay before retry number `attempt` (1-based) after consecutive failures: pure. */
export function retryDelayMs(attempt: number, random: number, retry: Readonly<RetrySchedule> = CERT_RETRY): number {
  const base = Math.min(retry.firstMs * retry.multiplier ** Math.max(0, attempt - 1), retry.maxMs);
  return Math.round(base * (1 - retry.jitter + 2 * retry.jitter * random));
}

/** When `c` is to be replaced: half way through its validity (ztunnel's refresh_at). */
export function refreshAt(c: Pick<IssuedCert, 'notBefore' | 'notAfter'>): number {
  const nb = c.notBefore.getTime();
  const na = c.notAfter.getTime();
  return na > nb ? nb + (na - nb) / 2 : na;
}

interface Entry {
  id: Identity;
  /** the last certificate issued (may have expired: checked on use) */
  cert?: IssuedCert;
  /** the last failure, while no valid certificate is held */
  error?: MeshError;
  fetching?: Promise<void>;
  timer?: NodeJS.Timeout;
  /** consecutive failed fetches (the backoff's position) */
  failures: number;
}

export class CertManager {
  readonly #provider: IdentityProvider;
  readonly #ttl: number;
  readonly #now: () => number;
  readonly #random: () => number;
  readonly #retry: Readonly<RetrySchedule>;
  readonly #log: Logger;
  readonly #entries = new Map<string, Entry>();
  #closed = false;

  constructor(provider: IdentityProvider, opts: CertManagerOptions = {}) {
    this.#provider = provider;
    this.#ttl = opts.ttlMs ?? 24 * 3600_000;
    this.#now = opts.now ?? Date.now;
    this.#random = opts.random ?? Math.random;
    this.#retry = { ...CERT_RETRY, ...opts.retry };
    this.#log = opts.log ?? logger('certs');
  }

  get rootPem(): string {
    return this.#provider.rootPem;
  }

  get trustDomain(): string {
    return this.#provider.trustDomain;
  }

  /**
   * The current certificate for `id`. Waits for a first fetch or an overdue refresh; rejects with
   * MeshError INPOD_ERR_CA (retryable) when no valid certificate of `id` can be had now.
   */
  async get(id: Identity): Promise<IssuedCert> {
    if (this.#closed) throw new MeshError('INPOD_ERR_CA', 'the certificate manager is closed');
    const key = spiffeUri(id);
    let e = this.#entries.get(key);
    if (!e) {
      e = { id, failures: 0 };
      this.#entries.set(key, e);
    }
    const now = this.#now();
    if (e.cert && now < refreshAt(e.cert)) return e.cert;
    if (!e.fetching && (e.cert || !e.error)) this.#fetch(key, e);
    if (e.fetching) await e.fetching;
    const valid = e.cert && this.#now() < e.cert.notAfter.getTime() ? e.cert : undefined;
    if (valid) return valid;
    throw e.error ?? new MeshError('INPOD_ERR_CA', `no valid certificate for ${key}`, { retryable: true });
  }

  /** Starts one fetch for `e`; its outcome updates the entry and schedules the next one. */
  #fetch(key: string, e: Entry): void {
    clearTimeout(e.timer);
    e.timer = undefined;
    e.fetching = this.#provider.issue(e.id, this.#ttl).then(
      (c) => {
        if (c.identity !== key) throw new MeshError('INPOD_ERR_CA', `the identity provider returned a certificate for ${c.identity} when asked for ${key}`);
        return c;
      },
    ).then(
      (c) => {
        e.cert = c;
        e.error = undefined;
        e.failures = 0;
        this.#schedule(key, e, refreshAt(c) - this.#now());
        this.#log.debug({ identity: key, serial: c.serial, refreshAt: new Date(refreshAt(c)).toISOString() }, 'certificate ready');
      },
      (err: unknown) => {
        e.failures++;
        const delay = retryDelayMs(e.failures, this.#random(), this.#retry);
        const cause = err instanceof MeshError ? err : new MeshError('INPOD_ERR_CA', `certificate for ${key} failed: ${(err as Error).message}`, { retryable: true, cause: err });
        const left = e.cert ? e.cert.notAfter.getTime() - this.#now() : 0;
        if (left > 0) {
          this.#log.info({ identity: key, err: cause.message, retryInMs: Math.min(delay, left) }, 'certificate renewal failed; keeping the valid one');
          this.#schedule(key, e, Math.min(delay, left));
        } else {
          e.cert = undefined;
          e.error = new MeshError('INPOD_ERR_CA', `no certificate for ${key}: ${cause.message} (retry ${e.failures} in ${delay} ms)`, { retryable: true, cause });
          this.#log.warn({ identity: key, err: cause.message, retryInMs: delay }, 'certificate fetch failed and no valid certificate is held');
          this.#schedule(key, e, delay);
        }
      },
    ).finally(() => {
      e.fetching = undefined;
    });
  }

  #schedule(key: string, e: Entry, ms: number): void {
    if (this.#closed || this.#entries.get(key) !== e) return;
    clearTimeout(e.timer);
    const wait = Math.max(0, Math.min(ms, MAX_TIMER_MS));
    e.timer = setTimeout(() => {
      e.timer = undefined;
      if (e.fetching) return;
      if (e.cert && !e.error && wait === MAX_TIMER_MS && this.#now() < refreshAt(e.cert)) return this.#schedule(key, e, refreshAt(e.cert) - this.#now());
      this.#fetch(key, e);
    }, wait);
    e.timer.unref();
  }

  /** Stops managing `id` (its last pod left the node, ztunnel's forget_certificate). */
  forget(id: Identity): void {
    const key = spiffeUri(id);
    const e = this.#entries.get(key);
    if (!e) return;
    clearTimeout(e.timer);
    this.#entries.delete(key);
  }

  /** Stops every refresh and closes the provider; later get()s reject. Idempotent. */
  close(): void {
    this.#closed = true;
    for (const e of this.#entries.values()) clearTimeout(e.timer);
    this.#entries.clear();
    this.#provider.close?.();
  }

  /** Every certificate currently held (for /config_dump; never the keys). */
  async list(): Promise<Omit<IssuedCert, 'keyPem'>[]> {
    const out: Omit<IssuedCert, 'keyPem'>[] = [];
    for (const e of this.#entries.values()) {
      if (!e.cert) continue;
      const { keyPem: _k, ...pub } = e.cert;
      out.push(pub);
    }
    return out;
  }
}
