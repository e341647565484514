/**
 * The proxy's own HTTP surfaces, as ztunnel serves them (so its tools and istioctl work):
 * - admin on 127.0.0.1:15000 (ztunnel src/admin.rs `Service::spawn`): `/` an index of the
 *   endpoints, `/config_dump` (ztunnel's JSON, configdump.ts; no key material), `/logging`
 *   (POST; `?level=` and `?reset`), `/quitquitquit` (POST: shut down as on SIGTERM, i.e. drain),
 *   `/debug/pprof/*` answered 500 as a ztunnel built without the profiler answers; and inpod's
 *   `/state` (where the state comes from, whether a reload runs, why the last one was refused) and
 *   `/memory` (the process's RSS and V8 heap, JSON);
 * - Prometheus on :15020 (src/metrics/server.rs): `/metrics` and `/stats/prometheus`;
 * - readiness on :15021 (src/readiness/server.rs): GET `/healthz/ready`, 200 `ready` or 500
 *   `not ready, pending: <tasks>` with ztunnel's task names.
 * Anything else is 404 with an empty body, a wrong method 405. At the drain all three stop taking
 * connections (src/hyper_util.rs `Server::serve` takes the listener until the drain), so the
 * kubelet's probe fails from then on. The proxy runs in its own network namespace
 * (deploy/ztunnel-daemonset.yaml has no hostNetwork), so the old and the new proxy of a rollout
 * each have these ports.
 */
import http from 'node:http';
import v8 from 'node:v8';
import { initialLogFilter, logFilter, setLogFilter } from '../util/log.js';
import { applyClauses, formatFilter, parseClauses } from '../util/logfilter.js';
import { writeSerdeJson, type Sink } from '../util/serdejson.js';
import { buildInfo, configDump, configSection, dumpCerts, type ProxySettings } from './configdump.js';
import type { Ztunnel } from './ztunnel.js';
import type { MemoryReturner } from './memory.js';
import { mallocInfo } from '../native/memory.js';

export interface AdminOptions {
  admin: string; // host:port
  metrics: string;
  readiness: string;
  /**
   * The readiness tasks not done yet, by ztunnel's names ("workload proxy manager": the agent's
   * snapshot is not served whole; "state manager": the state is not loaded); empty when ready.
   */
  pending: () => string[];
  /** `/quitquitquit`: start the shutdown, as SIGTERM does (called once the answer is sent) */
  shutdown: () => void;
  /** the ZDS socket and the drain deadline, for the config dump */
  zds: string;
  drainSeconds: number;
  /** the state comes from a local config file (--config): the dump shows it as `staticConfig` */
  localConfig: boolean;
  /** what `/memory` says of the memory returned after loads */
  memory?: Pick<MemoryReturner, 'returns' | 'last'>;
}

export interface AdminServers {
  admin: http.Server | null;
  metrics: http.Server | null;
  readiness: http.Server | null;
  /** Stops taking connections (the drain); requests under way are answered. Idempotent. */
  stop(): void;
}

/** The endpoints the index lists (ztunnel's, less the profiler; inpod's `state`). */
const INDEX: [string, string][] = [
  ['config_dump', 'the configuration this proxy runs with: workloads, services, policies, certificates, served pods and their connections (JSON)'],
  ['logging', 'POST: the log level; ?level=debug or ?level=<component>=debug,info changes it, ?reset restores the start level'],
  ['quitquitquit', 'POST: drain and shut down, as on SIGTERM'],
  ['state', 'inpod: where the state comes from, whether a reload is running, why the last one was refused (JSON)'],
  ['memory', 'inpod: the process\'s memory as Node sees it (RSS, V8 heap, external and ArrayBuffer bytes) (JSON)'],
];

const PPROF = new Set(['/debug/pprof/profile', '/debug/pprof/heap', '/debug/pprof/heap/profiling']);

