/**
 * The native HBONE byte path (`--byte-path native`): the addon's engine (addon/src/hbone_*.cc,
 * ts/native/hbone.ts) holds the TLS connections, their HTTP/2 sessions and the relays on its own
 * thread, and TypeScript keeps every decision, as with Node's path (client.ts, server.ts): the
 * peer's identity is checked here from the URI SANs the engine reports after it verified the
 * chain (the engine waits for the verdict before HTTP/2 starts); a CONNECT received is decided
 * by inbound.ts exactly as on Node's path; what is reported comes from the engine's byte counts
 * when a stream ends. The bytes of a tunnel never enter JavaScript.
 *
 * The client's socket (accepted on 15001) is handed to the engine as a copy and stays open in
 * Node (paused, never read) until the engine reports its stream closed: the listener still counts
 * it open and drains on it (handOver). Inbound, the app's socket is the engine's alone: made by
 * TypeScript after the policy decision with its connect() started, answered 200 by the engine
 * once connected (connectAndAccept); a policy update revoking it resets the stream.
 */
import type net from 'node:net';
import type { IssuedCert } from '../../identity/ca.js';
import type { CertManager } from '../../identity/manager.js';
import type { Identity } from '../../identity/spiffe.js';
import { HboneEngine, hboneTlsContext, type HboneEvent, type HboneTlsContextHandle as TlsContext } from '../../native/hbone.js';
import { dupFd, Fd } from '../../native/index.js';
import { MeshError } from '../../util/errors.js';
import { canonicalIp, socketAddr } from '../../util/sockaddr.js';
import { fdOf } from '../sockets.js';
import { connectHbonePeer, expectedPeer, statusError } from './client.js';
import { connectRequestHeaders, type ConnectHeaders } from './headers.js';
import { DEFAULT_HBONE_LIMITS, type HboneLimits } from './limits.js';
import { markUnprocessed, type HboneLink, type HboneRequest, type HboneSource, type HboneTunnel } from './link.js';
import type { RelayCounts } from '../relay.js';

/** How a stream the engine reports closed ended, as the relay's error (result.ts relayFailed reads the code). */
export function streamEnd(error: string): Error | undefined {
  if (error === '') return undefined;
  // a hang-up, as ztunnel's copy ignores it (result.ts HANG_UPS)
  if (error === 'reset' || error === 'reset by proxy' || error === 'connection closed') return Object.assign(new Error(`HBONE stream ${error}`), { code: 'ECONNRESET' });
  return Object.assign(new Error(`HBONE stream failed: ${error}`), { code: 'ERR_HTTP2_STREAM_ERROR' });
}

interface ConnWaiter {
  handshake(ev: Extract<HboneEvent, { kind: 'handshake' }>): void;
  ready(): void;
  closed(error: string): void;
}

interface TunnelWaiter {
  response?(status: number, headers: string[]): void;
  closed(sent: number, received: number, error: string): void;
}

/** What a listener's owner decides and is told (inbound.ts). */
export interface NativeListenerHooks {
  /** the handshake's peer: its identity when it may connect (this trust domain), else null (refused) */
  verify(uris: string[], remote: { ip: string; port: number }): Identity | null;
  /** a CONNECT on an admitted connection */
  request(s: NativeInboundStream): void;
  /** a connection admitted; the returned function is called once when it closes */
  opened?(): () => void;
}

/** One CONNECT a peer sent to a native listener, to be answered once. */
export interface NativeInboundStream {
  headers: Record<string, string>;
  peer: Identity;
  remote: { ip: string; port: number };
  localIp: string;
  /** the peer reset it, or it was answered already */
  gone(): boolean;
  /** answers `status` and ends the stream */
  refuse(status: number): void;
  /**
   * Answers 200 (with this workload's `baggage`) once the app's socket `fd`, its connect() under
   * way, has connected, and relays the stream to it; else 503. The engine owns `fd` from here.
   * `done` once at the end (aToB: stream to app); `connected: false` (and connect()'s error) when
   * the app could not be reached.
   */
  connectAndAccept(baggage: string, fd: number, done: (r: RelayCounts & { connected?: false }) => void): void;
  /** resets the stream (a policy update revoking the connection) */
  reset(): void;
}

