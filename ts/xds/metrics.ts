/**
 * ztunnel's xDS series (src/xds/metrics.rs, registered under the "istio" prefix of
 * src/metrics.rs), in the proxy's Prometheus registry:
 *
 *   - istio_xds_connection_terminations_total{reason}: streams to istiod that ended, by why
 *     (ConnectionError: never established; Error: failed; Reconnect: ended in a way that is
 *     routine, such as istiod closing it; Complete: ended cleanly);
 *   - istio_xds_message_total{url}: responses received, by type URL;
 *   - istio_xds_message_bytes_total{url}: bytes of the resources in them (the encoded resources,
 *     as ztunnel counts: not the envelope).
 */
import { Counter, type Registry } from 'prom-client';
import type { DeltaDiscoveryResponse } from './proto.js';

export type TerminationReason = 'ConnectionError' | 'Error' | 'Reconnect' | 'Complete';

export class XdsMetrics {
  readonly terminations: Counter<'reason'>;
  readonly messages: Counter<'url'>;
  readonly bytes: Counter<'url'>;

  constructor(registry: Registry) {
    this.terminations = new Counter({
      name: 'istio_xds_connection_terminations_total',
      help: 'The total number of completed connections to xds server (unstable)',
      labelNames: ['reason'],
      registers: [registry],
    });
    this.messages = new Counter({ name: 'istio_xds_message_total', help: 'Total number of messages received (unstable)', labelNames: ['url'], registers: [registry] });
    this.bytes = new Counter({ name: 'istio_xds_message_bytes_total', help: 'Total number of bytes received (unstable)', labelNames: ['url'], registers: [registry] });
  }

  terminated(reason: TerminationReason): void {
    this.terminations.inc({ reason });
  }

  received(r: DeltaDiscoveryResponse): void {
    this.messages.inc({ url: r.type_url });
    let n = 0;
    for (const res of r.resources) n += res.resource?.value.length ?? 0;
    this.bytes.inc({ url: r.type_url }, n);
  }
}
