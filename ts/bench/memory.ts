/**
 * The memory scenario (`inpod bench --memory`, issue 19): what the real proxy holds with many pods
 * and many idle connections, and whether it gives memory back once they are gone. One
 * `inpod ztunnel` serves `pods` pods of the simulated node (eBPF capture, every pod an HBONE
 * workload); each pod runs an echo app and opens conns/pods connections to the next pod's app, so
 * every connection is an HBONE tunnel with both ends in this proxy (outbound in the client's pod,
 * inbound in the server's), over one pooled mTLS connection per pod pair. The connections carry one
 * byte each way and then stay idle. The proxy's memory is read at each phase: started without
 * pods, serving the pods, with the connections open, right after they closed, and some seconds
 * later (its HBONE pool lets an idle mTLS connection go after 30 s, so the last reading is past
 * that). RSS comes from /proc/<pid>/status; the V8 heap from the proxy's admin `/memory` when it
 * has one (null for a build without it).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { SimPod } from '../sim/node.js';
import type { BenchEnv } from './env.js';
import { parseProcMemory, type ProcMemory } from './cpu.js';
import { inNetns } from './procs.js';
import type { MemAppReply, MemAppRequest } from './memapp.js';
import type { Progress } from './traffic.js';

// the built app, from dist/bench/ as from ts/bench/ (under vitest)
const MEMAPP = fileURLToPath(new URL('../../dist/bench/memapp.js', import.meta.url));
export const MEMORY_APP_PORT = 8080;

export interface MemoryPlan {
  pods: number;
  conns: number;
  /** seconds waited before each reading (the proxy finishes what it was doing) */
  settleSeconds: number;
  /** readings this many seconds after the connections closed */
  afterSeconds: number[];
  /** the proxy's HBONE byte path (`--byte-path`) */
  bytePath: 'node' | 'native';
}

export const DEFAULT_MEMORY_PLAN: MemoryPlan = { pods: 100, conns: 1000, settleSeconds: 2, afterSeconds: [10, 40], bytePath: 'node' };

/** What the proxy's admin /memory says, bytes. */
export interface HeapFigures {
  heapUsed: number;
  heapTotal: number;
  external: number;
  arrayBuffers: number;
  /** V8's young generation, committed */
  newSpace: number;
  /** how often the proxy returned memory after a load so far (a build without it: 0) */
  returns: number;
  /** glibc's bytes in use and free inside its arenas (a build without them: 0) */
  mallocUsed: number;
  mallocFree: number;
}

export interface MemoryPoint extends ProcMemory {
  phase: string;
  /** seconds since the proxy started serving */
  at: number;
  heap: HeapFigures | null;
}

export interface MemoryResult {
  plan: MemoryPlan;
  opened: number;
  failed: number;
  firstError?: string;
  points: MemoryPoint[];
}

export function procMemory(pid: number): ProcMemory {
  return parseProcMemory(readFileSync(`/proc/${pid}/status`, 'utf8'));
}

/** Local TCP ports `pid` listens on, from `ss -Hltnp` output (pure). */
export function listeningPorts(ssOutput: string, pid: number): number[] {
  const out: number[] = [];
  for (const line of ssOutput.split('\n')) {
    if (!line.includes(`pid=${pid},`)) continue;
    const local = line.trim().split(/\s+/)[3] ?? '';
    const port = Number(local.slice(local.lastIndexOf(':') + 1));
    if (Number.isInteger(port) && port > 0) out.push(port);
  }
  return out;
}

/** The proxy's admin port: the one of its loopback ports that answers /memory (null: none does). */
async function findAdmin(pid: number): Promise<number | null> {
  const ss = await inNetns(`/proc/${process.pid}/ns/net`, ['ss', '-Hltnp']);
  for (const port of listeningPorts(ss, pid)) {
    const heap = await readHeap(port);
    if (heap) return port;
  }
  return null;
}

async function readHeap(port: number | null): Promise<HeapFigures | null> {
  if (port === null) return null;
  try {
    const res = await fetch(`http://127.0.0.1:${port}/memory`, { signal: AbortSignal.timeout(2000) });
    if (!res.ok) return null;
    const m = (await res.json()) as Record<string, number> & { heapSpaces?: Record<string, number>; returned?: { count: number }; malloc?: { uordblks: number; fordblks: number; hblkhd: number } };
    return {
      heapUsed: m.heapUsed!, heapTotal: m.heapTotal!, external: m.external!, arrayBuffers: m.arrayBuffers!, newSpace: m.heapSpaces?.new_space ?? 0,
      returns: m.returned?.count ?? 0, mallocUsed: (m.malloc?.uordblks ?? 0) + (m.malloc?.hblkhd ?? 0), mallocFree: m.malloc?.fordblks ?? 0,
    };
  } catch {
    return null;
  }
}

