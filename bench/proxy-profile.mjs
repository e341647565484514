#!/usr/bin/env node
/**
 * Where the proxy's CPU goes on the byte path: the bench's proxy-ebpf row (two enrolled pods, one
 * `inpod ztunnel` serving both, HBONE between them) set up alone, one workload run against it
 * while `perf record` samples the proxy, and the samples sorted by where each one was (its leaf
 * frame): kernel, V8 and JavaScript, Node's C++ glue, OpenSSL, nghttp2, malloc/memcpy. Prints
 * the proxy's CPU per request or per GB (from /proc/<pid>/stat) and those shares. Needs root,
 * `make build`, perf, wrk and iperf3 (as `inpod bench`). Everything it creates carries a prefix
 * b<hex> and is removed at the end, or at Ctrl-C.
 *
 *   node bench/proxy-profile.mjs [--dist dist] [--workload http|bulk1|bulk8|connrate] [--seconds 5]
 *                                [--config proxy-ebpf|proxy-native] [--perf out.data [--top N]]
 *
 * --dist: the build to measure (another worktree's dist/, to compare two). The proxy runs with
 * --perf-basic-prof-only-functions, so perf names the JavaScript functions.
 */
import { execFileSync, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const { values: opt } = parseArgs({
  options: {
    dist: { type: 'string', default: 'dist' },
    workload: { type: 'string', default: 'http' },
    seconds: { type: 'string', default: '5' },
    perf: { type: 'string' },
    config: { type: 'string', default: 'proxy-ebpf' },
    top: { type: 'string', default: '0' },
  },
});
const dist = pathToFileURL(resolve(opt.dist)).href;
const { BenchEnv } = await import(`${dist}/bench/env.js`);
const { runLoad } = await import(`${dist}/bench/loads.js`);

/** Where a sample's leaf frame is (perf script's symbol and object). */
export function category(sym, dso) {
  if (dso.includes('kernel')) return 'kernel';
  if (dso.includes('JIT') || sym.startsWith('JS:') || sym.startsWith('LazyCompile')) return 'JavaScript';
  if (sym.startsWith('nghttp2')) return 'HTTP/2 (nghttp2)';
  if (sym.startsWith('node::http2')) return 'HTTP/2 (Node glue)';
  if (sym.startsWith('node::crypto') || sym.includes('TLSWrap')) return 'TLS (Node glue)';
  if (/libcrypto|libssl/.test(dso) || /aes|gcm|ghash|ssl|tls|EVP_|CRYPTO_|OPENSSL|ossl|sha\d|BIO_/i.test(sym)) return 'TLS (OpenSSL)';
  if (dso.includes('libc')) return /malloc|free|memmove|memcpy|memset|chunk|consolidate|tcache/.test(sym) ? 'malloc/memcpy' : 'libc other';
  if (sym.startsWith('uv_') || sym.startsWith('uv__')) return 'libuv';
  if (sym.startsWith('node::')) return 'Node C++ glue';
  return 'V8 (runtime, builtins, GC)';
}

process.env.NODE_OPTIONS = process.env.PROFILE_NODE_OPTIONS ?? '--perf-basic-prof-only-functions'; // the proxy inherits it
const prefix = `b${Math.random().toString(16).slice(2, 6)}`;
const env = new BenchEnv(prefix, true, [opt.config]);
process.once('SIGINT', () => void env.destroy().finally(() => process.exit(130)));
const cpuS = (pid) => {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
};
try {
  await env.setup(() => {});
  const s = env.configs.get(opt.config);
  const pid = s.fwdPids[0];
  const p = { seconds: Number(opt.seconds), httpConns: 16, connThreads: 8 };
  await runLoad(opt.workload, s.clientAt, s.server.ip, { ...p, seconds: 2 }); // warm-up
  const before = cpuS(pid);
  const perf = opt.perf && spawn('perf', ['record', '-F', '999', '-g', '-p', String(pid), '-o', opt.perf], { stdio: 'ignore' });
  const r = await runLoad(opt.workload, s.clientAt, s.server.ip, p);
  if (perf && perf.exitCode === null) {
    const exited = new Promise((ok) => perf.once('exit', ok));
    perf.kill('SIGINT');
    await exited;
  }
  const cpu = cpuS(pid) - before;
  const per = opt.workload === 'http' ? `${((cpu / r.work) * 1e6).toFixed(1)} µs per request`
    : opt.workload === 'connrate' ? `${((cpu / r.work) * 1e6).toFixed(1)} µs per connection` : `${(cpu / (r.work / 1e9)).toFixed(2)} CPU-s per GB`;
  console.log(`${opt.workload}: ${JSON.stringify(r.metrics)}; proxy CPU ${cpu.toFixed(2)} s, ${per}`);
  if (opt.perf) {
    const out = execFileSync('perf', ['script', '-i', opt.perf, '-F', 'ip,sym,dso'], { encoding: 'utf8', maxBuffer: 1 << 30 });
    const counts = new Map();
    const syms = new Map();
    let n = 0;
    for (const sample of out.split('\n\n')) {
      const leaf = /^\s*[0-9a-f]+\s+(.*)\s+\((.*)\)$/.exec(sample.trim().split('\n')[0] ?? '');
      if (!leaf) continue;
      n++;
      const c = category(leaf[1], leaf[2]);
      counts.set(c, (counts.get(c) ?? 0) + 1);
      syms.set(leaf[1], (syms.get(leaf[1]) ?? 0) + 1);
    }
    for (const [c, k] of [...counts].sort((x, y) => y[1] - x[1])) console.log(`  ${c.padEnd(28)} ${((100 * k) / n).toFixed(1)}%`);
    console.log(`  (${n} samples)`);
    for (const [sym, k] of [...syms].sort((x, y) => y[1] - x[1]).slice(0, Number(opt.top))) console.log(`  ${((100 * k) / n).toFixed(1).padStart(5)}% ${sym.slice(0, 110)}`);
  }
  // a proxy started with --cpu-prof (its shebang) writes the profile when it exits: let it drain
  process.kill(pid, 'SIGTERM');
  for (let i = 0; i < 100; i++) {
    try { process.kill(pid, 0); } catch { break; }
    await new Promise((ok) => setTimeout(ok, 100));
  }
} finally {
  await env.destroy();
}
