/**
 * The labels of Istio's TCP series for one connection, as ztunnel derives them (istio/ztunnel
 * src/proxy/metrics.rs: CommonTrafficLabels and its with_derived_source, with_source,
 * with_destination, with_destination_service; ConnectionOpen as outbound.rs, inbound.rs and
 * inbound_passthrough.rs fill it; src/proxy.rs guess_inbound_service). Pure: the state snapshot
 * and the connection's context in, the labels out. A value nobody knows is "unknown", as
 * ztunnel's DefaultedUnknown writes it.
 */
import type { ConnContext } from '../proxy/hooks.js';
import { workloadIdentity } from '../proxy/route.js';
import type { StateSnapshot } from '../state/store.js';
import type { Workload } from '../state/types.js';

/**
 * Every label of ztunnel's traffic series, in its order (CommonTrafficLabels, then the
 * LocalityLabels it flattens in: ztunnel writes those whenever a source or destination is known,
 * which for a served pod is always).
 */
export const TRAFFIC_LABELS = [
  'reporter',
  'source_workload',
  'source_canonical_service',
  'source_canonical_revision',
  'source_workload_namespace',
  'source_principal',
  'source_app',
  'source_version',
  'source_cluster',
  'destination_service',
  'destination_service_namespace',
  'destination_service_name',
  'destination_workload',
  'destination_canonical_service',
  'destination_canonical_revision',
  'destination_workload_namespace',
  'destination_principal',
  'destination_app',
  'destination_version',
  'destination_cluster',
  'request_protocol',
  'response_flags',
  'connection_security_policy',
  'source_region',
  'source_zone',
  'destination_region',
  'destination_zone',
] as const;

export type TrafficLabelName = (typeof TRAFFIC_LABELS)[number];
export type TrafficLabels = Record<TrafficLabelName, string>;

export const UNKNOWN = 'unknown';

/**
 * ztunnel's ResponseFlags as written in a label: '-' none, then DENY, CONNECT, TLS_FAILURE,
 * H2_HANDSHAKE_FAILURE, NETWORK_POLICY, IDENTITY_ERROR, CERT_REVOKED. Every one but '-' also
 * counts the connection in istio_tcp_connections_failed.
 */
export const FAILURE_FLAGS: ReadonlySet<string> = new Set(['DENY', 'CONNECT', 'TLS_FAILURE', 'H2_HANDSHAKE_FAILURE', 'NETWORK_POLICY', 'IDENTITY_ERROR', 'CERT_REVOKED']);

/** What a connection's labels were taken from, kept for its access-log lines. */
export interface Described {
  labels: TrafficLabels;
  /** the source and destination workloads found in the state (the log names their pods) */
  source?: Workload;
  destination?: Workload;
}

const u = (v: string | undefined): string => v || UNKNOWN;

/** A string naming the series of `labels` with response flags `flags` (default: theirs): equal label values, equal keys. */
export function seriesKey(labels: TrafficLabels, flags = labels.response_flags): string {
  let k = '';
  for (const n of TRAFFIC_LABELS) k += `${n === 'response_flags' ? flags : labels[n]}\u0000`;
  return k;
}

/** Is the connection mutual TLS: HBONE, or same-node delivery between two identities this proxy verified. */
export function isMutualTls(ctx: Pick<ConnContext, 'transport'>): boolean {
  return ctx.transport === 'hbone' || ctx.transport === 'local';
}

/**
 * The labels of `ctx` as it opens (response_flags "-"). The workload this proxy serves for the
 * connection (the source outbound, the destination inbound) is looked up by its uid, then by
 * address; the peer by address. source_principal is the identity mutual TLS proved (none
 * without it); destination_principal the destination workload's own identity from the state.
 */
