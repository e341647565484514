/**
 * The proxy's own HTTP surfaces: admin on 127.0.0.1:15000 (`/config_dump` without key material,
 * `/state` (where the state comes from, whether a reload is running, why the last one was
 * refused), `/logging?level=`), Prometheus on :15020/metrics, readiness on :15021/healthz/ready
 * (ready once the agent's snapshot is served, until the drain starts; a 503 says why not).
 * The proxy runs in its own network namespace (deploy/ztunnel-daemonset.yaml has no
 * hostNetwork), so the old and the new proxy of a rollout each have these ports.
 */
import http from 'node:http';
import { rootLogger } from '../util/log.js';
import type { Ztunnel } from './ztunnel.js';

export interface AdminOptions {
  admin: string; // host:port
  metrics: string;
  readiness: string;
  /** why the proxy is not ready (the 503's body), or null when it is */
  notReady: () => string | null;
}

function listen(addr: string, handler: http.RequestListener): Promise<http.Server> {
  const i = addr.lastIndexOf(':');
  const server = http.createServer(handler);
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(addr.slice(i + 1)), addr.slice(0, i), () => resolve(server));
  });
}

const LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'];

/** What the proxy knows, for operators (like `istioctl ztunnel-config all`). Never private keys. */
export async function configDump(zt: Ztunnel): Promise<object> {
  const s = zt.opts.state.snapshot.state;
  return {
    state: zt.opts.state.health(),
    workloads: s.workloads,
    services: s.services,
    // Istio objects as given, then ztunnel-form policies (local config)
    policies: [...s.policies, ...(s.authorizations ?? [])],
    certificates: await zt.certs.list(),
    pods: [...zt.pods.values()].map((p) => ({ ...p.info, listeners: p.listeners })),
  };
}

/** Starts the three servers; one that cannot listen is logged and skipped (the data path goes on). */
export async function startAdmin(zt: Ztunnel, o: AdminOptions): Promise<http.Server[]> {
  const safe = (addr: string, h: http.RequestListener): Promise<http.Server | null> =>
    listen(addr, h).catch((e: Error) => {
      zt.log.error({ addr, err: e.message }, 'cannot listen; this endpoint is unavailable');
      return null;
    });
  const json = (res: http.ServerResponse, code: number, body: unknown): void => {
    res.writeHead(code, { 'content-type': 'application/json' });
    res.end(`${JSON.stringify(body, null, 2)}\n`);
  };
  const admin = await safe(o.admin, (req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    if (url.pathname === '/config_dump') {
      configDump(zt).then((d) => json(res, 200, d), (e: Error) => json(res, 500, { error: e.message }));
    } else if (url.pathname === '/state') {
      json(res, 200, zt.opts.state.health());
    } else if (url.pathname === '/logging') {
      const level = url.searchParams.get('level');
      if (level && !LEVELS.includes(level)) return json(res, 400, { error: `level must be one of ${LEVELS.join(', ')}` });
      if (level) rootLogger.level = level;
      json(res, 200, { level: rootLogger.level });
    } else json(res, 404, { error: 'try /config_dump, /state or /logging?level=debug' });
  });
  const metrics = await safe(o.metrics, (req, res) => {
    const reg = zt.telemetry.registry;
    if (req.url !== '/metrics' && req.url !== '/stats/prometheus') return void res.writeHead(404).end();
    reg.metrics().then((m) => res.writeHead(200, { 'content-type': reg.contentType }).end(m));
  });
  const readiness = await safe(o.readiness, (req, res) => {
    if (req.url !== '/healthz/ready') return void res.writeHead(404).end();
    const why = o.notReady();
    const refused = zt.opts.state.lastError;
    const note = refused ? `; the last state update was refused (${refused.message}), serving the last good state` : '';
    res.writeHead(why ? 503 : 200).end(why ? `not ready: ${why}${note}\n` : `ready${note}\n`);
  });
  return [admin, metrics, readiness].filter((x): x is http.Server => x !== null);
}
