/**
 * The proxy's connection observer and its Prometheus registry, with ztunnel's series, names and
 * labels, so Istio's dashboards and Kiali read an inpod proxy as they read ztunnel:
 *
 *  - istio_tcp_connections_opened_total, _closed_total, _failed_total, istio_tcp_received_bytes_total
 *    (request bytes, source to destination), istio_tcp_sent_bytes_total (response bytes), all with
 *    the traffic labels of labels.ts; istio_tcp_sockets_open{reporter} (istio/ztunnel
 *    src/proxy/metrics.rs Metrics::new, with the "istio" prefix of src/metrics.rs sub_registry);
 *  - istio_build{component="ztunnel",tag} (src/metrics/meta.rs; the tag is inpod's version);
 *  - workload_manager_active_proxy_count, _pending_proxy_count, _proxies_started_total,
 *    _proxies_stopped_total (src/inpod/metrics.rs, registered without the prefix in src/app.rs);
 *  - the process metrics, and inpod's own series (inpod_fastpath_*, fastpath.ts).
 *
 * The xDS series (istio_xds_*) join this registry in Istio mode (ts/xds/metrics.ts). Not
 * registered: on-demand DNS, DNS and the CRL series (features inpod does not have), Tokio's
 * runtime series.
 *
 * One access-log line per connection in ztunnel's fields and messages (accesslog.ts). Bytes are
 * counted when the connection ends (ztunnel counts them as they are copied), under the labels
 * the connection opened with, as ztunnel does: a connection's bytes are never under a failure
 * flag, its close and failure are. It decides nothing (policy is ts/policy/authorizer.ts).
 */
import { readFileSync } from 'node:fs';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { Logger } from '../util/log.js';
import type { StateStore } from '../state/store.js';
import type { ConnContext, ConnObserver, ConnRecord, EarlyRefusal, ReportedConn } from '../proxy/hooks.js';
import { completeLine, connectionFields, earlyDenyLine } from './accesslog.js';
import { FAILURE_FLAGS, LabelCache, seriesKey, TRAFFIC_LABELS, type TrafficLabels } from './labels.js';

/** How many pods the proxy serves, and how many it could not (ztunnel's workload_states and pending_workloads). */
export interface ProxyCounts {
  active: number;
  pending: number;
}

export interface IstioTelemetryOptions {
  /** the Node.js process series (default on) */
  processMetrics?: boolean;
  /** the value of istio_build's tag (default: inpod's version from package.json) */
  buildTag?: string;
}

/**
 * A counter family with the traffic labels, summed here by label values and handed to prom-client
 * at each scrape: a connection costs a Map update per series instead of prom-client validating
 * and hashing 27 labels on every increment (measured: 70 against 25 µs per connection).
 */
class TrafficCounter {
  readonly #rows = new Map<string, { labels: TrafficLabels; value: number }>();

  constructor(name: string, help: string, registers: Registry[]) {
    const rows = this.#rows;
    new Counter({
      name, help, labelNames: [...TRAFFIC_LABELS], registers,
      collect() {
        this.reset();
        for (const r of rows.values()) this.inc(r.labels, r.value);
      },
    });
  }

  /** Adds `n` (0 makes the series exist) to the series `key` names (seriesKey). */
  add(key: string, labels: TrafficLabels, n = 1): void {
    const r = this.#rows.get(key);
    if (r) r.value += n;
    else this.#rows.set(key, { labels, value: n });
  }
}

/** inpod's version, from the package.json beside dist/ (and ts/) */
function ownVersion(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: string }).version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

export class IstioTelemetry implements ConnObserver {
  readonly registry = new Registry();
  readonly #opened: TrafficCounter;
  readonly #closed: TrafficCounter;
  readonly #failed: TrafficCounter;
  readonly #received: TrafficCounter;
  readonly #sent: TrafficCounter;
  /** istio_tcp_sockets_open by reporter; a reporter appears once one of its sockets has opened */
  readonly #sockets: Partial<Record<'source' | 'destination', number>> = {};
  readonly #started: Counter;
  readonly #stopped: Counter;
  #counts: () => ProxyCounts = () => ({ active: 0, pending: 0 });
  readonly #access: Logger;
  /** the labels of connections described alike, per state snapshot */
  readonly #labels = new LabelCache();

