/**
 * The agent's end of the CNI plugin (inpod-cni): HTTP on a unix socket, POST /cmd/add and
 * /cmd/del with the plugin's PodEvent as JSON; 200 with the handler's answer, 500 with
 * {error} when it fails, 400 for a body that is not JSON, 404 for another path. As istio-cni's
 * CniPluginServer (cni/pkg/nodeagent/cni-watcher.go); the plugin side is ts/cni/plugin.ts.
 */
import http from 'node:http';
import { existsSync, mkdirSync, unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import type { PodEvent } from '../cni/plugin.js';

export interface CniHandlers {
  add(ev: PodEvent): Promise<object>;
  del(ev: PodEvent): Promise<void>;
}

export class CniServer {
  #server?: http.Server;

  constructor(readonly socket: string, private readonly handlers: CniHandlers) {}

  /** Listens on the socket (a stale one from an earlier agent is replaced). */
  async start(): Promise<void> {
    mkdirSync(dirname(this.socket), { recursive: true });
    if (existsSync(this.socket)) unlinkSync(this.socket);
    const server = http.createServer((req, res) => {
      let body = '';
      req.on('data', (d) => (body += d));
      req.on('end', () => {
        const reply = (code: number, obj: object): void => {
          res.writeHead(code, { 'content-type': 'application/json' });
          res.end(JSON.stringify(obj));
        };
        let ev: PodEvent;
        try {
          ev = JSON.parse(body) as PodEvent;
        } catch {
          return reply(400, { error: 'request body is not JSON' });
        }
        const op = req.url === '/cmd/add' ? this.handlers.add(ev) : req.url === '/cmd/del' ? this.handlers.del(ev).then(() => ({})) : null;
        if (!op) return reply(404, { error: `unknown path ${req.url}` });
        op.then((r) => reply(200, r), (e: Error) => reply(500, { error: e.message }));
      });
    });
    this.#server = server;
    await new Promise<void>((r) => server.listen(this.socket, () => r()));
  }

  close(): void {
    this.#server?.close();
    if (existsSync(this.socket)) unlinkSync(this.socket);
  }
}
