#!/usr/bin/env node
/**
 * What the proxy's userspace relay costs: JS heap per relayed tunnel, and the time of one bulk
 * echo through it. This process is the proxy (a listener whose connections are relayed to an echo
 * server); a child process holds the clients and the echo server, so the heap measured here is the
 * proxy's alone: two sockets (or an HTTP/2 stream and a socket) and the relay per tunnel. The
 * bulk echo's time is the client's (first byte written to last byte back), its CPU the proxy's.
 *
 *   node --expose-gc bench/relay-mem.mjs [--relay dist/proxy/relay.js] [--mode tcp|h2]
 *                                        [--tunnels 1000] [--mib 48]
 *
 * --relay: the module whose `relay(a, b, done)` is measured (any build of it, to compare two).
 * --mode h2: tunnels are HTTP/2 CONNECT streams (h2c, 100 per session) relayed to the echo
 * server, as the HBONE inbound does (without TLS, which costs the same either way).
 */
import { fork } from 'node:child_process';
import http2 from 'node:http2';
import net from 'node:net';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const { values: opt } = parseArgs({
  options: {
    relay: { type: 'string', default: 'dist/proxy/relay.js' },
    mode: { type: 'string', default: 'tcp' },
    tunnels: { type: 'string', default: '1000' },
    mib: { type: 'string', default: '48' },
    peer: { type: 'boolean', default: false },
  },
});

if (opt.peer) peer();
else await proxy();

/** The child: an echo server, and the clients that open tunnels through the proxy. */
function peer() {
  const held = [];
  const echo = net.createServer({ allowHalfOpen: true }, (s) => {
    s.setNoDelay(true);
    s.pipe(s);
  });
  echo.listen(0, '127.0.0.1', () => process.send({ ready: echo.address().port }));
  const exchange = (s) => new Promise((ok, fail) => {
    let got = 0;
    s.on('data', (d) => {
      got += d.length;
      if (got === 1024) ok();
    });
    s.once('error', fail);
    s.write(Buffer.alloc(1024, 7));
  });
  process.on('message', async (m) => {
    if (m.open) {
      const { port, n, mode, echoAuthority } = m.open;
      if (mode === 'tcp') {
        for (let i = 0; i < n; i += 100) {
          await Promise.all(Array.from({ length: Math.min(100, n - i) }, async () => {
            const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
            held.push(s);
            await exchange(s);
          }));
        }
      } else {
        for (let i = 0; i < n; i += 100) {
          const session = http2.connect(`http://127.0.0.1:${port}`);
          held.push(session);
          await Promise.all(Array.from({ length: Math.min(100, n - i) }, async () => {
            const s = session.request({ ':method': 'CONNECT', ':authority': echoAuthority }, { endStream: false });
            held.push(s);
            await exchange(s);
          }));
        }
      }
      process.send({ opened: n });
    } else if (m.bulk) {
      const data = Buffer.alloc(m.bulk.mib * 1024 * 1024, 1);
      const started = process.hrtime.bigint();
      const s = net.connect({ port: m.bulk.port, host: '127.0.0.1', allowHalfOpen: true });
      let got = 0;
      s.on('data', (d) => (got += d.length));
      s.once('end', () => {
        process.send({ bulk: { ms: Number(process.hrtime.bigint() - started) / 1e6, ok: got === data.length } });
        s.destroy();
      });
      s.end(data);
    } else if (m.exit) {
      process.exit(0);
    }
  });
}

async function proxy() {
  if (!global.gc) throw new Error('run with --expose-gc');
  const { relay } = await import(pathToFileURL(resolve(opt.relay)).href);
  const n = Number(opt.tunnels);
  const child = fork(new URL(import.meta.url).pathname, ['--peer'], { stdio: 'inherit' });
  const next = (key) => new Promise((ok) => child.once('message', (m) => (m[key] !== undefined ? ok(m[key]) : null)));
  const echoPort = await next('ready');
  const toEcho = () => new Promise((ok, fail) => {
    const up = net.connect({ port: echoPort, host: '127.0.0.1', allowHalfOpen: true }, () => ok(up));
    up.setNoDelay(true);
    up.once('error', fail);
  });
  const tcp = net.createServer({ allowHalfOpen: true, noDelay: true }, async (down) => {
    const up = await toEcho();
    relay(down, up, () => {});
  });
  await new Promise((ok) => tcp.listen(0, '127.0.0.1', ok));
  const h2 = http2.createServer({ settings: { maxConcurrentStreams: 1000 } });
  h2.on('stream', async (stream) => {
    const up = await toEcho();
    stream.respond({ ':status': 200 });
    relay(stream, up, () => {});
  });
  await new Promise((ok) => h2.listen(0, '127.0.0.1', ok));

  const heap = async () => {
    for (let i = 0; i < 4; i++) {
      global.gc();
      await new Promise((r) => setImmediate(r));
    }
    const m = process.memoryUsage();
    return { heap: m.heapUsed, rss: m.rss, external: m.external };
  };
  const port = opt.mode === 'h2' ? h2.address().port : tcp.address().port;
  const base = await heap();
  child.send({ open: { port, n, mode: opt.mode, echoAuthority: `127.0.0.1:${echoPort}` } });
  await next('opened');
  const open = await heap();
  const cpu = process.cpuUsage();
  child.send({ bulk: { port: tcp.address().port, mib: Number(opt.mib) } });
  const bulk = await next('bulk');
  const used = process.cpuUsage(cpu);
  const kb = (b) => (b / 1024).toFixed(1);
  console.log(JSON.stringify({
    relay: opt.relay, mode: opt.mode, tunnels: n,
    heapPerTunnelKB: kb((open.heap - base.heap) / n),
    rssPerTunnelKB: kb((open.rss - base.rss) / n),
    heapMB: (open.heap / 2 ** 20).toFixed(1),
    bulkMiB: Number(opt.mib), bulkMs: Math.round(bulk.ms), bulkProxyCpuMs: Math.round((used.user + used.system) / 1000), bulkOk: bulk.ok,
  }));
  child.send({ exit: true });
  process.exit(0);
}
