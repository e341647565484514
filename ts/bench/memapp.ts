/**
 * The apps and clients of the memory scenario (memory.ts), in one child process the bench forks:
 * an echo server inside each server pod, and clients connecting from inside each client pod. The
 * sockets are made in the pods' netns by the addon (socketInNs), without the proxy's mark, so
 * capture takes the clients' connections to the proxy as it takes an app's. The process joins the
 * given cgroup before it makes any socket: the eBPF hooks see the cgroup a socket was made in.
 *
 *   node dist/bench/memapp.js <cgroup dir>     (forked, with an IPC channel)
 *
 * Requests (one at a time, each answered with a MemAppReply):
 * - listen: an echo server on `port` in each netns
 * - open: a connection per entry, `concurrency` at a time; each sends one byte and waits for its
 *   echo, so it counts as open only once it reached the app through the proxy
 * - close: ends every client connection and waits until the servers saw them all closed
 */
import { openSync, closeSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { socketInNs } from '../native/index.js';

export type MemAppRequest =
  | { op: 'listen'; netns: string[]; port: number }
  | { op: 'open'; conns: { netns: string; ip: string; port: number }[]; concurrency: number }
  | { op: 'close' };

export interface MemAppReply {
  ok: boolean;
  opened?: number;
  failed?: number;
  error?: string;
}

const clients = new Set<net.Socket>();
const accepted = new Set<net.Socket>();
const servers: net.Server[] = [];

function nsFd<T>(path: string, f: (fd: number) => T): T {
  const fd = openSync(path, 'r');
  try {
    return f(fd);
  } finally {
    closeSync(fd);
  }
}

async function listen(netns: string[], port: number): Promise<void> {
  for (const ns of netns) {
    const fd = nsFd(ns, (n) => socketInNs(n, { family: 4, reuseAddr: true, bind: { ip: '0.0.0.0', port }, listen: 1024 }).release());
    const server = net.createServer((s) => {
      accepted.add(s);
      s.on('data', (d) => s.write(d));
      s.on('error', () => {});
      s.on('close', () => accepted.delete(s));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ fd }, () => resolve());
    });
    servers.push(server);
  }
}

/** One connection from inside `netns`, open once its byte came back; rejects after 10 s. */
function connect(netns: string, ip: string, port: number): Promise<void> {
  const fd = nsFd(netns, (n) => socketInNs(n, { family: 4 }).release());
  const s = new net.Socket({ fd } as net.SocketConstructorOpts);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => s.destroy(new Error(`no echo from ${ip}:${port} in 10 s`)), 10_000);
    s.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    s.connect({ host: ip, port }, () => s.write('x'));
    s.once('data', () => {
      clearTimeout(timer);
      clients.add(s);
      s.removeAllListeners('error');
      s.on('error', () => {});
      s.once('close', () => clients.delete(s));
      resolve();
    });
  });
}

async function open(conns: { netns: string; ip: string; port: number }[], concurrency: number): Promise<MemAppReply> {
  let next = 0;
  let opened = 0;
  let failed = 0;
  let error: string | undefined;
  const worker = async (): Promise<void> => {
    while (next < conns.length) {
      const c = conns[next++]!;
      try {
        await connect(c.netns, c.ip, c.port);
        opened++;
      } catch (e) {
        failed++;
        error ??= (e as Error).message;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, concurrency) }, worker));
  return { ok: failed === 0, opened, failed, ...(error ? { error } : {}) };
}

async function close(): Promise<void> {
  for (const s of clients) s.end();
  const until = Date.now() + 15_000;
  while ((clients.size > 0 || accepted.size > 0) && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
  for (const s of [...clients, ...accepted]) s.destroy();
}

async function handle(m: MemAppRequest): Promise<MemAppReply> {
  switch (m.op) {
    case 'listen':
      await listen(m.netns, m.port);
      return { ok: true };
    case 'open':
      return open(m.conns, m.concurrency);
    case 'close':
      await close();
      return { ok: true };
  }
}

if (process.send) {
  writeFileSync(`${process.argv[2]}/cgroup.procs`, String(process.pid));
  process.on('message', (m: MemAppRequest) => {
    handle(m).then(
      (r) => process.send!(r),
      (e: Error) => process.send!({ ok: false, error: e.message }),
    );
  });
  process.send({ ok: true });
}
