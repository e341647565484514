/**
 * One enrolled pod as the proxy serves it: listeners opened inside the pod's netns on 15001
 * (outbound), 15006 (inbound plaintext) and 15008 (HBONE, mTLS with the pod's own identity).
 * Created on ZDS Add; closed on Del. Connections already open are left to finish.
 */
import type { Http2SecureServer, ServerHttp2Stream } from 'node:http2';
import net from 'node:net';
import { isIPv4 } from 'node:net';
import { socketInNs, type Fd } from '../native/index.js';
import type { CertManager } from '../identity/manager.js';
import { spiffeUri, type Identity } from '../identity/spiffe.js';
import type { StateStore } from '../state/store.js';
import type { Logger } from '../util/log.js';
import { connectIn, isOwnUpstream, listenIn, nodeAddresses, originalDestination, relay, PROXY_MARK } from './sockets.js';
import { buildRoute, isSelfCall, type Addr, type OwnAddresses } from './route.js';
import { MeshError } from '../util/errors.js';
import type { HbonePool } from './hbone/client.js';
import { createHboneServer, type HboneStreamContext } from './hbone/server.js';
import type { HboneLimits } from './hbone/limits.js';
import type { FastPath, RelayResult } from './fastpath.js';
import type { ConnContext, ConnRecord, ProxyHooks } from './hooks.js';

export const OUTBOUND_PORT = 15001;
export const INBOUND_PORT = 15006;
export const HBONE_PORT = 15008;

export interface PodInfo {
  uid: string;
  name: string;
  namespace: string;
  serviceAccount: string;
}

export interface PodDeps {
  state: StateStore;
  certs: CertManager;
  pool: HbonePool;
  hooks: ProxyHooks;
  log: Logger;
  trustDomain: string;
  /** splices passthrough and plaintext-inbound connections in the kernel (or relays in userspace) */
  fastPath: FastPath;
  /**
   * The pod at `ip` when this proxy serves it and same-node delivery is on: then a connection to
   * it skips HBONE (see #sameNode).
   */
  localPod?: (ip: string) => PodProxy | undefined;
  /** the HBONE server's per-peer limits (defaults: hbone/limits.ts) */
  hboneLimits?: Partial<HboneLimits>;
}

let sandboxes = 0;

export class PodProxy {
  readonly identity: Identity;
  readonly #servers: (net.Server | Http2SecureServer)[] = [];
  readonly #log: Logger;
  #certTimer?: NodeJS.Timeout;
  #certSerial = '';
  readonly listeners: Record<string, number> = {};
  /** this sandbox's key in the HBONE pool (its connections are retired when it stops) */
  readonly #poolOwner: string;

  constructor(readonly info: PodInfo, readonly netns: Fd, private readonly deps: PodDeps) {
    this.identity = { trustDomain: deps.trustDomain, namespace: info.namespace, serviceAccount: info.serviceAccount };
    this.#poolOwner = `${info.uid}#${++sandboxes}`;
    this.#log = deps.log.child({ ns: info.namespace, pod: info.name, uid: info.uid });
  }

  get pod(): ConnContext['pod'] {
    return { uid: this.info.uid, name: this.info.name, namespace: this.info.namespace };
  }

  /** Opens the three listeners inside the pod netns. Throws if any cannot be opened. */
  async start(): Promise<void> {
    try {
      const ns = this.netns.fd;
      // paused: a connection that ends up spliced must not have been read by Node
      this.#servers.push(await listenIn(ns, OUTBOUND_PORT, (s) => this.#guard(s, this.#outbound(s)), '0.0.0.0', true));
      this.listeners.outbound = OUTBOUND_PORT;
      this.#servers.push(await listenIn(ns, INBOUND_PORT, (s) => this.#guard(s, this.#inboundPlain(s)), '0.0.0.0', true));
      this.listeners.inbound = INBOUND_PORT;
      this.#servers.push(await this.#hboneServer(ns));
      this.listeners.hbone = HBONE_PORT;
      this.#log.info({ listeners: this.listeners }, 'pod listeners open');
    } catch (e) {
      this.stop();
      throw e;
    }
  }

