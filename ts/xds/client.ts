/**
 * The delta ADS client to istiod, as ztunnel's (src/xds/client.rs `AdsClient`, src/xds.rs):
 * one bidirectional `DeltaAggregatedResources` stream over gRPC with TLS, verified against
 * istiod's root from a file (read again on every connect: the mounted ConfigMap may rotate),
 * authenticated with the projected service-account token as ztunnel sends it (`authorization:
 * Bearer <token>` and `clusterid: <cluster>` on the stream, the token file read on every
 * connect, src/identity/auth.rs), the node of ./node.ts.
 *
 * On each stream: one initial request per subscribed type (wildcard: no names), carrying the
 * node and `initial_resource_versions` of what the proxy already holds, so a reconnect continues
 * the session. Each response goes to its type's handler, which applies it whole or refuses it
 * (./wds.ts); it is then ACKed (type_url + nonce), or NACKed with `error_detail.message` listing
 * each refused resource as "name: reason" joined by "; " (as ztunnel). Versions are recorded only
 * for applied responses. A response of a type no handler has is ACKed and logged, as ztunnel.
 *
 * When a stream ends, the state is kept and the client reconnects after a backoff as ztunnel's
 * run_loop: from 10 ms, doubled up to 15 s after a connection error (no response headers) or a
 * failure; back to 10 ms after a routine end (Unknown, Cancelled, DeadlineExceeded, Unavailable
 * "transport is closing" / "received prior goaway") or a clean one. Each end is counted in
 * istio_xds_connection_terminations_total (./metrics.ts).
 *
 * On demand (`onDemand`, ztunnel's XDS_ON_DEMAND, off by default there too): the types whose
 * handler allows it are subscribed with ztunnel's initial request for it (subscribe "*" and
 * unsubscribe "*": no wildcard), and `demand(type, name)` asks for one resource ("network/ip" or
 * a uid) and resolves once a response names it (as a resource, one of its aliases, or a
 * removal), as ztunnel's Demander; a name asked for is kept among the versions sent on
 * reconnect. Only the other types are waited for before `synced`.
 *
 * Not done: custom XDS_HEADER_* headers, PROXY_CONFIG's proxyMetadata.
 */
import { grpcTarget } from '../util/grpc.js';
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from '../util/log.js';
import { MeshError } from '../util/errors.js';
import { ADS_SERVICE, DELTA_ADS_PATH, type DeltaDiscoveryRequest, type DeltaDiscoveryResponse, type Node } from './proto.js';
import type { TerminationReason, XdsMetrics } from './metrics.js';
import type { Rejection, TypeHandler } from './wds.js';

export const INITIAL_BACKOFF_MS = 10;
export const MAX_BACKOFF_MS = 15_000;
/** ztunnel's max_decoding_message_size */
const MAX_MESSAGE = 200 * 1024 * 1024;

export interface XdsClientOptions {
  /** istiod: "host:port", or "https://host:port" as ztunnel writes it */
  address: string;
  /** PEM file of istiod's root; read on every connect. 'SYSTEM': the system's roots (ztunnel's special value). */
  rootCert: string;
  /** the projected service-account token (audience istio-ca); read on every connect. Absent: none sent. */
  tokenFile?: string;
  /** sent as the `clusterid` header beside the token */
  clusterId: string;
  /** verify istiod's certificate for this name instead of the address's host (ztunnel's ALT_XDS_HOSTNAME) */
  altHostname?: string;
  node: Node;
  /** type URL -> its handler; every one is subscribed, in this order */
  handlers: Map<string, TypeHandler>;
  /** look resources of the handlers that allow it up one by one (demand()) instead of subscribing to all */
  onDemand?: boolean;
  metrics?: XdsMetrics;
  log: Logger;
  backoff?: { initialMs?: number; maxMs?: number };
}

