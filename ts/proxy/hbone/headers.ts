/**
 * The headers of an HBONE CONNECT and of its answer, as ztunnel writes and reads them (pure):
 *
 *  - `forwarded: for="<ip:port>"[;host=<service hostname>]`: the client's address as the source
 *    proxy accepted it, and the service it addressed when it went to a VIP (ztunnel
 *    src/proxy/outbound.rs build_forwarded; the destination reads `host=` back, src/proxy.rs
 *    parse_forwarded_host). IPv6 is bracketed, as Rust prints a SocketAddr.
 *  - `baggage`: who the source (or, on a 200, the destination) workload is, in OpenTelemetry's
 *    names (src/baggage.rs baggage_header_val, from src/state/workload.rs Workload::baggage).
 *  - `traceparent`: W3C trace context, one per outbound connection; the destination takes the
 *    client's (src/proxy/inbound.rs extract_traceparent) or starts its own, and both sides log
 *    the connection under its trace id (src/proxy.rs TraceParent: version 00, flags 00).
 */
import { randomFillSync } from 'node:crypto';
import type { Workload } from '../../state/types.js';
import { socketAddr } from '../../util/sockaddr.js';

/** What the CONNECT carries besides its pseudo-headers. */
export interface ConnectHeaders {
  baggage: string;
  forwarded: string;
  traceparent: string;
}

/**
 * The CONNECT's header block for a tunnel to `authority`, in ztunnel's order: the
 * pseudo-headers, then baggage, forwarded, traceparent (src/proxy/outbound.rs
 * create_hbone_request). Both byte paths send it. Pure.
 */
export function connectRequestHeaders(authority: { ip: string; port: number }, h: ConnectHeaders): Record<string, string> {
  return { ':method': 'CONNECT', ':authority': socketAddr(authority), baggage: h.baggage, forwarded: h.forwarded, traceparent: h.traceparent };
}


/**
 * The `forwarded` value for a client at `ip:port`, with `host=` naming the service it addressed
 * (none when it addressed a workload). A hostname a header could not carry is left out rather
 * than sent broken.
 */
export function forwardedFor(src: { ip: string; port: number }, serviceHostname?: string): string {
  const f = `for="${socketAddr(src)}"`;
  return serviceHostname && TOKEN.test(serviceHostname) ? `${f};host=${serviceHostname}` : f;
}

/** The `host=` of a `forwarded` value, or undefined (ztunnel's parse_forwarded_host). */
export function forwardedHost(value: string | string[] | undefined): string | undefined {
  // most CONNECTs (a pod addressed, not a service) carry no host=: answered without parsing
  if (typeof value !== 'string' || !value.includes('host=') || !/^[\x20-\x7e]*$/.test(value)) return undefined;
  const part = value.split(';').map((p) => p.trim()).find((p) => p.startsWith('host='));
  if (!part) return undefined;
  let h = part.slice(5);
  if (h.startsWith('"')) h = h.slice(1);
  if (h.endsWith('"')) h = h.slice(0, -1);
  return h || undefined;
}

/** The fields of a Workload the baggage is made of. */
export type BaggageSource = Pick<Workload, 'namespace' | 'workloadName' | 'workloadType' | 'canonicalName' | 'canonicalRevision' | 'clusterId' | 'locality'>;

/** Characters a W3C baggage value may hold unencoded (baggage-octet); anything else is left out. */
const BAGGAGE_VALUE = /^[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]+$/;
/** An RFC 9110 token: what `host=` may carry unquoted. */
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

const baggageCache = new WeakMap<BaggageSource, string>();

/**
 * The `baggage` value describing `w`, members in ztunnel's order: k8s.cluster.name,
 * k8s.namespace.name, k8s.<workloadType>.name, service.name (canonical name), service.version
 * (canonical revision), cloud.region, cloud.availability_zone. An empty field is left out, as
 * ztunnel does; so is a value the header could not carry (ztunnel would fail the request).
 * Cached per workload object (state snapshots are replaced, never changed in place).
 */
