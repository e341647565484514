/**
 * The proxy's connection observer: Istio's TCP metrics (names and labels as Istio and ztunnel
 * report them, so Prometheus dashboards and Kiali work unchanged) and one access-log line per
 * connection. It decides nothing (policy is ts/policy/authorizer.ts).
 */
import { Counter, Registry, collectDefaultMetrics } from 'prom-client';
import type { Logger } from '../util/log.js';
import type { StateStore } from '../state/store.js';
import type { ConnContext, ConnObserver, ConnRecord } from '../proxy/hooks.js';

const LABELS = [
  'reporter',
  'source_workload',
  'source_workload_namespace',
  'source_principal',
  'source_app',
  'source_version',
  'destination_workload',
  'destination_workload_namespace',
  'destination_principal',
  'destination_app',
  'destination_version',
  'destination_service',
  'connection_security_policy',
  'response_flags',
] as const;
type Labels = Record<(typeof LABELS)[number], string>;

export class IstioTelemetry implements ConnObserver {
  readonly registry = new Registry();
  readonly #opened;
  readonly #closed;
  readonly #sent;
  readonly #received;

  constructor(private readonly state: StateStore, private readonly log: Logger, opts: { processMetrics?: boolean } = {}) {
    const mk = (name: string, help: string): Counter<(typeof LABELS)[number]> =>
      new Counter({ name, help, labelNames: [...LABELS], registers: [this.registry] });
    this.#opened = mk('istio_tcp_connections_opened_total', 'Total TCP connections opened');
    this.#closed = mk('istio_tcp_connections_closed_total', 'Total TCP connections closed');
    this.#sent = mk('istio_tcp_sent_bytes_total', 'Bytes sent during the response of a TCP connection (destination to source)');
    this.#received = mk('istio_tcp_received_bytes_total', 'Bytes received during the request of a TCP connection (source to destination)');
    if (opts.processMetrics ?? true) collectDefaultMetrics({ register: this.registry });
  }

  #labels(ctx: ConnContext, flags: string): Labels {
    const snap = this.state.snapshot;
    const s = snap.byIp.get(ctx.src.ip);
    const d = snap.byIp.get(ctx.dst.ip);
    const u = (v: string | undefined): string => v || 'unknown';
    return {
      reporter: ctx.direction === 'outbound' ? 'source' : 'destination',
      source_workload: u(s?.name),
      source_workload_namespace: u(s?.namespace),
      source_principal: u(ctx.src.identity),
      source_app: u(s?.labels.app),
      source_version: u(s?.labels.version),
      destination_workload: u(d?.name),
      destination_workload_namespace: u(d?.namespace),
      destination_principal: u(ctx.dst.identity),
      destination_app: u(d?.labels.app),
      destination_version: u(d?.labels.version),
      destination_service: u(ctx.service ?? (d ? Object.keys(d.services)[0]?.split('/')[1] : undefined)),
      // 'local' (same node): both identities are this proxy's own, verified as for HBONE, and no
      // byte leaves the node; dashboards show it as the mTLS it stands in for
      connection_security_policy: ctx.transport === 'hbone' || ctx.transport === 'local' ? 'mutual_tls' : 'unknown',
      response_flags: flags,
    };
  }

  opened(ctx: ConnContext): void {
    this.#opened.inc(this.#labels(ctx, '-'));
  }

  closed(rec: ConnRecord): void {
    const l = this.#labels(rec, rec.responseFlags ?? '-');
    this.#closed.inc(l);
    // Istio's naming: "received" counts request bytes (source to destination), "sent" the response
    if (rec.bytesSent) this.#received.inc(l, rec.bytesSent);
    if (rec.bytesReceived) this.#sent.inc(l, rec.bytesReceived);
    const line = {
      access: true,
      direction: rec.direction,
      transport: rec.transport,
      src: rec.src,
      dst: rec.dst,
      pod: `${rec.pod.namespace}/${rec.pod.name}`,
      bytesSent: rec.bytesSent,
      bytesReceived: rec.bytesReceived,
      durationMs: rec.durationMs,
      outcome: rec.outcome,
      responseFlags: rec.responseFlags,
      error: rec.error,
      path: rec.path,
      kernelBytes: rec.kernelBytes,
      // ztunnel's span: the line carries the connection's trace id under its direction
      ...(rec.traceId ? { [rec.direction]: { id: rec.traceId } } : {}),
    };
    if (rec.outcome === 'ok') this.log.info(line, 'connection complete');
    else this.log.warn(line, 'connection failed');
  }
}