/** A native listener (one pod's 15008). */
export interface NativeListener {
  /** serves `cert` to new connections (null: none, every handshake fails) */
  rotate(cert: Pick<IssuedCert, 'chainPem' | 'keyPem'> | null): void;
  /** GOAWAY to every connection; they close once their streams are over */
  drain(): void;
  /** stops accepting; `cb` once every connection it accepted has closed */
  close(cb: () => void): void;
}

export class NativeHbone {
  readonly #engine: HboneEngine;
  readonly #conns = new Map<number, ConnWaiter>();
  readonly #tunnels = new Map<number, TunnelWaiter>();
  /** accepted connections: their listener's hooks */
  readonly #accepted = new Map<number, { hooks: NativeListenerHooks; peer: Identity | null; remote: { ip: string; port: number }; localIp: string; listener: number; closed?: () => void }>();
  /** each listener's hooks and admitted connections; `draining` once its pod stopped; `onEmpty` when closed and empty */
  readonly #listeners = new Map<number, { hooks: NativeListenerHooks; conns: Set<number>; draining: boolean; onEmpty?: () => void }>();
  readonly #clientCtx = new WeakMap<IssuedCert, TlsContext>();
  #connSeq = 0;
  #tunnelSeq = 0;
  #listenerSeq = 0;
  readonly #limits: HboneLimits;

  /** `limits`: the engine's settings (HboneSettings), the same fields as Node's path reads */
  constructor(readonly certs: CertManager, limits: Partial<HboneLimits> = {}) {
    this.#limits = { ...DEFAULT_HBONE_LIMITS, ...limits };
    this.#engine = new HboneEngine((ev) => this.#event(ev));
    joinAtExit(this.#engine);
  }

  /**
   * Closes every connection now and stops the engine's thread (their ends are still reported;
   * a process exit waits for the thread).
   */
  close(): void {
    this.#engine.close();
  }

  /**
   * The engine's thread does not keep the process alive, and the sockets it relays are paused in
   * Node (which then does not either): while it holds a connection or a tunnel, this does (a
   * draining proxy exits once they end, not before).
   */
  #keepAlive(): void {
    const live = this.#conns.size + this.#listeners.size + this.#tunnels.size > 0;
    if (live !== this.#alive) this.#engine.keepAlive((this.#alive = live));
  }

  #alive = false;

  #event(ev: HboneEvent): void {
    this.#dispatch(ev);
    this.#keepAlive();
  }