const LOGGING_HELP = `
usage: POST /logging                                   the current level
usage: POST /logging?level=<level>                     one level for every component
usage: POST /logging?level=<component>=<level>,<level> a level for a component, and the default
usage: POST /logging?reset                             back to the level the proxy started with

levels: off, error, warn, info, debug, trace
components: ztunnel, zds, authz, fastpath, memory, kube-state, manifest-state
`;

function listen(addr: string, handler: http.RequestListener): Promise<http.Server> {
  const i = addr.lastIndexOf(':');
  const server = http.createServer(handler);
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(addr.slice(i + 1)), addr.slice(0, i).replace(/^\[(.*)\]$/, '$1'), () => resolve(server));
  });
}

/** The address a server is bound to, as "ip:port" ("[ip]:port" for IPv6). */
function boundAddress(s: http.Server | null, fallback: string): string {
  const a = s?.address();
  if (!a || typeof a === 'string') return fallback;
  return a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
}

const text = (res: http.ServerResponse, code: number, body: string): void => {
  res.writeHead(code, { 'content-type': 'text/plain' }).end(body);
};
const empty = (res: http.ServerResponse, code: number): void => {
  res.writeHead(code).end();
};

/** What `/config_dump` answers, written to `sink` in pieces: ztunnel's dump of this proxy, as serde_json prints it. */
export async function writeConfigDump(zt: Ztunnel, settings: ProxySettings, localConfig: boolean, sink: Sink): Promise<void> {
  const held = await zt.certs.list();
  await writeSerdeJson(configDump({
    snapshot: zt.opts.state.snapshot,
    policies: zt.authorizer.current(),
    certificates: dumpCerts(held, zt.certs.rootPem),
    pods: [...zt.pods.values()].map((p) => ({ info: p.info, connections: zt.connections.dump(p.info.uid) })),
    config: configSection(settings),
    version: buildInfo(),
    localConfig,
  }), sink);
}

/** A sink into an HTTP response: waits for it to drain, fails once the client is gone. */
function responseSink(res: http.ServerResponse): Sink {
  return (piece) => {
    if (res.destroyed) throw new Error('the client went away');
    if (res.write(piece)) return;
    return new Promise<void>((resolve, reject) => {
      const done = (e?: Error): void => {
        res.off('drain', done);
        res.off('close', gone);
        if (e) reject(e);
        else resolve();
      };
      const gone = (): void => done(new Error('the client went away'));
      res.once('drain', done);
      res.once('close', gone);
    });
  };
}

/**
 * `/logging` (src/admin.rs `handle_logging`, `change_log_level`): POST only; without `level` or
 * `reset` it says the current filter; `level` adds its clauses to the filter (or, with `reset`,
 * to the start filter); an invalid level is 400 and changes nothing.
 */
function logging(req: http.IncomingMessage, url: URL, res: http.ServerResponse): void {
  if (req.method !== 'POST') return text(res, 405, `Invalid HTTP method\n ${LOGGING_HELP}`);
  const level = url.searchParams.get('level') ?? '';
  const reset = url.searchParams.has('reset');
  if (level !== '' || reset) {
    const clauses = level === '' ? [] : parseClauses(level);
    if (typeof clauses === 'string') return text(res, 400, `Invalid level provided: ${level}\n${LOGGING_HELP}`);
    setLogFilter(applyClauses(reset ? initialLogFilter() : logFilter(), clauses));
  }
  text(res, 200, `current log level is ${formatFilter(logFilter())}\n`);
}

/**
 * `/memory`: process.memoryUsage(), the V8 heap's committed size per space and glibc's arenas
 * (mallinfo2), in bytes, and how
 * often memory was returned after a load (memory.ts) and the last time (what `inpod bench`
 * reads; /proc/<pid>/status has the kernel's view of the same RSS).
 */