export function baggageOf(w: BaggageSource): string {
  let v = baggageCache.get(w);
  if (v !== undefined) return v;
  const members: [string, string | undefined][] = [
    ['k8s.cluster.name', w.clusterId],
    ['k8s.namespace.name', w.namespace],
    [`k8s.${w.workloadType ?? ''}.name`, w.workloadName],
    ['service.name', w.canonicalName],
    ['service.version', w.canonicalRevision],
    ['cloud.region', w.locality?.region],
    ['cloud.availability_zone', w.locality?.zone],
  ];
  v = members.filter(([, val]) => val && BAGGAGE_VALUE.test(val)).map(([k, val]) => `${k}=${val}`).join(',');
  baggageCache.set(w, v);
  return v;
}

/** A baggage value read back (ztunnel's parse_baggage_header): the fields it names, unknown members ignored. */
export function parseBaggage(value: string | string[] | undefined): Partial<Record<'clusterId' | 'namespace' | 'workloadName' | 'canonicalName' | 'canonicalRevision' | 'region' | 'zone', string>> {
  const out: ReturnType<typeof parseBaggage> = {};
  const names: Record<string, keyof typeof out> = {
    'k8s.cluster.name': 'clusterId',
    'k8s.namespace.name': 'namespace',
    'k8s.deployment.name': 'workloadName',
    'k8s.cronjob.name': 'workloadName',
    'k8s.pod.name': 'workloadName',
    'k8s.job.name': 'workloadName',
    'service.name': 'canonicalName',
    'service.version': 'canonicalRevision',
    'cloud.region': 'region',
    'cloud.availability_zone': 'zone',
  };
  for (const line of Array.isArray(value) ? value : value === undefined ? [] : [value]) {
    for (const member of line.split(',')) {
      const [k, val] = member.split('=');
      const field = k !== undefined ? names[k] : undefined;
      if (field && val !== undefined) {
        if (val) out[field] = val;
        else delete out[field];
      }
    }
  }
  return out;
}

/** A W3C trace context (src/proxy.rs TraceParent). */
export interface TraceParent {
  /** 32 lowercase hex digits: what both proxies log the connection under */
  traceId: string;
  /** 16 lowercase hex digits */
  parentId: string;
  version: number;
  flags: number;
}

/** Random bytes for 170 trace contexts, refilled when used up: one CSPRNG call per 170 connections, not per connection. */
const rnd = Buffer.alloc(24 * 170);
let rndAt = rnd.length;

/** A new trace context: random trace and parent ids, version 00, flags 00 (ztunnel's TraceParent::new). */
export function newTraceParent(): TraceParent {
  if (rndAt === rnd.length) {
    randomFillSync(rnd);
    rndAt = 0;
  }
  const at = rndAt;
  rndAt += 24;
  return { traceId: rnd.toString('hex', at, at + 16), parentId: rnd.toString('hex', at + 16, at + 24), version: 0, flags: 0 };
}

/** The header value: `vv-<trace id>-<parent id>-ff`. */
export function formatTraceParent(t: TraceParent): string {
  return `${hex2(t.version)}-${t.traceId}-${t.parentId}-${hex2(t.flags)}`;
}

function hex2(n: number): string {
  return n.toString(16).padStart(2, '0');
}

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/i;

/**
 * A peer's `traceparent`, or null when it is absent or malformed (the caller then starts its own,
 * as ztunnel's extract_traceparent does). Ids are kept as sent (lowercased): ztunnel takes any
 * hex value, zeros included.
 */
export function parseTraceParent(value: string | string[] | undefined): TraceParent | null {
  const m = typeof value === 'string' && value.length === 55 ? TRACEPARENT.exec(value) : null;
  if (!m) return null;
  return { version: parseInt(m[1]!, 16), traceId: m[2]!.toLowerCase(), parentId: m[3]!.toLowerCase(), flags: parseInt(m[4]!, 16) };
}