export interface XdsClientEvents {
  /** a response applied and ACKed */
  ack: [{ typeUrl: string; nonce: string }];
  /** a response refused and NACKed */
  nack: [{ typeUrl: string; nonce: string; rejections: Rejection[]; errorDetail: string }];
  /** every type has been ACKed once (ztunnel's readiness gate) */
  synced: [];
  /** a stream ended; the next attempt is in `retryInMs` */
  disconnected: [{ reason: TerminationReason; error?: string; retryInMs: number }];
  connected: [];
}

/** ztunnel's run_loop classification of a gRPC status that ended an established stream. */
export function classifyEnd(code: grpc.status, details: string): { reason: TerminationReason; reset: boolean } {
  if (code === grpc.status.OK) return { reason: 'Complete', reset: true };
  const routine =
    code === grpc.status.UNKNOWN ||
    code === grpc.status.CANCELLED ||
    code === grpc.status.DEADLINE_EXCEEDED ||
    (code === grpc.status.UNAVAILABLE && (details.includes('transport is closing') || details.includes('received prior goaway')));
  return routine ? { reason: 'Reconnect', reset: true } : { reason: 'Error', reset: false };
}

export class XdsClient extends EventEmitter<XdsClientEvents> {
  readonly #o: XdsClientOptions;
  readonly #initialMs: number;
  readonly #maxMs: number;
  /** type URL -> resource name -> version, of applied responses (initial_resource_versions) */
  readonly #known = new Map<string, Map<string, string>>();
  readonly #acked = new Set<string>();
  /** "type\nname" -> who waits for it (demand()) */
  readonly #pending = new Map<string, (() => void)[]>();
  #backoff: number;
  #connectionId = 0;
  #client: grpc.Client | undefined;
  #call: grpc.ClientDuplexStream<DeltaDiscoveryRequest, DeltaDiscoveryResponse> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #stopped = true;
  #connected = false;

  constructor(o: XdsClientOptions) {
    super();
    this.#o = o;
    this.#initialMs = o.backoff?.initialMs ?? INITIAL_BACKOFF_MS;
    this.#maxMs = o.backoff?.maxMs ?? MAX_BACKOFF_MS;
    this.#backoff = this.#initialMs;
    grpcTarget(o.address, '--xds-address');
  }

  /** A stream is open and istiod has answered it (its response headers arrived). */
  get connected(): boolean {
    return this.#connected;
  }

  /** Every subscribed type has been applied and ACKed at least once. */
  get synced(): boolean {
    return [...this.#o.handlers.keys()].every((t) => this.#onDemand(t) || this.#acked.has(t));
  }

  #onDemand(typeUrl: string): boolean {
    return !!this.#o.onDemand && !this.#o.handlers.get(typeUrl)?.noOnDemand;
  }

