/**
 * The agent's end of the CNI plugin (inpod-cni): HTTP on a unix socket, POST /cmd/add and
 * /cmd/del with the plugin's PodEvent as JSON; 200 with the handler's answer, 500 with
 * {error} when it fails, 400 for a body that is not JSON, 404 for another path. As istio-cni's
 * CniPluginServer (cni/pkg/nodeagent/cni-watcher.go); the plugin side is ts/cni/plugin.ts.
 */
import http from 'node:http';
import type { PodEvent } from '../cni/plugin.js';
import { SocketPath } from '../util/sockpath.js';

export interface CniHandlers {
  add(ev: PodEvent): Promise<object>;
  del(ev: PodEvent): Promise<void>;
}

export class CniServer {
  #server?: http.Server;
  #path?: SocketPath;
  /** requests this server's handlers are working on */
  readonly #inflight = new Set<Promise<unknown>>();
  #forwarding = false;

  constructor(readonly socket: string, private readonly handlers: CniHandlers) {}

  /**
   * Listens on the socket, taking the path over atomically from an earlier agent's socket (a
   * plugin connecting meanwhile reaches one or the other: ts/util/sockpath.ts).
   */
  async start(): Promise<void> {
    const server = http.createServer((req, res) => {
      let body = '';
      req.on('data', (d) => (body += d));
      req.on('end', () => {
        const reply = (code: number, obj: object): void => {
          // one request per plugin run: no keep-alive, so a closing server's connections end promptly
          res.writeHead(code, { 'content-type': 'application/json', connection: 'close' });
          res.end(JSON.stringify(obj));
        };
        if (this.#forwarding) return this.#forward(req.url ?? '', body, res, reply);
        let ev: PodEvent;
        try {
          ev = JSON.parse(body) as PodEvent;
        } catch {
          return reply(400, { error: 'request body is not JSON' });
        }
        const op = req.url === '/cmd/add' ? this.handlers.add(ev) : req.url === '/cmd/del' ? this.handlers.del(ev).then(() => ({})) : null;
        if (!op) return reply(404, { error: `unknown path ${req.url}` });
        const answered = op.then((r) => reply(200, r), (e: Error) => reply(500, { error: e.message }));
        this.#inflight.add(answered);
        void answered.finally(() => this.#inflight.delete(answered));
      });
    });
    this.#server = server;
    this.#path = await SocketPath.take(this.socket, 'INPOD_ERR_AGENT', (tmp) => new Promise<void>((r) => server.listen(tmp, () => r())));
  }

  /**
   * A newer agent holds the path now (it took it over before asking this agent to hand over):
   * a request that still reaches this server (its plugin connected just before the path changed
   * hands) is passed on to the newer agent unchanged, so none is lost. Resolves once the
   * requests this server's handlers took are answered. The listener stays until close().
   */
  async handOver(): Promise<void> {
    this.#forwarding = true;
    while (this.#inflight.size > 0) await Promise.allSettled([...this.#inflight]);
  }

  #forward(url: string, body: string, res: http.ServerResponse, reply: (code: number, obj: object) => void): void {
    if (!this.#path || this.#path.owned) {
      return reply(503, { error: `the inpod agent on ${this.socket} is handing over and no newer agent holds the socket; try again` });
    }
    const up = http.request({ socketPath: this.socket, path: url, method: 'POST', headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, { 'content-type': 'application/json', connection: 'close' });
      answer.pipe(res);
    });
    up.on('error', (e) => reply(502, { error: `passing the request on to the newer inpod agent on ${this.socket} failed: ${e.message}` }));
    up.end(body);
  }

  /**
   * Stops taking requests; resolves once those under way are answered. The path is removed only
   * if it is still this server's (a newer agent's socket stays).
   */
  close(): Promise<void> {
    const server = this.#server;
    this.#path?.release();
    if (!server) return Promise.resolve();
    return new Promise<void>((r) => server.close(() => r()));
  }
}
