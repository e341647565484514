/**
 * A lab for real-namespace tests: a simulated node (ts/sim/node.ts: pods wired by the Debian
 * CNI plugins inside a node netns), a child cgroup of the cgroup2 mount for the test's pod
 * processes, and socket daemons (tools/sockd.py) inside the pods. `destroy()` removes all of it,
 * also after a failure; every name carries the lab's random prefix. It also owns `until()`, the
 * suite's one way to wait: a test waits for the condition its assertion needs, never a fixed time.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { SimNode, type PodFamily, type SimPod } from '../../ts/sim/node.js';
import { cgroup2Mount } from '../../ts/redirect/preflight.js';

export type LabPod = SimPod;
export interface Addr {
  host: string;
  port: number;
}
export interface Accepted {
  peer: Addr;
  sockname: Addr;
  /** SO_ORIGINAL_DST as the accepted socket reports it, or the errno name. */
  origDst: Addr | string;
}
export type ConnectResult =
  | { ok: true; connId: string; sockname: Addr; peername: Addr; reply?: string; origDst: Addr | string }
  | { ok: false; error: string };
/** What a churn load saw: connections answered, failures by errno name ("EOF": closed unanswered). */
export interface ChurnCount {
  answered: number;
  errors: Record<string, number>;
}
export interface SocketOpts {
  mark?: number;
  transparent?: boolean;
  bind?: { host: string; port?: number };
  timeoutMs?: number;
}

import { until } from '../../ts/util/until.js';

export { until, type UntilOptions } from '../../ts/util/until.js';

const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
const SOCKD = join(__dirname, 'tools', 'sockd.py');

/** A socket daemon running inside one netns; each call is one request and its reply. */
export class PodShell {
  #seq = 0;
  #pending = new Map<number, (v: Record<string, unknown>) => void>();
  #tags = new Map<string, string>();
  readonly ready: Promise<void>;

  constructor(private readonly proc: ChildProcessWithoutNullStreams, readonly where: string) {
    let stderr = '';
    proc.stderr.on('data', (d) => (stderr += d));
    proc.stdin.on('error', () => {}); // the daemon was killed (lab teardown)
    const lines = createInterface({ input: proc.stdout });
    this.ready = new Promise((resolve, reject) => {
      proc.once('exit', (code) => reject(new Error(`sockd in ${where} exited (${code}): ${stderr}`)));
      lines.on('line', (line) => {
        const msg = JSON.parse(line) as Record<string, unknown>;
        if (msg.ready) return resolve();
        const seq = msg.seq as number;
        this.#pending.get(seq)?.(msg);
        this.#pending.delete(seq);
      });
    });
  }

  request<T = Record<string, unknown>>(op: string, args: object = {}): Promise<T> {
    const seq = ++this.#seq;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`sockd ${op} in ${this.where}: no answer in 60 s`)), 60_000);
      this.#pending.set(seq, (v) => {
        clearTimeout(timer);
        resolve(v as T);
      });
      this.proc.stdin.write(`${JSON.stringify({ op, seq, ...args })}\n`);
    });
  }

  /**
   * `paused`: nothing is accepted (connections wait in the backlog) until resume(). `hangup`: each
   * connection is answered once and closed by the listener's side first (as an HTTP/1.0 server).
   */
  async listen(o: { host?: string; port: number; tag: string; echo?: boolean; hangup?: boolean; paused?: boolean; v6only?: boolean } & SocketOpts): Promise<{ id: string; port: number }> {
    const r = await this.request<{ ok: boolean; id: string; port: number; error?: string }>('listen', o);
    if (!r.ok) throw new Error(`listen ${o.host ?? '0.0.0.0'}:${o.port} in ${this.where}: ${r.error}`);
    this.#tags.set(o.tag, r.id);
    return r;
  }
  async resume(id: string): Promise<void> {
    await this.request('resume', { id });
  }
  async listenerByTag(tag: string): Promise<{ id: string }> {
    const id = this.#tags.get(tag);
    if (!id) throw new Error(`no listener tagged ${tag} in ${this.where}`);
    return { id };
  }
  async closeListener(id: string): Promise<void> {
    await this.request('closeListener', { id });
  }
  async accepted(id: string): Promise<Accepted[]> {
    return (await this.request<{ accepted: Accepted[] }>('accepted', { id })).accepted;
  }
  connect(o: { host: string; port: number; send?: string } & SocketOpts): Promise<ConnectResult> {
    return this.request<ConnectResult>('connect', o);
  }
  async send(connId: string, data: string, timeoutMs?: number): Promise<{ reply: string }> {
    return this.request('send', { connId, data, timeoutMs });
  }
  async close(connId: string): Promise<void> {
    await this.request('close', { connId });
  }
  /** One UDP datagram and its answer (with the answer's source address). */
  udp(o: { host: string; port: number; send: string; connected?: boolean } & SocketOpts): Promise<
    { ok: true; reply: string; from: Addr } | { ok: false; error: string }
  > {
    return this.request('udp', o);
  }
  async udpListen(o: { host?: string; port: number; tag: string }): Promise<void> {
    await this.request('udpListen', o);
  }
  /** `count` concurrent connections each echoing `size` random bytes; counts exact matches. */
  load(o: { host: string; port: number; count: number; size: number; timeoutMs?: number }): Promise<{ ok: number; bad: number; errors: Record<string, number> }> {
    return this.request('load', o);
  }
  /** `count` connections one after another (ping, answer, close); answers counted by tag. */
  repeat(o: { host: string; port: number; count: number } & SocketOpts): Promise<{ tags: Record<string, number>; errors: Record<string, number> }> {
    return this.request('repeat', o);
  }
  /**
   * A steady new-connection load in the background (`threads` loops of connect, ping, answer,
   * close) until churnStop; answered connections counted, failures by errno name.
   */
  async churnStart(o: { host: string; port: number; threads?: number; timeoutMs?: number }): Promise<string> {
    return (await this.request<{ id: string }>('churnStart', o)).id;
  }
  churnPeek(id: string): Promise<ChurnCount> {
    return this.request<ChurnCount>('churnPeek', { id });
  }
  churnStop(id: string): Promise<ChurnCount> {
    return this.request<ChurnCount>('churnStop', { id });
  }
  kill(): void {
    this.proc.kill('SIGKILL');
  }
}