  constructor(private readonly state: StateStore, log: Logger, opts: IstioTelemetryOptions = {}) {
    this.#access = log.child({ scope: 'access' });
    const registers = [this.registry];
    const traffic = (name: string, help: string): TrafficCounter => new TrafficCounter(name, help, registers);
    // help texts as ztunnel's
    this.#opened = traffic('istio_tcp_connections_opened_total', 'The total number of TCP connections opened');
    this.#closed = traffic('istio_tcp_connections_closed_total', 'The total number of TCP connections closed');
    this.#received = traffic('istio_tcp_received_bytes_total', 'The size of total bytes received during request in case of a TCP connection');
    this.#sent = traffic('istio_tcp_sent_bytes_total', 'The size of total bytes sent during response in case of a TCP connection');
    this.#failed = traffic('istio_tcp_connections_failed_total', 'The total number of TCP connections that failed to establish (unstable)');
    const sockets = this.#sockets;
    new Gauge({
      name: 'istio_tcp_sockets_open', help: 'The current number of open TCP sockets (unstable)', labelNames: ['reporter'], registers,
      // counted here, set at each scrape: prom-client hashes the label set on every inc and dec
      collect() {
        this.reset();
        for (const [reporter, n] of Object.entries(sockets)) if (n !== undefined) this.set({ reporter }, n);
      },
    });
    new Gauge({ name: 'istio_build', help: 'Istio component build info', labelNames: ['component', 'tag'], registers })
      .set({ component: 'ztunnel', tag: opts.buildTag ?? ownVersion() }, 1);
    const counts = (): ProxyCounts => this.#counts();
    new Gauge({ name: 'workload_manager_active_proxy_count', help: 'The total number current workloads with active proxies (unstable)', registers,
      collect() { this.set(counts().active); } });
    new Gauge({ name: 'workload_manager_pending_proxy_count', help: 'The total number current workloads with pending proxies (unstable)', registers,
      collect() { this.set(counts().pending); } });
    this.#started = new Counter({ name: 'workload_manager_proxies_started_total', help: 'The total number of proxies that were started (unstable)', registers });
    this.#stopped = new Counter({ name: 'workload_manager_proxies_stopped_total', help: 'The total number of proxies that were stopped (unstable)', registers });
    if (opts.processMetrics ?? true) collectDefaultMetrics({ register: this.registry });
  }

  /** Where the workload-manager gauges read from (ztunnel.ts: its served and failed pods). */
  countProxies(counts: () => ProxyCounts): void {
    this.#counts = counts;
  }

  /** A pod's proxy started (its listeners are open). */
  proxyStarted(): void {
    this.#started.inc();
  }

  /** A pod's proxy stopped (its listeners are closed and its connections over). */
  proxyStopped(): void {
    this.#stopped.inc();
  }

  opened(ctx: ConnContext): ReportedConn {
    const { described: d, key } = this.#labels.get(this.state.snapshot, ctx);
    const labels: TrafficLabels = d.labels;
    this.#opened.add(key, labels);
    // ztunnel takes the byte series at the open: they exist (at 0) from then on
    this.#received.add(key, labels, 0);
    this.#sent.add(key, labels, 0);
    if (this.#access.isLevelEnabled('debug')) this.#access.debug(connectionFields(d, ctx), 'connection opened');
    return {
      closed: (rec: ConnRecord): void => {
        const flags = rec.responseFlags ?? '-';
        const [final, finalKey] = flags === labels.response_flags ? [labels, key] : [{ ...labels, response_flags: flags }, seriesKey(labels, flags)];
        this.#closed.add(finalKey, final);
        if (FAILURE_FLAGS.has(flags)) this.#failed.add(finalKey, final);
        // Istio's naming: "received" counts request bytes (source to destination), "sent" the response
        if (rec.bytesSent) this.#received.add(key, labels, rec.bytesSent);
        if (rec.bytesReceived) this.#sent.add(key, labels, rec.bytesReceived);
        if (!this.#access.isLevelEnabled(rec.outcome === 'ok' ? 'info' : 'error')) return;
        const line = completeLine(d, rec, flags);
        if (line.level === 'info') this.#access.info(line.fields, 'connection complete');
        else this.#access.error(line.fields, 'connection complete');
      },
    };
  }

  refused(r: EarlyRefusal): void {
    this.#access.warn(earlyDenyLine(r), 'connection failed');
  }

  socketOpened(reporter: 'source' | 'destination'): () => void {
    const sockets = this.#sockets;
    sockets[reporter] = (sockets[reporter] ?? 0) + 1;
    let open = true;
    return () => {
      if (!open) return;
      open = false;
      sockets[reporter]!--;
    };
  }
}
