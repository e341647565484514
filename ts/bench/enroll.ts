/**
 * The enrollment rows: how long enroll() and unenroll() of one pod take, per backend, with
 * N pods already enrolled, timed in-process around the RedirectBackend calls. Two ways in:
 * through createBackend (what the agent calls: it first asks the other backend whether it
 * captures the pod) and the backend alone. The pods are bare network namespaces with one veth
 * pair (both ends inside) and a /32 each (CNI would make 250 pods slow to create, and enrollment never looks
 * past the netns's addresses). Also counts the kernel state one enrolled pod adds: iptables
 * rules, ip rules and routes, or eBPF map entries and links.
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { runProgram } from '../util/run.js';
import { EbpfBackend } from '../redirect/ebpf.js';
import { IptablesBackend } from '../redirect/iptables.js';
import type { BackendName, RedirectBackend } from '../redirect/backend.js';
import { removeNetns, type BenchEnv } from './env.js';
import { inNetns } from './procs.js';
import type { Progress } from './traffic.js';

export type EnrollVia = 'factory' | 'bare';

export interface EnrollSample {
  backend: BackendName;
  via: EnrollVia;
  /** pods already enrolled */
  n: number;
  op: 'enroll' | 'unenroll';
  ms: number;
}

/** What one enrolled pod adds to the kernel, as counted from outside. */
export interface PodState {
  backend: BackendName;
  /** `-A` lines in iptables-save (legacy + nft) of the pod netns */
  iptablesRules: number;
  ipRules: number;
  routes: number;
  /** entries added per map, eBPF only (maps that did not change are left out) */
  mapEntries: Record<string, number>;
  /** pinned bpf_links added */
  links: number;
}

export interface EnrollPlan {
  levels: number[];
  /** enroll+unenroll pairs timed per level and way in */
  samples: number;
}

export function bareIp(i: number): string {
  return `10.201.${Math.floor(i / 250)}.${(i % 250) + 1}`;
}

/** Creates `count` bare pod namespaces (two shells in parallel); registered with env for removal. */
async function createBarePods(env: BenchEnv, count: number): Promise<string[]> {
  const names = Array.from({ length: count }, (_, i) => `${env.prefix}e${i}`);
  env.bareNetns.push(...names);
  const script = (idx: number[]): string =>
    idx
      .map((i) => {
        const n = names[i]!;
        return `ip netns add ${n} && ip -n ${n} link set lo up && ip -n ${n} link add eth0 type veth peer name peer0 && ` +
          `ip -n ${n} addr add ${bareIp(i)}/32 dev eth0 && ip -n ${n} link set eth0 up || exit 1`;
      })
      .join('\n');
  const all = names.map((_, i) => i);
  const halves = [all.filter((i) => i % 2 === 0), all.filter((i) => i % 2 === 1)];
  const rs = await Promise.all(halves.map((h) => runProgram('sh', ['-s'], script(h))));
  for (const r of rs) if (r.code !== 0) throw new Error(`creating bare pod namespaces failed: ${r.stderr.trim()}`);
  return names.map((n) => `/run/netns/${n}`);
}

async function countLines(netns: string, argv: string[], re: RegExp): Promise<number> {
  const out = await inNetns(netns, argv).catch(() => '');
  return out.split('\n').filter((l) => re.test(l)).length;
}

async function netnsState(netns: string): Promise<{ iptablesRules: number; ipRules: number; routes: number }> {
  let iptablesRules = 0;
  for (const f of ['legacy', 'nft']) iptablesRules += await countLines(netns, [`iptables-${f}-save`], /^-A /);
  return {
    iptablesRules,
    ipRules: await countLines(netns, ['ip', 'rule', 'show'], /\S/),
    routes: await countLines(netns, ['ip', 'route', 'show', 'table', 'all'], /\S/),
  };
}