export function describe(snap: StateSnapshot, ctx: ConnContext): Described {
  const mtls = isMutualTls(ctx);
  const served = snap.byUid.get(ctx.pod.uid);
  const out = ctx.direction === 'outbound';
  // outbound: the connection goes where `via` is (the waypoint, when it is one), as ztunnel's actual_destination_workload
  const source = out ? served ?? snap.byIp.get(ctx.src.ip) : snap.byIp.get(ctx.src.ip);
  const destination = out ? snap.byIp.get((ctx.via ?? ctx.dst).ip) : served ?? snap.byIp.get(ctx.dst.ip);
  const service = out ? ctx.service : inboundService(snap, destination, ctx.dst.port, ctx.service);
  const l: TrafficLabels = {
    reporter: out ? 'source' : 'destination',
    source_workload: u(source?.workloadName),
    source_canonical_service: u(source?.canonicalName),
    source_canonical_revision: u(source?.canonicalRevision),
    // the namespace of the pod this proxy serves is known from ZDS even when the state lacks it
    source_workload_namespace: u(source?.namespace ?? (out ? ctx.pod.namespace : undefined)),
    source_principal: u(mtls ? ctx.src.identity : undefined),
    source_app: u(source?.canonicalName),
    source_version: u(source?.canonicalRevision),
    source_cluster: u(source?.clusterId),
    destination_service: u(service?.hostname),
    destination_service_namespace: u(service?.namespace),
    destination_service_name: u(service?.name),
    destination_workload: u(destination?.workloadName),
    destination_canonical_service: u(destination?.canonicalName),
    destination_canonical_revision: u(destination?.canonicalRevision),
    destination_workload_namespace: u(destination?.namespace ?? (out ? undefined : ctx.pod.namespace)),
    destination_principal: u(destination ? workloadIdentity(destination) : out ? undefined : ctx.dst.identity),
    destination_app: u(destination?.canonicalName),
    destination_version: u(destination?.canonicalRevision),
    destination_cluster: u(destination?.clusterId),
    request_protocol: 'tcp',
    response_flags: '-',
    connection_security_policy: mtls ? 'mutual_tls' : UNKNOWN,
    source_region: u(source?.locality?.region),
    source_zone: u(source?.locality?.zone),
    destination_region: u(destination?.locality?.region),
    destination_zone: u(destination?.locality?.zone),
  };
  return { labels: l, source, destination };
}

/**
 * The service an inbound connection reached (ztunnel's guess_inbound_service): the one the
 * client named, if it is one of the destination's; else the first of the destination's services
 * with a target port equal to the connection's port (a service without an explicit target port
 * counts its endpoint's port for it); else none.
 */
export function inboundService(snap: StateSnapshot, dest: Workload | undefined, port: number, named?: ConnContext['service']): ConnContext['service'] {
  if (!dest) return undefined;
  const services = Object.keys(dest.services).map((k) => snap.byServiceKey.get(k)).filter((s) => s !== undefined);
  const pick = named && services.find((s) => s.hostname === named.hostname && s.namespace === named.namespace);
  if (pick) return { hostname: pick.hostname, name: pick.name, namespace: pick.namespace };
  for (const s of services) {
    const endpointPorts = dest.services[`${s.namespace}/${s.hostname}`] ?? {};
    const hit = Object.entries(s.ports).some(([sport, tport]) => tport === port || endpointPorts[Number(sport)] === port);
    if (hit) return { hostname: s.hostname, name: s.name, namespace: s.namespace };
  }
  return undefined;
}

/**
 * Everything of `ctx` that describe() reads, as one string: two contexts with equal keys get
 * equal labels from one snapshot. A field describe() starts to read must be added here (the
 * test in test/telemetry/labels.test.ts changes each field in turn and checks the key follows).
 */
export function describeKey(ctx: ConnContext): string {
  const s = ctx.service;
  return `${ctx.direction}\u0000${ctx.transport}\u0000${ctx.pod.uid}\u0000${ctx.pod.namespace}\u0000${ctx.src.ip}\u0000${ctx.src.identity ?? ''}` +
    `\u0000${ctx.dst.ip}\u0000${ctx.dst.port}\u0000${ctx.dst.identity ?? ''}\u0000${ctx.via?.ip ?? ''}` +
    `\u0000${s ? `${s.hostname}\u0000${s.name}\u0000${s.namespace}` : ''}`;
}

/** One connection's description and the series key of its labels (seriesKey). */
export interface DescribedSeries {
  described: Described;
  key: string;
}

/**
 * describe() and seriesKey() once per distinct connection description and state snapshot, not
 * once per connection: most connections repeat one (a client pod to a service, a port of this
 * pod). A new snapshot (every state update makes one) starts it empty, so labels never lag the
 * state. At most `max` descriptions are kept; past that it starts over.
 */
export class LabelCache {
  #snap: StateSnapshot | undefined;
  readonly #rows = new Map<string, DescribedSeries>();

  constructor(readonly max = 4096) {}

  get(snap: StateSnapshot, ctx: ConnContext): DescribedSeries {
    if (snap !== this.#snap) {
      this.#snap = snap;
      this.#rows.clear();
    }
    const k = describeKey(ctx);
    let r = this.#rows.get(k);
    if (!r) {
      if (this.#rows.size >= this.max) this.#rows.clear();
      const described = describe(snap, ctx);
      r = { described, key: seriesKey(described.labels) };
      this.#rows.set(k, r);
    }
    return r;
  }
}