/** The app process: forked, it joins `cgroup` before making any socket. */
class MemApp {
  readonly #child: ChildProcess;
  #waiting: ((r: MemAppReply) => void) | null = null;
  readonly ready: Promise<MemAppReply>;

  constructor(cgroup: string) {
    this.#child = fork(MEMAPP, [cgroup], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
    this.#child.on('message', (m: MemAppReply) => {
      const w = this.#waiting;
      this.#waiting = null;
      w?.(m);
    });
    this.ready = new Promise((resolve) => (this.#waiting = resolve));
  }

  async ask(req: MemAppRequest): Promise<MemAppReply> {
    await this.ready;
    const r = new Promise<MemAppReply>((resolve, reject) => {
      this.#waiting = resolve;
      this.#child.once('exit', (code) => reject(new Error(`the memory scenario's app process exited (${code})`)));
    });
    this.#child.send(req);
    const reply = await r;
    this.#child.removeAllListeners('exit');
    return reply;
  }

  stop(): void {
    this.#child.kill('SIGKILL');
  }
}

const sleep = (s: number): Promise<void> => new Promise((r) => setTimeout(r, s * 1000));

/** The connections of the scenario: pod i -> pod i+1's app, conns/pods each (the remainder to the first pods). */
export function connectionPlan(pods: SimPod[], conns: number): { netns: string; ip: string; port: number }[] {
  const out: { netns: string; ip: string; port: number }[] = [];
  for (let k = 0; k < conns; k++) {
    const i = k % pods.length;
    out.push({ netns: pods[i]!.netnsPath, ip: pods[(i + 1) % pods.length]!.ip, port: MEMORY_APP_PORT });
  }
  return out;
}

export async function runMemory(env: BenchEnv, plan: MemoryPlan, progress: Progress): Promise<MemoryResult> {
  const t0 = performance.now();
  const be = env.backends.get('ebpf')!;
  const pods: SimPod[] = [];
  for (let i = 0; i < plan.pods; i++) pods.push(await env.node!.addPod(`m${i}`));
  for (const p of pods) await be.enroll(p.netnsPath);
  progress(`memory: ${plan.pods} pods created and enrolled (eBPF) in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  const app = new MemApp(env.cgroups.ebpf);
  const points: MemoryPoint[] = [];
  try {
    // started with no pod: the ZDS handshake done, nothing served yet
    const pid = await env.startProxy('memory', pods, env.cgroups.ebpf, { fastPath: 'off', bytePath: plan.bytePath, handLater: true });
    const admin = await findAdmin(pid);
    const started = performance.now();
    const read = async (phase: string): Promise<void> => {
      await sleep(plan.settleSeconds);
      const p: MemoryPoint = { phase, at: (performance.now() - started) / 1000, ...procMemory(pid), heap: await readHeap(admin) };
      points.push(p);
      progress(`memory: ${phase.padEnd(34)} RSS ${(p.rssKb / 1024).toFixed(1)} MB` +
        (p.heap ? `, heap ${(p.heap.heapUsed / 2 ** 20).toFixed(1)}/${(p.heap.heapTotal / 2 ** 20).toFixed(1)} MB, external ${(p.heap.external / 2 ** 20).toFixed(1)} MB, ` +
          `malloc ${(p.heap.mallocUsed / 2 ** 20).toFixed(1)} used ${(p.heap.mallocFree / 2 ** 20).toFixed(1)} free, returned ${p.heap.returns}x` : ''));
    };
    await read('proxy started, no pods');
    await env.addProxyPods('memory', pods);
    await read(`${plan.pods} pods served`);
    const listened = await app.ask({ op: 'listen', netns: pods.map((p) => p.netnsPath), port: MEMORY_APP_PORT });
    if (!listened.ok) throw new Error(`memory scenario: the apps could not listen: ${listened.error}`);
    const opened = await app.ask({ op: 'open', conns: connectionPlan(pods, plan.conns), concurrency: 20 });
    progress(`memory: ${opened.opened} connections open through the proxy (HBONE), ${opened.failed} failed${opened.error ? ` (${opened.error})` : ''}`);
    await read(`${plan.pods} pods, ${opened.opened} idle connections`);
    await app.ask({ op: 'close' });
    const closedAt = performance.now();
    await read('connections closed');
    for (const s of plan.afterSeconds) {
      const wait = s - (performance.now() - closedAt) / 1000;
      if (wait > plan.settleSeconds) await sleep(wait - plan.settleSeconds);
      await read(`${s} s after they closed`);
    }
    return { plan, opened: opened.opened ?? 0, failed: opened.failed ?? 0, ...(opened.error ? { firstError: opened.error } : {}), points };
  } finally {
    app.stop();
    for (const p of pods) await be.unenroll(p.netnsPath).catch(() => {});
  }
}
