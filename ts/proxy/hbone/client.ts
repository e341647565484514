/**
 * HBONE client: HTTP/2 CONNECT over mutual TLS 1.3 (ALPN h2) to a peer's 15008, with the
 * connections pooled per (source sandbox, source pod IP, source identity, destination identity,
 * destination address), as ztunnel's WorkloadKey (src/proxy/h2/client.rs) inside its per-pod
 * proxies (src/proxy/outbound.rs), and at most 100 streams each. The TCP connection is made
 * inside the source pod's netns (mark 0x539), so it leaves with the pod's own address: two pods
 * of one service account, or two sandboxes of one pod, never share one. The peer must present one of
 * the expected SPIFFE identities; a mismatch names both. Every pooled connection runs ztunnel's
 * PING keepalive (limits.ts).
 */
import http2, { type ClientHttp2Session, type ClientHttp2Stream } from 'node:http2';
import tls from 'node:tls';
import { randomBytes } from 'node:crypto';
import { MeshError } from '../../util/errors.js';
import type { CertManager } from '../../identity/manager.js';
import { spiffeUri, uriSans, type Identity } from '../../identity/spiffe.js';
import { connectIn, PROXY_MARK } from '../sockets.js';
import type { Addr } from '../route.js';
import { DEFAULT_HBONE_LIMITS, keepAlive, type HboneLimits } from './limits.js';

export const MAX_STREAMS_PER_CONNECTION = 100;

export interface HboneSource {
  /** the sandbox being served (one PodProxy): connections are never shared across sandboxes */
  owner: string;
  nsFd: number;
  identity: Identity;
  /** the source pod's IP: sent in `forwarded`, and part of the pool key */
  ip: string;
  /** `baggage` describing the source workload */
  baggage: string;
}

export interface HboneRequest {
  target: Addr;
  authority: Addr;
  identities: string[];
}

interface PooledSession {
  session: ClientHttp2Session;
  active: number;
  peerIdentity: string;
  idleTimer?: NodeJS.Timeout;
}

export interface HbonePoolOptions {
  certs: CertManager;
  connectTimeoutMs?: number;
  idleTimeoutMs?: number;
  /** PING keepalive of pooled connections */
  limits?: Partial<Pick<HboneLimits, 'pingIntervalMs' | 'pingTimeoutMs'>>;
}

export interface Tunnel {
  stream: ClientHttp2Stream;
  peerIdentity: string;
}

export class HbonePool {
  readonly #sessions = new Map<string, PooledSession[]>();
  readonly #pending = new Map<string, Promise<PooledSession>>();
  readonly #opts: Required<Omit<HbonePoolOptions, 'limits'>>;
  readonly #keepalive: Pick<HboneLimits, 'pingIntervalMs' | 'pingTimeoutMs'>;

  constructor(opts: HbonePoolOptions) {
    const { limits, ...rest } = opts;
    this.#opts = { connectTimeoutMs: 10_000, idleTimeoutMs: 30_000, ...rest };
    this.#keepalive = { ...DEFAULT_HBONE_LIMITS, ...limits };
  }

  /** The most streams any one pooled connection carried at once. */
  maxStreamsSeen = 0;