  /**
   * Asks istiod for one resource of an on-demand type (ztunnel's Demander::demand), and resolves
   * once a response names it (applied or not: look in the state again), after `timeoutMs`, or
   * on stop(). Never rejects. Resolves at once for a type subscribed whole (nothing to ask).
   */
  demand(typeUrl: string, name: string, timeoutMs = 5000): Promise<void> {
    if (!this.#onDemand(typeUrl)) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const key = `${typeUrl}\n${name}`;
      const timer = setTimeout(done, timeoutMs).unref();
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      const waiting = this.#pending.get(key);
      if (waiting) waiting.push(done);
      else this.#pending.set(key, [done]);
      // kept among the versions sent on reconnect, so a new stream asks for it too (add_pending_resource)
      const known = this.#known.get(typeUrl) ?? new Map<string, string>();
      this.#known.set(typeUrl, known);
      if (!known.has(name)) known.set(name, '');
      // on the stream being opened too (grpc-js queues it); with none, the next one's initial request carries it
      this.#call?.write({ type_url: typeUrl, resource_names_subscribe: [name] });
    });
  }

  #notify(typeUrl: string, name: string): void {
    const key = `${typeUrl}\n${name}`;
    const waiting = this.#pending.get(key);
    if (!waiting) return;
    this.#pending.delete(key);
    for (const f of waiting) f();
  }

  /** Connects, and keeps reconnecting until stop(). */
  start(): void {
    if (!this.#stopped) return;
    this.#stopped = false;
    this.#connect();
  }

  /** Ends the stream and stops reconnecting; the state applied so far stays where it was put. */
  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#call?.cancel();
    this.#client?.close();
    for (const waiting of this.#pending.values()) for (const f of waiting) f();
    this.#pending.clear();
    this.#call = undefined;
    this.#client = undefined;
    this.#connected = false;
  }

  /** The credentials and headers of one connection attempt: the root and token read now. */
  #credentials(): { creds: grpc.ChannelCredentials; md: grpc.Metadata } {
    const o = this.#o;
    const read = (what: string, path: string): Buffer => {
      try {
        return readFileSync(path);
      } catch (e) {
        throw new MeshError('INPOD_ERR_XDS', `cannot read ${what} ${path} (${(e as Error).message}); is it mounted?`, { retryable: true, cause: e });
      }
    };
    const creds = o.rootCert === 'SYSTEM' ? grpc.credentials.createSsl() : grpc.credentials.createSsl(read("istiod's root certificate", o.rootCert));
    const md = new grpc.Metadata();
    if (o.tokenFile) {
      const token = read('the service-account token', o.tokenFile).toString('utf8').trim();
      if (!token) throw new MeshError('INPOD_ERR_XDS', `the token file ${o.tokenFile} exists but is empty (ztunnel refuses it too)`, { retryable: true });
      md.set('authorization', `Bearer ${token}`);
      md.set('clusterid', o.clusterId);
    }
    return { creds, md };
  }

  #initialRequests(): DeltaDiscoveryRequest[] {
    return [...this.#o.handlers.keys()].map((type_url) => ({
      type_url,
      node: this.#o.node,
      // ztunnel's construct_initial_request: on demand, "*" both subscribed and unsubscribed
      ...(this.#onDemand(type_url) ? { resource_names_subscribe: ['*'], resource_names_unsubscribe: ['*'] } : {}),
      initial_resource_versions: Object.fromEntries(this.#known.get(type_url) ?? []),
    }));
  }

  #connect(): void {
    if (this.#stopped) return;
    const id = ++this.#connectionId;
    const log = this.#o.log.child({ xds: id });
    let creds: grpc.ChannelCredentials;
    let md: grpc.Metadata;
    try {
      ({ creds, md } = this.#credentials());
    } catch (e) {
      this.#ended(log, 'ConnectionError', (e as Error).message, false);
      return;
    }
    const options: grpc.ClientOptions = { 'grpc.max_receive_message_length': MAX_MESSAGE, 'grpc.max_send_message_length': MAX_MESSAGE };
    if (this.#o.altHostname) options['grpc.ssl_target_name_override'] = this.#o.altHostname;
    const client = new grpc.Client(grpcTarget(this.#o.address, '--xds-address'), creds, options);
    const m = ADS_SERVICE.DeltaAggregatedResources!;
    const call = client.makeBidiStreamRequest(DELTA_ADS_PATH, m.requestSerialize, m.responseDeserialize, md, {}) as grpc.ClientDuplexStream<DeltaDiscoveryRequest, DeltaDiscoveryResponse>;
    this.#client = client;
    this.#call = call;
    let answered = false;
    const established = (): void => {
      if (answered) return;
      answered = true;
      this.#connected = true;
      log.info({ address: this.#o.address }, 'xds stream established');
      this.emit('connected');
    };
    call.on('metadata', established);
    call.on('data', (r: DeltaDiscoveryResponse) => {
      established();
      this.#onResponse(log, call, r);
    });
    call.on('error', () => {}); // 'status' below says it all; without a listener 'error' would throw
    call.on('status', (s: grpc.StatusObject) => {
      if (this.#call !== call) return; // stopped, or already replaced
      client.close();
      this.#call = undefined;
      this.#client = undefined;
      this.#connected = false;
      if (!answered) {
        this.#ended(log, 'ConnectionError', `gRPC connection error connecting to ${this.#o.address}: status ${grpc.status[s.code]}: ${s.details}`, false);
        return;
      }
      const { reason, reset } = classifyEnd(s.code, s.details);
      this.#ended(log, reason, s.code === grpc.status.OK ? undefined : `status ${grpc.status[s.code]}: ${s.details}`, reset);
    });
    for (const r of this.#initialRequests()) {
      log.debug({ typeUrl: r.type_url, resources: Object.keys(r.initial_resource_versions ?? {}).length }, 'sending initial request');
      call.write(r);
    }
  }

  #ended(log: Logger, reason: TerminationReason, error: string | undefined, reset: boolean): void {
    if (this.#stopped) return;
    this.#o.metrics?.terminated(reason);
    const wait = reset ? this.#initialMs : Math.min(this.#maxMs, this.#backoff * 2);
    this.#backoff = wait;
    const fields = { reason, err: error, retryInMs: wait };
    if (reason === 'Reconnect') log.debug(fields, 'xds stream ended; reconnecting');
    else log.warn(fields, reason === 'Complete' ? 'xds stream complete; reconnecting' : 'xds stream failed; keeping the last good state and retrying');
    this.emit('disconnected', { reason, error, retryInMs: wait });
    this.#timer = setTimeout(() => this.#connect(), wait);
  }

  #onResponse(log: Logger, call: grpc.ClientDuplexStream<DeltaDiscoveryRequest, DeltaDiscoveryResponse>, r: DeltaDiscoveryResponse): void {
    const typeUrl = r.type_url;
    const nonce = r.nonce;
    this.#o.metrics?.received(r);
    log.debug({ typeUrl, size: r.resources.length, removes: r.removed_resources.length }, 'received response');
    const handler = this.#o.handlers.get(typeUrl);
    let rejections: Rejection[] = [];
    if (!handler) log.error({ typeUrl }, 'unknown type');
    else {
      try {
        rejections = handler.apply(r.resources, r.removed_resources);
      } catch (e) {
        // a handler must not throw; if one does, nothing of the response counts as applied
        rejections = [{ name: '*', reason: `internal error applying the response: ${(e as Error).message}` }];
      }
    }
    // whoever waits for one of these names looks in the state again now (ztunnel notifies every name, applied or not)
    for (const res of r.resources) for (const n of [res.name, ...(res.aliases ?? [])]) this.#notify(typeUrl, n);
    for (const n of r.removed_resources) this.#notify(typeUrl, n);
    if (rejections.length) {
      const errorDetail = rejections.map((x) => `${x.name}: ${x.reason}`).join('; ');
      log.error({ typeUrl, nonce, type: 'NACK', error: errorDetail }, 'sending response');
      call.write({ type_url: typeUrl, response_nonce: nonce, error_detail: { message: errorDetail } });
      this.emit('nack', { typeUrl, nonce, rejections, errorDetail });
      return;
    }
    const known = this.#known.get(typeUrl) ?? new Map<string, string>();
    this.#known.set(typeUrl, known);
    for (const res of r.resources) known.set(res.name, res.version);
    for (const name of r.removed_resources) known.delete(name);
    log.debug({ typeUrl, nonce, type: 'ACK' }, 'sending response');
    call.write({ type_url: typeUrl, response_nonce: nonce });
    const wasSynced = this.synced;
    if (handler) this.#acked.add(typeUrl);
    this.emit('ack', { typeUrl, nonce });
    if (!wasSynced && this.synced) {
      log.info('xds synced: every subscribed type applied');
      this.emit('synced');
    }
  }
}