export class Lab {
  readonly prefix: string;
  readonly cgroupPath: string;
  readonly #shells: PodShell[] = [];

  private constructor(readonly node: SimNode, cgroupPath: string) {
    this.prefix = node.prefix;
    this.cgroupPath = cgroupPath;
  }

  /** `subnet`: the node's pod /24 (SimNodeOptions.subnet), random by default. */
  static async create(o: { subnet?: string } = {}): Promise<Lab> {
    const prefix = `t${randomBytes(2).toString('hex')}`;
    const root = cgroup2Mount(readFileSync('/proc/mounts', 'utf8'));
    if (!root) throw new Error('no cgroup2 mount in /proc/mounts');
    const cg = join(root, `${prefix}cg`);
    mkdirSync(cg);
    try {
      return new Lab(await SimNode.create({ prefix, subnet: o.subnet }), cg);
    } catch (e) {
      rmdirSync(cg);
      throw e;
    }
  }

  /** Puts this test process itself in the lab cgroup (an in-process proxy must be there). */
  joinCgroup(): void {
    writeFileSync(join(this.cgroupPath, 'cgroup.procs'), String(process.pid));
  }

  /** Moves this process back where it came from. */
  leaveCgroup(): void {
    const root = cgroup2Mount(readFileSync('/proc/mounts', 'utf8'))!;
    if (!readFileSync(join(this.cgroupPath, 'cgroup.procs'), 'utf8').split('\n').includes(String(process.pid))) return;
    writeFileSync(join(root, this.#originalCgroup.replace(/^\//, ''), 'cgroup.procs'), String(process.pid));
  }

  readonly #originalCgroup = readFileSync('/proc/self/cgroup', 'utf8').split('\n').find((l) => l.startsWith('0::'))?.slice(3) ?? '/';

  get nodeNetnsPath(): string {
    return `/run/netns/${this.node.nodeNetns}`;
  }

  /** A pod wired by the Debian CNI plugins: IPv4 (default), IPv6 only or dual-stack (fd00:200::/64). */
  addPod(name: string, family: PodFamily = 'ipv4'): Promise<LabPod> {
    return this.node.addPod(name, family);
  }

  /** Starts a socket daemon in `netnsPath`; with inCgroup it joins the lab's cgroup first. */
  async shell(netnsPath: string, o: { inCgroup: boolean }): Promise<PodShell> {
    const join = o.inCgroup ? `echo $$ > ${this.cgroupPath}/cgroup.procs && ` : '';
    const proc = spawn('sh', ['-c', `${join}exec nsenter --net=${netnsPath} ${PYTHON} -u ${SOCKD}`], { stdio: 'pipe' });
    const sh = new PodShell(proc, netnsPath);
    this.#shells.push(sh);
    await sh.ready;
    return sh;
  }

  /** Kills every process, removes pods, node netns and cgroup. Never throws. */
  async destroy(): Promise<void> {
    for (const s of this.#shells) s.kill();
    if (existsSync(this.cgroupPath)) this.leaveCgroup();
    const procs = join(this.cgroupPath, 'cgroup.procs');
    const empty = (): boolean => {
      if (!existsSync(procs)) return true;
      const pids = readFileSync(procs, 'utf8').split('\n').filter(Boolean);
      for (const pid of pids) {
        try {
          process.kill(Number(pid), 'SIGKILL');
        } catch {
          /* already gone */
        }
      }
      return pids.length === 0;
    };
    await until('the lab cgroup to empty', empty, { timeoutMs: 1000 }).catch(() => {}); // a leftover is reported by the leftover check
    await this.node.destroy();
    try {
      rmdirSync(this.cgroupPath);
    } catch {
      /* reported by the leftover check */
    }
  }
}