  /** Closes the listeners; open connections finish on their own. Idempotent. */
  stop(): void {
    clearInterval(this.#certTimer);
    this.deps.pool.retire(this.#poolOwner);
    for (const s of this.#servers.splice(0)) s.close();
    if (!this.netns.closed) this.netns.close();
  }

  /** A failure while serving one connection ends that connection only, logged; never the process. */
  #guard(down: net.Socket, serving: Promise<void>): void {
    serving.catch((e: Error) => {
      this.#log.error({ err: e.message, stack: e.stack }, 'connection handler failed; connection reset');
      if (!down.destroyed) down.resetAndDestroy();
    });
  }

  /**
   * Where a captured connection was going, or null when it must be refused: it has no recorded
   * original destination, or that destination is the proxy itself (a loop, or a pod reaching the
   * proxy's own ports through it). A refusal resets the client and is logged, never a fallback.
   */
  #destination(down: net.Socket, direction: 'inbound' | 'outbound'): Addr | null {
    const from = { ip: down.remoteAddress ?? '', port: down.remotePort ?? 0 };
    let dst: Addr;
    try {
      dst = originalDestination(down);
    } catch (e) {
      this.#log.warn({ direction, src: from, err: (e as Error).message, code: (e as MeshError).code }, 'connection refused: no original destination');
      down.resetAndDestroy();
      return null;
    }
    if (isSelfCall(direction, dst, this.#ownAddresses(from.ip)) || (direction === 'inbound' && isOwnUpstream(from.ip, from.port))) {
      this.#log.warn({ direction, src: from, dst, code: 'INPOD_ERR_SELF_CALL' }, 'connection refused: it would loop back into the proxy (its own port, or its own upstream captured again)');
      down.resetAndDestroy();
      return null;
    }
    return dst;
  }

  #ownAddresses(clientIp?: string): OwnAddresses {
    const w = this.deps.state.snapshot.byUid.get(this.info.uid);
    return { podIps: [...(w?.workloadIps ?? []), ...(clientIp ? [clientIp] : [])], nodeIps: nodeAddresses() };
  }

  /* ------------------------------------------------------------------ outbound (15001) */

  async #outbound(down: net.Socket): Promise<void> {
    const started = Date.now();
    down.on('error', () => {});
    const dst = this.#destination(down, 'outbound');
    if (!dst) return;
    const src = { ip: down.remoteAddress ?? '', port: down.remotePort ?? 0, identity: spiffeUri(this.identity) };
    const route = buildRoute(this.deps.state.snapshot, dst);
    const ctx: ConnContext = {
      direction: 'outbound',
      transport: route.kind === 'hbone' ? 'hbone' : 'passthrough',
      src,
      dst: route.kind === 'hbone' ? { ...route.authority } : route.kind === 'passthrough' ? { ...route.target } : { ...dst },
      pod: this.pod,
      service: route.kind === 'reject' ? undefined : route.service?.hostname,
    };
    this.deps.hooks.opened(ctx);
    if (route.kind === 'reject') {
      this.#finish(ctx, started, 0, 0, 'error', 'CONNECT', route.reason);
      down.resetAndDestroy();
      return;
    }
    if (route.kind === 'hbone' && !route.viaWaypoint) {
      const local = this.deps.localPod?.(route.authority.ip);
      // only a pod with the identity the state expects there; anything else takes HBONE and fails its identity check
      if (local && route.identities.includes(spiffeUri(local.identity))) return this.#sameNode(down, ctx, route.authority, local, started);
    }
    try {
      if (route.kind === 'passthrough') {
        if (isSelfCall('outbound', route.target, this.#ownAddresses(src.ip))) throw new MeshError('INPOD_ERR_SELF_CALL', `${route.target.ip}:${route.target.port} is one of the proxy's own ports`);
        const up = await connectIn(this.netns.fd, route.target, { mark: PROXY_MARK, paused: true });
        this.deps.fastPath.relay(down, up, (r) => this.#relayed(ctx, started, r));
        return;
      }
      const { stream, peerIdentity } = await this.deps.pool.open(
        { owner: this.#poolOwner, nsFd: this.netns.fd, identity: this.identity, ip: src.ip, baggage: this.#baggage() },
        route,
      );
      ctx.dst.identity = peerIdentity;
      relay(down, stream, (r) => this.#relayed(ctx, started, { ...r, kernelBytes: 0, path: 'userspace' }));
    } catch (e) {
      const err = e as Error & { code?: string };
      const flags = err.code === 'INPOD_ERR_HBONE_TLS' || err.code === 'INPOD_ERR_HBONE_IDENTITY' ? 'TLS_FAILURE' : err.code === 'INPOD_ERR_HBONE_DENIED' ? 'DENY' : 'CONNECT';
      this.#finish(ctx, started, 0, 0, flags === 'DENY' ? 'denied' : 'error', flags, err.message);
      this.#log.warn({ dst, err: err.message }, 'outbound connection failed');
      down.resetAndDestroy();
    }
  }

  /**
   * Same-node delivery: the destination pod is served by this proxy too, so both identities are
   * known here and verified as HBONE would. The destination's inbound policy is checked with the
   * client's identity, the app is reached from inside the destination pod (transparently, from
   * the client's IP, as the HBONE inbound does), and the two sockets are spliced: no TLS, no
   * HTTP/2, no byte on the veths. Both sides report, as with HBONE.
   */
  async #sameNode(down: net.Socket, ctx: ConnContext, app: Addr, dstPod: PodProxy, started: number): Promise<void> {
    ctx.transport = 'local';
    ctx.dst.identity = spiffeUri(dstPod.identity);
    const inCtx: ConnContext = { direction: 'inbound', transport: 'local', src: { ...ctx.src }, dst: { ...app, identity: ctx.dst.identity }, pod: dstPod.pod };
    const a = await dstPod.admit(inCtx, app);
    if (!('up' in a)) {
      const [outcome, flags, why] = 'denied' in a ? (['denied', 'DENY', a.denied] as const) : (['error', 'CONNECT', unreachable(app, a.unreachable)] as const);
      this.#finish(inCtx, started, 0, 0, outcome, flags, why);
      this.#finish(ctx, started, 0, 0, outcome, flags, why);
      down.resetAndDestroy();
      return;
    }
    this.deps.fastPath.relay(down, a.up, (r) => {
      this.#relayed(inCtx, started, r);
      this.#relayed(ctx, started, r);
    });
  }

  #baggage(): string {
    return `k8s.namespace.name=${this.info.namespace},k8s.pod.name=${this.info.name},service.name=${this.info.name}`;
  }

  /* ------------------------------------------------------------------ inbound plaintext (15006) */

  async #inboundPlain(down: net.Socket): Promise<void> {
    const started = Date.now();
    down.on('error', () => {});
    const dst = this.#destination(down, 'inbound');
    if (!dst) return;
    const src = { ip: down.remoteAddress ?? '', port: down.remotePort ?? 0 };
    const ctx: ConnContext = { direction: 'inbound', transport: 'plaintext', src, dst: { ...dst, identity: spiffeUri(this.identity) }, pod: this.pod };
    const a = await this.admit(ctx, dst);
    if ('up' in a) return this.deps.fastPath.relay(down, a.up, (r) => this.#relayed(ctx, started, r));
    if ('denied' in a) this.#finish(ctx, started, 0, 0, 'denied', 'DENY', a.denied);
    else this.#finish(ctx, started, 0, 0, 'error', 'CONNECT', a.unreachable.message);
    down.resetAndDestroy();
  }

  /**
   * The inbound half every path shares (plaintext 15006, HBONE 15008, same-node delivery): the
   * connection is reported opened, this pod's policy decides, and the app is reached from inside
   * this pod, transparently from the client's IP. The app's socket comes back paused (never read:
   * the fast path may take it; relay() resumes it otherwise).
   */
  async admit(ctx: ConnContext, app: Addr): Promise<{ up: net.Socket } | { denied: string | undefined } | { unreachable: Error }> {
    this.deps.hooks.opened(ctx);
    const d = this.deps.hooks.authorize(ctx);
    if (!d.allow) return { denied: d.reason };
    try {
      return { up: await connectIn(this.netns.fd, app, { mark: PROXY_MARK, transparentFrom: ctx.src.ip, paused: true }) };
    } catch (e) {
      return { unreachable: e as Error };
    }
  }

  /* ------------------------------------------------------------------ HBONE (15008) */

  async #hboneServer(ns: number): Promise<Http2SecureServer> {
    const cert = await this.deps.certs.get(this.identity);
    this.#certSerial = cert.serial;
    const server = createHboneServer({
      cert: cert.chainPem,
      key: cert.keyPem,
      ca: this.deps.certs.rootPem,
      trustDomain: this.deps.trustDomain,
      limits: this.deps.hboneLimits,
      log: this.#log,
      onStream: (s) => this.#hboneStream(s),
    });
    // rotate the served certificate without touching open connections
    this.#certTimer = setInterval(() => {
      this.deps.certs.get(this.identity).then((c) => {
        if (c.serial === this.#certSerial) return;
        this.#certSerial = c.serial;
        server.setSecureContext({ cert: c.chainPem, key: c.keyPem, ca: this.deps.certs.rootPem });
      }, () => {});
    }, 60_000);
    this.#certTimer.unref();
    const fd = socketInNs(ns, { family: 4, bind: { ip: '0.0.0.0', port: HBONE_PORT }, listen: 511, reuseAddr: true }).release();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ fd }, () => resolve());
    });
    return server;
  }

  /**
   * One CONNECT on 15008. The stream may be reset by the peer at any await: every step after one
   * re-checks it, and an upstream connection made for a stream that is gone is closed at once.
   */
  async #hboneStream({ stream, headers, peer, remote, localIp }: HboneStreamContext): Promise<void> {
    const started = Date.now();
    const src = { ip: remote.ip, port: remote.port, identity: spiffeUri(peer) };
    const answer = (status: number, why: string, ctx?: ConnContext): void => {
      this.#log.debug({ status, why, authority: headers[':authority'] }, 'hbone: request rejected');
      if (ctx) this.#finish(ctx, started, 0, 0, status === 401 ? 'denied' : 'error', status === 401 ? 'DENY' : 'CONNECT', why);
      respond(stream, status, true);
    };
    if (headers[':method'] !== 'CONNECT') return answer(400, `method ${String(headers[':method'])} is not CONNECT`);
    const authority = parseAuthority(String(headers[':authority'] ?? ''));
    if (!authority) return answer(400, `authority "${String(headers[':authority'])}" is not ip:port`);
    if (authority.ip !== localIp) return answer(400, `authority ${authority.ip} is not this connection's destination ${localIp}`);
    // as ztunnel (inbound.rs find_inbound_upstream): a CONNECT to one of the proxy's own ports is a self call, 503
    if (isSelfCall('inbound', authority, this.#ownAddresses())) return answer(503, `${authority.ip}:${authority.port} is one of the proxy's own ports (self call)`);
    const ctx: ConnContext = { direction: 'inbound', transport: 'hbone', src, dst: { ...authority, identity: spiffeUri(this.identity) }, pod: this.pod };
    const a = await this.admit(ctx, authority);
    if ('denied' in a) return answer(401, a.denied ?? 'denied by policy', ctx);
    if ('unreachable' in a) return answer(503, unreachable(authority, a.unreachable), ctx);
    if (stream.destroyed || stream.closed) {
      a.up.destroy();
      this.#finish(ctx, started, 0, 0, 'error', 'CONNECT', 'the peer reset the stream before it was answered');
      return;
    }
    respond(stream, 200, false);
    relay(stream, a.up, (r) => this.#relayed(ctx, started, { ...r, kernelBytes: 0, path: 'userspace' }));
  }

  #relayed(ctx: ConnContext, started: number, r: RelayResult): void {
    this.#finish(ctx, started, r.aToB, r.bToA, r.error ? 'error' : 'ok', undefined, r.error?.message, { path: r.path, kernelBytes: r.kernelBytes });
  }

  #finish(ctx: ConnContext, started: number, sent: number, received: number, outcome: ConnRecord['outcome'], responseFlags?: string, error?: string,
    how?: Pick<ConnRecord, 'path' | 'kernelBytes'>): void {
    this.deps.hooks.closed({ ...ctx, startedAt: started, durationMs: Date.now() - started, bytesSent: sent, bytesReceived: received, outcome, responseFlags, error, ...how });
  }
}

/** Answers a stream unless the peer already reset it. */
function respond(stream: ServerHttp2Stream, status: number, endStream: boolean): void {
  if (stream.destroyed || stream.closed || stream.headersSent) return;
  try {
    stream.respond({ ':status': status }, { endStream });
  } catch {
    /* reset between the check and the call: nothing to answer */
  }
}

function unreachable(app: Addr, e: Error): string {
  return `app ${app.ip}:${app.port} unreachable: ${e.message}`;
}

function parseAuthority(a: string): Addr | null {
  const i = a.lastIndexOf(':');
  if (i < 0) return null;
  const ip = a.slice(0, i);
  const port = Number(a.slice(i + 1));
  if (!isIPv4(ip) || !Number.isInteger(port) || port < 1 || port > 65535) return null;
  return { ip, port };
}