  #dispatch(ev: HboneEvent): void {
    switch (ev.kind) {
      case 'handshake':
        if (ev.listener !== undefined) return this.#acceptedHandshake(ev);
        return this.#conns.get(ev.conn)?.handshake(ev);
      case 'ready':
        return this.#conns.get(ev.conn)?.ready();
      case 'connClosed': {
        const a = this.#accepted.get(ev.conn);
        if (a) {
          this.#accepted.delete(ev.conn);
          a.closed?.();
          this.#listeners.get(a.listener)?.conns.delete(ev.conn);
          return;
        }
        const c = this.#conns.get(ev.conn);
        this.#conns.delete(ev.conn);
        return c?.closed(ev.error);
      }
      case 'request':
        return this.#request(ev);
      case 'listenerClosed': {
        const l = this.#listeners.get(ev.listener);
        this.#listeners.delete(ev.listener);
        return l?.onEmpty?.();
      }
      case 'response':
        return this.#tunnels.get(ev.tunnel)?.response?.(ev.status, ev.headers);
      case 'closed': {
        const t = this.#tunnels.get(ev.tunnel);
        this.#tunnels.delete(ev.tunnel);
        return t?.closed(ev.sent, ev.received, ev.error);
      }
    }
  }

  /** The pool's dialer for the native path: as client.ts dialHbone, the bytes then the engine's. */
  dialer(connectTimeoutMs = 10_000): (src: HboneSource, req: HboneRequest) => Promise<HboneLink> {
    return (src, req) => this.#dial(src, req, connectTimeoutMs);
  }

  async #dial(src: HboneSource, req: HboneRequest, connectTimeoutMs: number): Promise<HboneLink> {
    // the source's own certificate first (MeshError INPOD_ERR_CA: nothing is connected)
    const cert = await this.certs.get(src.identity);
    const sock = await connectHbonePeer(src, req, connectTimeoutMs, true);
    let fd: number;
    try {
      fd = dupFd(fdOf(sock));
    } finally {
      sock.destroy(); // the engine's copy of the fd keeps the connection
    }
    let ctx = this.#clientCtx.get(cert);
    if (!ctx) {
      ctx = hboneTlsContext({ certPem: cert.chainPem, keyPem: cert.keyPem, rootPem: this.certs.rootPem, server: false });
      this.#clientCtx.set(cert, ctx);
    }
    const id = ++this.#connSeq;
    const t = socketAddr(req.target);
    return new Promise<HboneLink>((resolve, reject) => {
      let link: NativeLink | undefined;
      let refused: MeshError | undefined;
      this.#conns.set(id, {
        handshake: (ev) => {
          const v = expectedPeer(ev.uris, req);
          if (v instanceof MeshError) refused = v;
          else link = new NativeLink(this.#engine, this.#tunnels, () => ++this.#tunnelSeq, id, v);
          this.#engine.verdict(id, !refused);
        },
        ready: () => {
          if (!link) return;
          link.ready = true;
          resolve(link);
        },
        closed: (error) => {
          if (link?.ready) return link.gone();
          reject(refused ?? new MeshError('INPOD_ERR_HBONE_TLS', `TLS to ${t} failed: ${error || 'connection closed during the handshake'}`));
        },
      });
      this.#engine.client(id, fd, ctx, this.#limits);
      this.#keepAlive();
    });
  }

  /** Serves HBONE on the listening socket `fd` (the engine owns it) with `cert` (null: none). */
  listen(fd: number, cert: Pick<IssuedCert, 'chainPem' | 'keyPem'> | null, hooks: NativeListenerHooks): NativeListener {
    const id = ++this.#listenerSeq;
    const l = { hooks, conns: new Set<number>(), draining: false, onEmpty: undefined as (() => void) | undefined };
    this.#listeners.set(id, l);
    this.#engine.listen(id, fd, this.#serverCtx(cert), this.#limits);
    return {
      rotate: (c) => this.#engine.listenerContext(id, this.#serverCtx(c)),
      drain: () => {
        l.draining = true;
        for (const conn of l.conns) this.#engine.connClose(conn, true);
      },
      // once every connection it accepted has closed, handshaking ones included (the engine says)
      close: (cb) => {
        l.onEmpty = cb;
        this.#engine.unlisten(id);
      },
    };
  }

  #serverCtx(cert: Pick<IssuedCert, 'chainPem' | 'keyPem'> | null): TlsContext {
    return hboneTlsContext({ certPem: cert?.chainPem ?? '', keyPem: cert?.keyPem ?? '', rootPem: this.certs.rootPem, server: true });
  }

  #acceptedHandshake(ev: Extract<HboneEvent, { kind: 'handshake' }>): void {
    const l = this.#listeners.get(ev.listener!);
    const hooks = l?.hooks;
    // the listener is dual-stack: an IPv4 peer is reported IPv4-mapped (as Node's path reads it, util/sockaddr.ts)
    const remote = { ip: canonicalIp(ev.remote.ip), port: ev.remote.port };
    const peer = hooks?.verify(ev.uris, remote) ?? null;
    if (!l || !hooks) return this.#engine.verdict(ev.conn, false);
    l.conns.add(ev.conn);
    this.#accepted.set(ev.conn, { hooks, peer, remote, localIp: canonicalIp(ev.local.ip), listener: ev.listener!, closed: peer ? hooks.opened?.() : undefined });
    this.#engine.verdict(ev.conn, peer !== null);
    // a handshake that was under way when the pod stopped: served, and told GOAWAY at once (as Node's path)
    if (peer && l.draining) this.#engine.connClose(ev.conn, true);
  }

  #request(ev: Extract<HboneEvent, { kind: 'request' }>): void {
    const a = this.#accepted.get(ev.conn);
    if (!a?.peer) return this.#engine.respond(ev.tunnel, 503, [], -1);
    const headers: Record<string, string> = Object.create(null) as Record<string, string>; // a peer's names: no prototype to meet
    for (let i = 0; i + 1 < ev.headers.length; i += 2) headers[ev.headers[i]!] ??= ev.headers[i + 1]!;
    let answered = false;
    // the stream's end, when the engine reported it before it was answered (the peer reset it)
    let ended: { error: string } | undefined;
    let onEnd: ((sent: number, received: number, error: string) => void) | undefined;
    this.#tunnels.set(ev.tunnel, {
      closed: (sent, received, error) => {
        if (onEnd) onEnd(sent, received, error);
        else ended = { error };
      },
    });
    const engine = this.#engine;
    const gone = (): boolean => answered || ended !== undefined;
    a.hooks.request({
      headers, peer: a.peer, remote: a.remote, localIp: a.localIp,
      gone,
      refuse: (status) => {
        if (gone()) return;
        answered = true;
        engine.respond(ev.tunnel, status, [], -1);
      },
      connectAndAccept: (baggage, fd, done) => {
        if (gone()) {
          new Fd(fd).close();
          return done({ aToB: 0, bToA: 0, error: streamEnd(ended?.error || 'reset') });
        }
        answered = true;
        onEnd = (sent, received, error) => {
          if (error.startsWith('connect: ')) return done({ aToB: 0, bToA: 0, error: new Error(error.slice(9)), connected: false });
          done({ aToB: received, bToA: sent, error: streamEnd(error) });
        };
        engine.respond(ev.tunnel, 200, ['baggage', baggage], fd, true);
      },
      reset: () => engine.reset(ev.tunnel),
    });
  }
}

