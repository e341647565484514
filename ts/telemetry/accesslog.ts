/**
 * The access-log lines, in ztunnel's field names and messages (istio/ztunnel
 * src/proxy/metrics.rs: ConnectionResultBuilder::new/build "connection opened",
 * ConnectionResult::record_internal "connection complete", log_early_deny "connection failed";
 * all with the target "access", which ztunnel's JSON log writes as "scope":"access"). Pure: each
 * function returns the fields of one line; istio.ts writes them with pino (which names the
 * message `msg` and the level a number, where ztunnel writes "message" and "info").
 *
 * A field nobody knows is left out, as ztunnel leaves out a None. Beyond ztunnel's fields the
 * complete line carries inpod's own: transport (hbone, plaintext, passthrough, local),
 * response_flags (the metric label), path and kernel_bytes (the kernel fast path's share) and
 * pod (the served pod, namespace/name).
 */
import type { ConnContext, ConnRecord, EarlyRefusal } from '../proxy/hooks.js';
import type { MeshError } from '../util/errors.js';
import { socketAddr } from '../util/sockaddr.js';
import { isMutualTls, UNKNOWN, type Described } from './labels.js';

/** One line's fields; an object is a span's fields under its name (ztunnel's JSON log: `"outbound":{"id":...}`). */
export type LogFields = Record<string, string | number | Record<string, string>>;

function put(f: LogFields, key: string, v: string | undefined): void {
  if (v !== undefined && v !== '' && v !== UNKNOWN) f[key] = v;
}

/** The fields "connection opened" and "connection complete" share: who talked to whom. */
export function connectionFields(d: Described, ctx: ConnContext): LogFields {
  const l = d.labels;
  const mtls = isMutualTls(ctx);
  const f: LogFields = { 'src.addr': socketAddr(ctx.src) };
  // the workloads' pod names, else their canonical service (ztunnel's ConnectionResultBuilder::new);
  // the served pod's name is known from ZDS even when the state lacks its workload
  const out = ctx.direction === 'outbound';
  put(f, 'src.workload', d.source?.name || (out ? ctx.pod.name : '') || l.source_canonical_service);
  put(f, 'src.namespace', l.source_workload_namespace);
  if (mtls) put(f, 'src.identity', l.source_principal);
  put(f, 'src.cluster', l.source_cluster);
  f['dst.addr'] = socketAddr(ctx.via ?? ctx.dst);
  if (ctx.via) f['dst.hbone_addr'] = socketAddr(ctx.dst);
  put(f, 'dst.service', l.destination_service);
  put(f, 'dst.workload', d.destination?.name || (out ? '' : ctx.pod.name) || l.destination_canonical_service);
  put(f, 'dst.namespace', l.destination_workload_namespace);
  if (mtls) put(f, 'dst.identity', l.destination_principal);
  put(f, 'dst.cluster', l.destination_cluster);
  f.direction = ctx.direction;
  putSpan(f, ctx);
  return f;
}

/**
 * The span a line is written in (ztunnel outbound.rs `info_span!("outbound", id)`, inbound.rs
 * `info_span!("inbound", id, peer)`; its JSON log writes a span as an object under its name):
 * both proxies log one connection under its trace id.
 */
function putSpan(f: LogFields, c: { direction: 'inbound' | 'outbound'; src: { ip: string; port: number }; traceId?: string }): void {
  if (c.traceId) f[c.direction] = c.direction === 'outbound' ? { id: c.traceId } : { id: c.traceId, peer: socketAddr(c.src) };
}

/**
 * The "connection complete" line: the shared fields, then the bytes as the reporting side sees
 * them (outbound: sent is the request; inbound: sent is the response, as ztunnel unflips its
 * counters for the log), the duration ("12ms") and, for a failure, the error. `level` is info,
 * or error when the connection failed or was denied.
 */
export function completeLine(d: Described, rec: ConnRecord, responseFlags: string): { level: 'info' | 'error'; fields: LogFields } {
  const f = connectionFields(d, rec);
  const out = rec.direction === 'outbound';
  f.bytes_sent = out ? rec.bytesSent : rec.bytesReceived;
  f.bytes_recv = out ? rec.bytesReceived : rec.bytesSent;
  f.duration = `${Math.max(0, Math.round(rec.durationMs))}ms`;
  const failed = rec.outcome !== 'ok';
  if (failed) f.error = rec.error ?? responseFlags;
  f.transport = rec.transport;
  f.response_flags = responseFlags;
  if (rec.path) f.path = rec.path;
  if (rec.kernelBytes !== undefined) f.kernel_bytes = rec.kernelBytes;
  f.pod = `${rec.pod.namespace}/${rec.pod.name}`;
  return { level: failed ? 'error' : 'info', fields: f };
}

/** The "connection failed" line (warn) of a connection refused before it was reported: addresses, direction, error (and its code). */
export function earlyDenyLine(r: EarlyRefusal): LogFields {
  const f: LogFields = { 'src.addr': socketAddr(r.src), 'dst.addr': socketAddr(r.dst), direction: r.direction, error: r.error.message };
  const code = (r.error as MeshError).code;
  if (typeof code === 'string') f.code = code;
  putSpan(f, r);
  return f;
}
