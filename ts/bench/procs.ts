/**
 * Processes of the benchmark: every one runs inside a pod netns (nsenter), inside one of the
 * bench's child cgroups (written to cgroup.procs before exec, so its sockets see that cgroup's
 * hooks from the first one), pinned to one CPU. nsenter and taskset exec, so the child's pid is
 * the program's pid and its /proc/<pid>/stat is the program's CPU time.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { until } from '../util/until.js';

const execFileP = promisify(execFile);

export interface Placement {
  /** netns path, e.g. /run/netns/b1234ec */
  netns: string;
  /** cgroup2 directory the process joins before exec */
  cgroup: string;
  /** CPU to pin to (taskset); null: not pinned */
  cpu: number | null;
}

function shellArgs(p: Placement, argv: string[]): string[] {
  const pin = p.cpu === null ? '' : `taskset -c ${p.cpu} `;
  return ['-c', `echo $$ > '${p.cgroup}/cgroup.procs' && exec ${pin}nsenter --net='${p.netns}' "$@"`, 'sh', ...argv];
}

/** The command line a person would type for the same placement (for the report). */
export function describe(p: Placement, argv: string[]): string {
  const pin = p.cpu === null ? '' : `taskset -c ${p.cpu} `;
  return `${pin}nsenter --net=${p.netns} ${argv.join(' ')}`;
}

/** Long-running daemons, killed together. */
export class Daemons {
  readonly #procs: ChildProcess[] = [];

  /** Starts argv; resolves once `ready` (if given) appears on its stdout, or it is just spawned. */
  async start(p: Placement, argv: string[], ready?: string, timeoutMs = 10_000): Promise<ChildProcess> {
    const child = spawn('sh', shellArgs(p, argv), { stdio: ['ignore', 'pipe', 'pipe'] });
    this.#procs.push(child);
    let out = '';
    let err = '';
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (err = (err + d).slice(-4000)));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${argv[0]} did not start in ${timeoutMs} ms: ${err.trim()}`)), timeoutMs);
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`${argv[0]} exited (${code}) at start: ${err.trim()}`));
      });
      child.once('spawn', () => {
        if (!ready) {
          clearTimeout(timer);
          resolve();
        }
      });
      if (ready) {
        child.stdout!.on('data', () => {
          if (out.includes(ready)) {
            clearTimeout(timer);
            resolve();
          }
        });
      }
    });
    child.removeAllListeners('exit');
    return child;
  }

  /** SIGKILLs every daemon started here and waits for them to be gone. */
  async stopAll(): Promise<void> {
    const alive = this.#procs.filter((c) => c.exitCode === null && c.signalCode === null);
    await Promise.all(
      alive.map(
        (c) =>
          new Promise<void>((resolve) => {
            c.once('exit', () => resolve());
            c.kill('SIGKILL');
            setTimeout(resolve, 2000);
          }),
      ),
    );
    this.#procs.length = 0;
  }
}

export interface RunOutput {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs argv to completion in the placement; a run longer than timeoutMs is killed. */
export function runIn(p: Placement, argv: string[], timeoutMs: number): Promise<RunOutput> {
  return new Promise((resolve, reject) => {
    const child = spawn('sh', shellArgs(p, argv), { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? 1, stdout, stderr });
    });
  });
}

/** Runs a command inside a netns (no cgroup, no pinning): setup and inspection only. */
export async function inNetns(netns: string, argv: string[]): Promise<string> {
  const { stdout } = await execFileP('nsenter', [`--net=${netns}`, ...argv], { maxBuffer: 64 << 20 });
  return stdout;
}

/** Waits until something listens on `port` inside the netns. */
export function waitListening(netns: string, port: number, timeoutMs = 10_000): Promise<void> {
  const listening = async (): Promise<boolean> => (await inNetns(netns, ['ss', '-Hltn', `sport = :${port}`]).catch(() => '')).trim() !== '';
  return until(`something to listen on :${port} in ${netns}`, listening, { timeoutMs, intervalMs: 50 });
}

/**
 * How a script's first line says to start it: `#!/usr/bin/env -S [VAR=value ...] node [flags]`
 * (or `#!/usr/bin/env node`) gives the variables and node's flags; any other line, none. Pure.
 * The bench starts a proxy build as its own entry says it starts, whichever node runs the bench.
 */
export function shebangLaunch(firstLine: string): { env: string[]; nodeArgs: string[] } {
  const m = /^#!\s*\S*\benv\s+(?:-S\s+)?(.*)$/.exec(firstLine.trim());
  if (!m) return { env: [], nodeArgs: [] };
  const words = m[1]!.trim().split(/\s+/);
  const i = words.findIndex((w) => w === 'node' || w.endsWith('/node'));
  if (i < 0) return { env: [], nodeArgs: [] };
  return { env: words.slice(0, i).filter((w) => /^[A-Za-z_][A-Za-z0-9_]*=/.test(w)), nodeArgs: words.slice(i + 1) };
}
