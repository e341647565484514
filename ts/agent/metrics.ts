/** The agent's Prometheus metrics (served by `inpod agent` on its health address, /metrics). */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

export interface AgentMetrics {
  registry: Registry;
  /** pod sandboxes captured now */
  enrolled: Gauge;
  /** from the start of a capture to the proxy's Ack and the annotation */
  latency: Histogram;
  /** failed enroll / unenroll operations, by op */
  errors: Counter<'op'>;
  /** pod reconciles run again after a retryable failure */
  retries: Counter;
}

export function agentMetrics(registry = new Registry()): AgentMetrics {
  return {
    registry,
    enrolled: new Gauge({ name: 'inpod_agent_pods_enrolled', help: 'Pod sandboxes (network namespaces) captured on this node', registers: [registry] }),
    latency: new Histogram({ name: 'inpod_agent_enroll_seconds', help: 'Time to capture a pod and have the proxy acknowledge it', buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5], registers: [registry] }),
    errors: new Counter({ name: 'inpod_agent_errors_total', help: 'Failed enroll/unenroll operations', labelNames: ['op'], registers: [registry] }),
    retries: new Counter({ name: 'inpod_agent_retries_total', help: 'Pod reconciles scheduled again after a retryable failure (backoff)', registers: [registry] }),
  };
}
