/**
 * The plugin as a container runtime meets it: the static executable installed by the agent's
 * installer (ts/cni/conflist.ts installBinary) into a bin dir, run with only the CNI_* variables
 * and the configuration on stdin; and a stand-in for the agent's socket that records what
 * reaches it.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { installBinary } from '../../ts/cni/conflist.js';
import { pluginBinary } from '../../ts/cni/plugin.js';

export interface CniRun {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Installs the plugin into a new bin dir under `parent` (default: a temp dir); returns its path. */
export function installedPlugin(parent?: string): string {
  const dir = mkdtempSync(join(parent ?? tmpdir(), 'inpod-cni-bin-'));
  return installBinary(dir, pluginBinary());
}

/** Runs `bin` (or `argv`, e.g. a chroot) as a runtime does: only `env` (and PATH), the config on stdin. */
export function runCni(bin: string | string[], env: Record<string, string>, stdin: string | Buffer = ''): Promise<CniRun> {
  const [file, ...args] = typeof bin === 'string' ? [bin] : bin;
  return new Promise((resolve) => {
    const t0 = Date.now();
    const p = spawn(file!, args, { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    p.stdin.on('error', () => {}); // the plugin may stop reading an oversized config
    p.stdin.end(stdin);
    p.on('close', (code) => resolve({ code, stdout, stderr, ms: Date.now() - t0 }));
  });
}

export interface AgentRequest {
  path: string;
  body: Record<string, unknown>;
}

/**
 * An HTTP server on a unix socket in place of the agent's (ts/agent/cniserver.ts): records every
 * request, answers with `answer` (200 {} by default); `connections` counts every connection,
 * even one that never sent a request.
 */
export class FakeAgent {
  readonly requests: AgentRequest[] = [];
  connections = 0;
  answer: (req: AgentRequest) => { status: number; body: object } | null = () => ({ status: 200, body: {} });
  readonly #server: http.Server;

  constructor(readonly socket: string) {
    this.#server = http.createServer((req, res) => {
      let text = '';
      req.on('data', (d) => (text += d));
      req.on('end', () => {
        const r: AgentRequest = { path: req.url ?? '', body: JSON.parse(text || '{}') as Record<string, unknown> };
        this.requests.push(r);
        const a = this.answer(r);
        if (!a) return; // never answers
        res.writeHead(a.status, { 'content-type': 'application/json' }).end(JSON.stringify(a.body));
      });
    });
    this.#server.on('connection', () => this.connections++);
  }

  listen(): Promise<void> {
    return new Promise((r) => this.#server.listen(this.socket, () => r()));
  }

  close(): Promise<void> {
    this.#server.closeAllConnections();
    return new Promise((r) => this.#server.close(() => r()));
  }
}