  /** Number of live pooled connections (for tests and config_dump). */
  get size(): number {
    let n = 0;
    for (const l of this.#sessions.values()) n += l.length;
    return n;
  }

  /** Opens a CONNECT stream to `req.authority` through `req.target`; resolves after the 200. */
  async open(src: HboneSource, req: HboneRequest): Promise<Tunnel> {
    const key = `${src.owner}|${src.ip}|${spiffeUri(src.identity)}|${req.identities[0]}|${req.target.ip}:${req.target.port}`;
    const ps = await this.#session(key, src, req);
    ps.active++;
    if (ps.active > this.maxStreamsSeen) this.maxStreamsSeen = ps.active;
    clearTimeout(ps.idleTimer);
    const stream = ps.session.request(
      {
        ':method': 'CONNECT',
        ':authority': `${req.authority.ip}:${req.authority.port}`,
        forwarded: `for="${src.ip}"`,
        baggage: src.baggage,
        traceparent: `00-${randomBytes(16).toString('hex')}-${randomBytes(8).toString('hex')}-01`,
      },
      { endStream: false },
    );
    stream.once('close', () => this.#release(ps));
    const status = await new Promise<number>((resolve, reject) => {
      stream.once('response', (h) => resolve(Number(h[':status'])));
      stream.once('error', reject);
      stream.once('close', () => reject(new MeshError('INPOD_ERR_HBONE', `HBONE stream to ${req.authority.ip}:${req.authority.port} closed before a response (rst code ${stream.rstCode})`)));
    });
    if (status !== 200) {
      stream.close();
      const why = status === 401 ? 'denied by authorization policy at the destination' : status === 400 ? 'rejected as malformed' : 'refused';
      throw new MeshError(status === 401 ? 'INPOD_ERR_HBONE_DENIED' : 'INPOD_ERR_HBONE', `HBONE CONNECT to ${req.authority.ip}:${req.authority.port} via ${req.target.ip}:${req.target.port} answered ${status}: ${why}`);
    }
    return { stream, peerIdentity: ps.peerIdentity };
  }

  async #session(key: string, src: HboneSource, req: HboneRequest): Promise<PooledSession> {
    const live = (this.#sessions.get(key) ?? []).filter((s) => !s.session.closed && !s.session.destroyed);
    this.#sessions.set(key, live);
    const free = live.find((s) => s.active < MAX_STREAMS_PER_CONNECTION);
    if (free) return free;
    // concurrent openers share one new connection instead of racing to make many
    let p = this.#pending.get(key);
    if (!p) {
      p = this.#dial(src, req).finally(() => this.#pending.delete(key));
      this.#pending.set(key, p);
      const ps = await p;
      this.#sessions.get(key)?.push(ps) ?? this.#sessions.set(key, [ps]);
      ps.session.once('close', () => this.#sessions.set(key, (this.#sessions.get(key) ?? []).filter((x) => x !== ps)));
      return ps;
    }
    const ps = await p;
    return ps.active < MAX_STREAMS_PER_CONNECTION ? ps : this.#session(key, src, req);
  }

  async #dial(src: HboneSource, req: HboneRequest): Promise<PooledSession> {
    const t = `${req.target.ip}:${req.target.port}`;
    let sock;
    try {
      sock = await connectIn(src.nsFd, req.target, { mark: PROXY_MARK, timeoutMs: this.#opts.connectTimeoutMs });
    } catch (e) {
      const code = (e as { code?: string }).code;
      const hint = code === 'ETIMEDOUT' ? 'timed out; is a NetworkPolicy blocking HBONE (port 15008)?' : code === 'ECONNREFUSED' ? 'was refused; is the destination proxy running and the pod enrolled?' : `failed (${code ?? (e as Error).message})`;
      throw new MeshError('INPOD_ERR_HBONE_CONNECT', `connection to ${t} ${hint}`, { retryable: true, cause: e });
    }
    const cert = await this.#opts.certs.get(src.identity);
    let peerIdentity = '';
    const tlsSock = tls.connect({
      socket: sock,
      cert: cert.chainPem,
      key: cert.keyPem,
      ca: this.#opts.certs.rootPem,
      ALPNProtocols: ['h2'],
      minVersion: 'TLSv1.3',
      maxVersion: 'TLSv1.3',
      checkServerIdentity: (_host, peer) => {
        const uris = uriSans(peer.subjectaltname);
        const match = uris.find((u) => req.identities.includes(u));
        if (!match) {
          return new MeshError('INPOD_ERR_HBONE_IDENTITY', `peer ${t} presented ${uris.join(', ') || 'no SPIFFE identity'}, expected ${req.identities.join(' or ')}`);
        }
        peerIdentity = match;
        return undefined;
      },
    });
    await new Promise<void>((resolve, reject) => {
      tlsSock.once('secureConnect', () => resolve());
      tlsSock.once('error', (e) => reject(e instanceof MeshError ? e : new MeshError('INPOD_ERR_HBONE_TLS', `TLS to ${t} failed: ${e.message}`, { cause: e })));
    });
    if (tlsSock.alpnProtocol !== 'h2') {
      tlsSock.destroy();
      throw new MeshError('INPOD_ERR_HBONE_TLS', `peer ${t} did not negotiate h2 (got ${String(tlsSock.alpnProtocol)})`);
    }
    const session = http2.connect(`https://${t}`, { createConnection: () => tlsSock, settings: { enablePush: false } });
    session.on('error', () => session.destroy());
    await new Promise<void>((resolve, reject) => {
      session.once('connect', () => resolve());
      session.once('error', reject);
    });
    keepAlive(session, this.#keepalive);
    return { session, active: 0, peerIdentity };
  }

  #release(ps: PooledSession): void {
    ps.active--;
    if (ps.active > 0) return;
    clearTimeout(ps.idleTimer);
    ps.idleTimer = setTimeout(() => {
      if (ps.active === 0) ps.session.close();
    }, this.#opts.idleTimeoutMs);
    ps.idleTimer.unref();
  }

  /**
   * A sandbox is no longer served: its pooled connections take no new streams and close once
   * their open streams end.
   */
  retire(owner: string): void {
    for (const [key, l] of this.#sessions) {
      if (!key.startsWith(`${owner}|`)) continue;
      for (const s of l) s.session.close();
      this.#sessions.delete(key);
    }
  }

  close(): void {
    for (const l of this.#sessions.values()) for (const s of l) s.session.destroy();
    this.#sessions.clear();
  }
}