export function memoryReport(returner?: Pick<MemoryReturner, 'returns' | 'last'>): Record<string, unknown> {
  const spaces: Record<string, number> = {};
  for (const s of v8.getHeapSpaceStatistics()) spaces[s.space_name] = s.physical_space_size;
  return { ...process.memoryUsage(), heapSpaces: spaces, malloc: mallocInfo(), ...(returner ? { returned: { count: returner.returns, last: returner.last } } : {}) };
}

function index(res: http.ServerResponse): void {
  const rows = INDEX.map(([path, what]) => `<tr><td><a href="${path}">${path}</a></td><td>${what}</td></tr>`).join('\n');
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
  res.end(`<!DOCTYPE html>\n<html><head><title>inpod ztunnel admin</title></head><body>\n<h1>inpod ztunnel admin</h1>\n<table>\n<tr><th>endpoint</th><th>what it does</th></tr>\n${rows}\n</table>\n</body></html>\n`);
}

/** Starts the three servers; one that cannot listen is logged and skipped (the data path goes on). */
export async function startAdmin(zt: Ztunnel, o: AdminOptions): Promise<AdminServers> {
  const safe = (addr: string, h: http.RequestListener): Promise<http.Server | null> =>
    listen(addr, h).catch((e: Error) => {
      zt.log.error({ addr, err: e.message }, 'cannot listen; this endpoint is unavailable');
      return null;
    });
  let settings: ProxySettings = { adminAddr: o.admin, statsAddr: o.metrics, readinessAddr: o.readiness, zds: o.zds, drainSeconds: o.drainSeconds };
  let quitting = false;
  const admin = await safe(o.admin, (req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const path = url.pathname;
    if (path === '/config_dump') {
      // streamed: a large state is written in slices, the data path running in between
      res.writeHead(200, { 'content-type': 'application/json' });
      writeConfigDump(zt, settings, o.localConfig, responseSink(res)).then(
        () => res.end(),
        (e: Error) => {
          zt.log.warn({ err: e.message }, 'config dump cut short');
          res.destroy();
        },
      );
    } else if (path === '/quitquitquit') {
      if (req.method !== 'POST') return empty(res, 405);
      text(res, 200, 'shutdown now\n');
      if (!quitting) res.once('finish', () => o.shutdown());
      quitting = true;
    } else if (path === '/logging') {
      logging(req, url, res);
    } else if (path === '/') {
      index(res);
    } else if (path === '/state') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(`${JSON.stringify(zt.opts.state.health(), null, 2)}\n`);
    } else if (path === '/memory') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(`${JSON.stringify(memoryReport(o.memory), null, 2)}\n`);
    } else if (PPROF.has(path)) {
      text(res, 500, 'profiling is not available in this proxy (Node.js); run it with node --cpu-prof or --heap-prof instead\n');
    } else empty(res, 404);
  });
  const metrics = await safe(o.metrics, (req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    if (path !== '/metrics' && path !== '/stats/prometheus') return empty(res, 404);
    const reg = zt.telemetry.registry;
    reg.metrics().then((m) => res.writeHead(200, { 'content-type': reg.contentType }).end(m), (e: Error) => text(res, 500, e.message));
  });
  const readiness = await safe(o.readiness, (req, res) => {
    if (new URL(req.url ?? '/', 'http://x').pathname !== '/healthz/ready') return empty(res, 404);
    if (req.method !== 'GET') return empty(res, 405);
    const pending = o.pending();
    if (pending.length === 0) return text(res, 200, 'ready\n');
    text(res, 500, `not ready, pending: ${[...pending].sort().join(', ')}\n`);
  });
  settings = { ...settings, adminAddr: boundAddress(admin, o.admin), statsAddr: boundAddress(metrics, o.metrics), readinessAddr: boundAddress(readiness, o.readiness) };
  let stopped = false;
  return {
    admin,
    metrics,
    readiness,
    stop: () => {
      if (stopped) return;
      stopped = true;
      for (const s of [admin, metrics, readiness]) s?.close();
    },
  };
}