/** Entry counts of every map pinned at the top of the pin root, and the number of pinned links. */
async function bpfState(pinRoot: string): Promise<{ maps: Record<string, number>; links: number }> {
  const maps: Record<string, number> = {};
  if (!existsSync(pinRoot)) return { maps, links: 0 };
  for (const f of readdirSync(pinRoot)) {
    const p = join(pinRoot, f);
    if (statSync(p).isDirectory()) continue;
    const r = await runProgram('bpftool', ['-j', 'map', 'dump', 'pinned', p]);
    if (r.code !== 0) continue; // not a map, or not dumpable (SOCKHASH)
    try {
      maps[f] = (JSON.parse(r.stdout) as unknown[]).length;
    } catch {
      /* not JSON: skip */
    }
  }
  const linkDir = join(pinRoot, 'links');
  return { maps, links: existsSync(linkDir) ? readdirSync(linkDir).length : 0 };
}

async function podState(env: BenchEnv, backend: RedirectBackend, netns: string): Promise<PodState> {
  const pinRoot = env.backendOpts.pinRoot!;
  const ns0 = await netnsState(netns);
  const bpf0 = await bpfState(pinRoot);
  await backend.enroll(netns);
  const ns1 = await netnsState(netns);
  const bpf1 = await bpfState(pinRoot);
  await backend.unenroll(netns);
  const mapEntries: Record<string, number> = {};
  if (backend.name === 'ebpf') {
    for (const [k, v] of Object.entries(bpf1.maps)) if (v !== (bpf0.maps[k] ?? 0)) mapEntries[k] = v - (bpf0.maps[k] ?? 0);
  }
  return {
    backend: backend.name,
    // iptables: the pod's whole rule set (a re-enrolled pod had a one-rule drain chain before)
    iptablesRules: backend.name === 'iptables' ? ns1.iptablesRules : ns1.iptablesRules - ns0.iptablesRules,
    ipRules: ns1.ipRules - ns0.ipRules,
    routes: ns1.routes - ns0.routes,
    mapEntries,
    links: bpf1.links - bpf0.links,
  };
}

async function timed(f: () => Promise<unknown>): Promise<number> {
  const t = performance.now();
  await f();
  return performance.now() - t;
}

export async function runEnrollment(env: BenchEnv, plan: EnrollPlan, progress: Progress): Promise<{ samples: EnrollSample[]; state: PodState[] }> {
  const max = Math.max(...plan.levels);
  const t0 = performance.now();
  const pods = await createBarePods(env, max + 1);
  const spare = pods[max]!;
  progress(`enrollment: ${max + 1} bare pod namespaces created in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  const samples: EnrollSample[] = [];
  const state: PodState[] = [];
  for (const name of ['iptables', 'ebpf'] as const) {
    const ways: Record<EnrollVia, RedirectBackend> = {
      factory: env.backends.get(name)!,
      bare: name === 'ebpf' ? new EbpfBackend(env.backendOpts) : new IptablesBackend(env.backendOpts),
    };
    let enrolled = 0;
    try {
      for (const n of [...plan.levels].sort((a, b) => a - b)) {
        while (enrolled < n) await ways.factory.enroll(pods[enrolled++]!);
        for (let k = 0; k < plan.samples; k++) {
          for (const via of ['factory', 'bare'] as const) {
            const be = ways[via];
            samples.push({ backend: name, via, n, op: 'enroll', ms: await timed(() => be.enroll(spare)) });
            samples.push({ backend: name, via, n, op: 'unenroll', ms: await timed(() => be.unenroll(spare)) });
          }
        }
        const med = (via: EnrollVia, op: string): string => {
          const xs = samples.filter((s) => s.backend === name && s.n === n && s.via === via && s.op === op).map((s) => s.ms).sort((a, b) => a - b);
          return xs[Math.floor(xs.length / 2)]!.toFixed(1);
        };
        progress(`enrollment ${name.padEnd(8)} N=${String(n).padStart(3)}: enroll ${med('factory', 'enroll')} ms ` +
          `(alone ${med('bare', 'enroll')}), unenroll ${med('factory', 'unenroll')} ms (alone ${med('bare', 'unenroll')}), medians`);
      }
      state.push(await podState(env, ways.bare, spare));
    } finally {
      for (let i = 0; i < enrolled; i++) await ways.factory.unenroll(pods[i]!).catch(() => {});
    }
  }
  const names = env.bareNetns.splice(0);
  await removeNetns(names);
  return { samples, state };
}