/** The engines of this process: an exit (at the drain deadline, or on an error) stops their threads first. */
const engines = new Set<HboneEngine>();

function joinAtExit(e: HboneEngine): void {
  if (engines.size === 0) {
    process.once('exit', () => {
      for (const x of engines) x.close({ wait: true });
    });
  }
  engines.add(e);
}

/** A copy of `s`'s fd for the engine; `s` stays open in Node, paused, until the stream ends. */
function handOver(s: net.Socket): number {
  s.pause();
  return dupFd(fdOf(s));
}

/** One native client connection, as the pool's link. */
class NativeLink implements HboneLink {
  ready = false;
  #closing = false;
  #gone = false;
  readonly #onClose: (() => void)[] = [];

  constructor(
    private readonly engine: HboneEngine,
    private readonly tunnels: Map<number, TunnelWaiter>,
    private readonly nextTunnel: () => number,
    readonly id: number,
    readonly peerIdentity: string,
  ) {}

  get closed(): boolean {
    return this.#closing || this.#gone;
  }

  close(): void {
    if (this.closed) return;
    this.#closing = true;
    this.engine.connClose(this.id, true);
  }

  destroy(): void {
    if (this.#gone) return;
    this.#closing = true;
    this.engine.connClose(this.id, false);
  }

  onClose(cb: () => void): void {
    if (this.#gone) return void queueMicrotask(cb);
    this.#onClose.push(cb);
  }

  /** the engine reported the connection closed */
  gone(): void {
    this.#gone = true;
    for (const cb of this.#onClose.splice(0)) cb();
  }

  connect(req: HboneRequest, headers: ConnectHeaders, done: () => void): Promise<HboneTunnel> {
    const tid = this.nextTunnel();
    const engine = this.engine;
    return new Promise((resolve, reject) => {
      let down: { sock: net.Socket; cb: (r: RelayCounts) => void } | undefined;
      // the stream's end, when the engine reported it before the relay was given the client's socket
      let ended: { error: string } | undefined;
      let responded = false;
      this.tunnels.set(tid, {
        response: (status) => {
          responded = true;
          if (status !== 200) return reject(statusError(status, req));
          resolve({
            relay: (sock, cb) => {
              if (ended) {
                sock.resetAndDestroy();
                return cb({ aToB: 0, bToA: 0, error: streamEnd(ended.error || 'reset') });
              }
              down = { sock, cb };
              engine.relay(tid, handOver(sock));
            },
          });
        },
        closed: (sent, received, error) => {
          // the peer did not process it: it sent GOAWAY (draining) or refused the stream; this
          // connection takes no new stream, so the pool's retry dials another (as Node's path,
          // where a GOAWAY closes the session to new streams)
          if (error === 'refused') this.#closing = true;
          done();
          if (!responded) {
            // 'refused': the peer never processed it, or its connection was already gone (the
            // engine says so only when nothing was sent): safe to open once more elsewhere
            return reject(markUnprocessed(new MeshError('INPOD_ERR_HBONE', `HBONE stream to ${socketAddr(req.authority)} closed before a response (${error || 'no error'})`), error === 'refused'));
          }
          if (!down) return void (ended = { error });
          down.sock.destroy();
          down.cb({ aToB: sent, bToA: received, error: streamEnd(error) });
        },
      });
      engine.open(this.id, tid, Object.entries(connectRequestHeaders(req.authority, headers)).flat());
    });
  }
}
