/**
 * One enrolled pod (one sandbox) as the proxy serves it: the lifetime of its three listeners,
 * opened inside the pod's netns on 15001 (outbound.ts), 15006 (inbound-plaintext.ts) and 15008
 * (inbound.ts), and the pod's certificate, which the HBONE listener serves and which is rotated
 * in place. Created on ZDS Add; stopped on Del or when the proxy drains. Connections already
 * open are left to finish. The listeners share their ports with a newer proxy's (SO_REUSEPORT,
 * sockets.ts podListenerFd), so a proxy rollout never leaves the pod without one.
 */
import type net from 'node:net';
import type { Fd } from '../native/index.js';
import { spiffeUri, type Identity } from '../identity/spiffe.js';
import { PORTS } from '../istio.js';
import type { Logger } from '../util/log.js';
import { inboundPlaintext } from './inbound-plaintext.js';
import type { NativeListener } from './hbone/native.js';
import { startInbound } from './inbound.js';
import type { PodInfo, PodInputs, ProxyDeps } from './inputs.js';
import { outbound } from './outbound.js';
import { listenIn } from './sockets.js';

export type { PodInfo } from './inputs.js';

/** How often the served certificate is checked for a rotated one. */
const CERT_CHECK_MS = 60_000;
/** ... and how often while the pod has none (the manager retries the CA on its own backoff). */
const CERT_RETRY_MS = 500;
/** How long a pod's start waits for its first certificate before its HBONE listener opens without one. */
const CERT_WAIT_MS = 5_000;

let sandboxes = 0;

export class PodProxy {
  /** what the pod's listeners read */
  readonly inputs: PodInputs;
  readonly listeners: Record<string, number> = {};
  readonly #servers: { close(cb: () => void): unknown }[] = [];
  /** the HBONE listener (15008), which drains the connections peers opened to this pod */
  #hboneListener?: NativeListener;
  #drained: Promise<void> = Promise.resolve();
  #stopped = false;
  readonly #log: Logger;
  #certTimer?: NodeJS.Timeout;
  #certSerial = '';

  constructor(readonly info: PodInfo, readonly netns: Fd, deps: ProxyDeps) {
    this.#log = deps.log.child({ ns: info.namespace, pod: info.name, uid: info.uid });
    const identity = { trustDomain: deps.trustDomain, namespace: info.namespace, serviceAccount: info.serviceAccount };
    this.inputs = {
      ...deps,
      info,
      identity,
      uri: spiffeUri(identity),
      netns,
      poolOwner: `${info.uid}#${++sandboxes}`,
      log: this.#log,
    };
  }

  get identity(): Identity {
    return this.inputs.identity;
  }

  /** Opens the three listeners inside the pod netns. Throws if any cannot be opened. */
  async start(): Promise<void> {
    const pi = this.inputs;
    try {
      // paused: a connection that ends up spliced must not have been read by Node
      this.#servers.push(await listenIn(this.netns.fd, PORTS.outbound, (s) => this.#guard(s, outbound(pi, this.#counted(s, 'source'))), undefined, true));
      this.listeners.outbound = PORTS.outbound;
      this.#servers.push(await listenIn(this.netns.fd, PORTS.inboundPlaintext, (s) => this.#guard(s, inboundPlaintext(pi, this.#counted(s, 'destination'))), undefined, true));
      this.listeners.inbound = PORTS.inboundPlaintext;
      this.#servers.push(await this.#hbone());
      this.listeners.hbone = PORTS.hbone;
      this.#log.info({ listeners: this.listeners }, 'pod listeners open');
    } catch (e) {
      this.stop();
      throw e;
    }
  }

  /**
   * Closes the listeners; open connections finish on their own (`drained` says when). Each
   * HBONE connection a peer opened to this pod is told GOAWAY, as ztunnel's inbound drain
   * does: the peer opens its next streams elsewhere (the next proxy's listener) and the streams
   * it has finish here. Idempotent.
   */
  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    clearTimeout(this.#certTimer);
    this.inputs.pool.retire(this.inputs.poolOwner);
    const closing = this.#servers.splice(0).map((s) => new Promise<void>((resolve) => s.close(() => resolve())));
    this.#hboneListener?.drain();
    // the connections still open work inside the pod's netns (dials, transparent upstreams): it
    // is let go once they have ended
    if (closing.length === 0) return this.#release();
    this.#drained = Promise.all(closing).then(() => this.#release());
  }

  #release(): void {
    if (!this.netns.closed) this.netns.close();
  }

  /** Resolves once the pod is stopped and every connection its listeners accepted has ended. */
  get drained(): Promise<void> {
    return this.#drained;
  }

  /** `s` counted open (istio_tcp_sockets_open) until it closes, as ztunnel counts each socket its listeners accept. */
  #counted<S extends net.Socket>(s: S, reporter: 'source' | 'destination'): S {
    s.once('close', this.inputs.observer.socketOpened(reporter));
    return s;
  }

  /** A failure while serving one connection ends that connection only, logged; never the process. */
  #guard(down: net.Socket, serving: Promise<void>): void {
    serving.catch((e: Error) => {
      this.#log.error({ err: e.message, stack: e.stack }, 'connection handler failed; connection reset');
      if (!down.destroyed) down.resetAndDestroy();
    });
  }

  /**
   * The HBONE listener with the pod's own certificate, swapped for the rotated one without
   * touching open connections. ztunnel fetches the pod's certificate for each inbound handshake
   * (src/proxy/inbound.rs fetch_cert), so while none can be had its handshakes fail and nothing
   * else is served: here the listener opens once the certificate is ready or after CERT_WAIT_MS
   * without one, and while it holds none (or only an expired one) it has no certificate at all:
   * every handshake fails, until the manager has a valid one again.
   */
  async #hbone(): Promise<NativeListener> {
    const { certs } = this.inputs;
    let timeout: NodeJS.Timeout | undefined;
    const first = await Promise.race([
      certs.get(this.identity).catch((e: Error) => e),
      new Promise<null>((r) => (timeout = setTimeout(() => r(null), CERT_WAIT_MS))),
    ]).finally(() => clearTimeout(timeout));
    const cert = first instanceof Error || first === null ? null : first;
    if (!cert) this.#log.warn({ identity: this.inputs.uri, err: first instanceof Error ? first.message : 'still waiting for the CA' }, 'no certificate for the pod yet: HBONE handshakes to it fail until one is issued');
    this.#certSerial = cert?.serial ?? '';
    const server = await startInbound(this.inputs, cert);
    this.#hboneListener = server;
    if (this.#stopped) server.drain();
    const check = (): void => {
      this.#certTimer = undefined;
      certs.get(this.identity).then((c) => {
        if (c.serial === this.#certSerial) return;
        this.#certSerial = c.serial;
        server.rotate(c);
        this.#log.info({ identity: c.identity, serial: c.serial }, 'hbone: serving the pod\'s new certificate');
      }, (e: Error) => {
        if (this.#certSerial === '') return;
        this.#certSerial = '';
        server.rotate(null);
        this.#log.warn({ identity: this.inputs.uri, err: e.message }, 'no valid certificate for the pod: HBONE handshakes to it fail until one is issued');
      }).finally(() => {
        if (this.#stopped) return;
        this.#certTimer = setTimeout(check, this.#certSerial ? CERT_CHECK_MS : CERT_RETRY_MS);
        this.#certTimer.unref();
      });
    };
    this.#certTimer = setTimeout(check, this.#certSerial ? CERT_CHECK_MS : CERT_RETRY_MS);
    this.#certTimer.unref();
    return server;
  }
}

