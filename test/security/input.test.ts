/**
 * Bad input that crashed, hung or misled (issue 13, item 7): tried as an attacker or a careless
 * operator would, against the real processes. The CNI plugin is run as a container runtime runs
 * it: the static executable as the agent installs it on the host (build/inpod-cni copied by
 * ts/cni/conflist.ts installBinary), with stdin and CNI_* variables; the proxy as
 * `inpod ztunnel --config`; the agent as `inpod agent --manifests`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackend } from '../../ts/redirect/factory.js';
import type { RedirectBackend } from '../../ts/redirect/backend.js';
import { ZdsServer } from '../../ts/zds/server.js';
import { CLI, freePorts, inpod } from '../cli.js';
import { ALIAS_BOMB } from '../fixtures/yaml.js';
import { Lab, until } from '../netns/lab.js';
import { installedPlugin, runCni } from '../cni/run.js';

/** The plugin as installed on a host, in a bin dir of its own. */
const CNI_BIN = installedPlugin();
afterAll(() => rmSync(dirname(CNI_BIN), { recursive: true, force: true }));
/** A Node stack trace line ("    at runPlugin (file:///...:59:33)") or an uncaught error's name. */
const STACK = /^\s+at\s|\b(TypeError|ReferenceError|RangeError|SyntaxError)\b|node:internal/m;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Starts `node dist/cli/main.js ...args`, collecting its output. */
function inpodProcess(args: string[]): { proc: ChildProcess; log: () => string } {
  let log = '';
  const proc = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  proc.stdout!.on('data', (d) => (log += d));
  proc.stderr!.on('data', (d) => (log += d));
  return { proc, log: () => log };
}

/** Runs inpod-cni as a runtime does: only the CNI_* variables it sets, the config on stdin. */
const cni = (env: Record<string, string>, stdin: string | Buffer): Promise<Run> => runCni(CNI_BIN, env, stdin);

const ADD_ENV = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c0ffee', CNI_NETNS: '/var/run/netns/x', CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin', CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_UID=0b5c1a4e-1d2f-4c3b-9a8e-7f6d5c4b3a21' };
const conf = (o: Record<string, unknown> = {}): string =>
  JSON.stringify({ cniVersion: '1.0.0', name: 'k8s-pod-network', type: 'inpod-cni', agentSocket: '/nonexistent/inpod.sock', meshView: '/nonexistent/meshview.json', prevResult: { cniVersion: '1.0.0', ips: [{ address: '10.200.1.5/24' }] }, ...o });

/** The CNI error result on stdout, checked for the spec's shape and for no stack trace anywhere. */
function cniErrorOf(r: Run): { cniVersion: string; code: number; msg: string; details?: string } {
  expect(r.stdout + r.stderr).not.toMatch(STACK);
  expect(r.code).toBe(1);
  const err = JSON.parse(r.stdout) as { cniVersion: string; code: number; msg: string; details?: string };
  expect(err).toMatchObject({ cniVersion: '1.0.0', code: expect.any(Number), msg: expect.any(String) });
  return err;
}

describe('inpod-cni fed malformed input by the runtime (or whoever can write its config)', () => {
  it.each([
    ['stdin `null`', ADD_ENV, 'null', 6, /must be a JSON object, got null/],
    ['stdin a JSON string', ADD_ENV, '"ADD"', 6, /must be a JSON object, got a string/],
    ['stdin a JSON list', ADD_ENV, '[{"cniVersion":"1.0.0"}]', 6, /must be a JSON object, got a list/],
    ['stdin that is not JSON', ADD_ENV, '{"cniVersion":', 6, /not valid JSON/],
    ['empty stdin', ADD_ENV, '', 6, /not valid JSON/],
    ['prevResult.ips that is a number', ADD_ENV, conf({ prevResult: { ips: 5 } }), 7, /prevResult\.ips must be a list, got 5/],
    ['prevResult.ips that is an object', ADD_ENV, conf({ prevResult: { ips: { address: '10.0.0.1/24' } } }), 7, /prevResult\.ips must be a list/],
    ['an ips[].address that is a number', ADD_ENV, conf({ prevResult: { ips: [{ address: 5 }] } }), 7, /prevResult\.ips\[0\]\.address must be an address/],
    ['an ips[] entry that is null', ADD_ENV, conf({ prevResult: { ips: [null] } }), 7, /prevResult\.ips\[0\] must be an object/],
    ['prevResult that is a string', ADD_ENV, conf({ prevResult: 'x' }), 7, /prevResult must be an object/],
    ['cniVersion that is a number', ADD_ENV, conf({ cniVersion: 1 }), 7, /cniVersion must be a version string/],
    ['a cniVersion the plugin does not speak', ADD_ENV, conf({ cniVersion: '99.0.0' }), 1, /"99\.0\.0" is not supported/],
    ['timeoutSeconds 1e300 (overflows a Node timer into 1 ms)', ADD_ENV, conf({ timeoutSeconds: 1e300 }), 7, /timeoutSeconds must be a number of seconds/],
    ['timeoutSeconds that is a string', ADD_ENV, conf({ timeoutSeconds: '60' }), 7, /timeoutSeconds must be a number of seconds/],
    ['an agentSocket longer than a unix socket path', ADD_ENV, conf({ agentSocket: `/${'a'.repeat(200)}` }), 7, /agentSocket must be an absolute path of at most 107 bytes/],
    ['an agentSocket that is an object', ADD_ENV, conf({ agentSocket: { path: '/x' } }), 7, /agentSocket must be an absolute path/],
    ['no CNI_COMMAND', { ...ADD_ENV, CNI_COMMAND: '' }, conf(), 4, /CNI_COMMAND is not set/],
    ['an unknown CNI_COMMAND', { ...ADD_ENV, CNI_COMMAND: 'STATUS' }, conf(), 4, /unknown CNI_COMMAND "STATUS"/],
    ['ADD without CNI_NETNS', { ...ADD_ENV, CNI_NETNS: '' }, conf(), 4, /CNI_NETNS is not set/],
    ['ADD with a relative CNI_NETNS', { ...ADD_ENV, CNI_NETNS: '../../proc/1/ns/net' }, conf(), 4, /CNI_NETNS .* is not an absolute path/],
    ['ADD without CNI_CONTAINERID', { ...ADD_ENV, CNI_CONTAINERID: '' }, conf(), 4, /CNI_CONTAINERID is not set/],
    ['a pod name with a path in CNI_ARGS', { ...ADD_ENV, CNI_ARGS: 'K8S_POD_NAMESPACE=shop;K8S_POD_NAME=../../etc' }, conf(), 4, /K8S_POD_NAME=.* is not a Kubernetes pod name/],
    ['a namespace of 300 characters in CNI_ARGS', { ...ADD_ENV, CNI_ARGS: `K8S_POD_NAMESPACE=${'a'.repeat(300)};K8S_POD_NAME=web` }, conf(), 4, /K8S_POD_NAMESPACE=.* is not a Kubernetes namespace name/],
  ])('sends %s: a CNI error with the spec code, exit 1, no stack trace', async (_what, env, stdin, code, msg) => {
    const err = cniErrorOf(await cni(env, stdin));
    expect(err.code).toBe(code);
    expect(err.msg).toMatch(msg);
  });

  it('sends 3 MiB of configuration: refused as too large (code 6) without reading it all', async () => {
    const err = cniErrorOf(await cni(ADD_ENV, Buffer.alloc(3 << 20, 0x20)));
    expect(err).toMatchObject({ code: 6, msg: expect.stringMatching(/larger than 1048576 bytes/) });
  });

  it('sends DEL with stdin `null`, a broken prevResult or no environment: exit 0 (teardown is never blocked), the reason on stderr', async () => {
    for (const [env, stdin] of [
      [{ ...ADD_ENV, CNI_COMMAND: 'DEL' }, 'null'],
      [{ ...ADD_ENV, CNI_COMMAND: 'DEL' }, conf({ prevResult: { ips: [{ address: 5 }] } })],
      [{ CNI_COMMAND: 'DEL' }, '{'],
    ] as const) {
      const r = await cni(env, stdin);
      expect(r.stdout + r.stderr).not.toMatch(STACK);
      expect(r).toMatchObject({ code: 0, stdout: '' });
      expect(r.stderr).toMatch(/DEL not passed to the agent/);
    }
  });

  describe('an agent socket that accepts and then dribbles one byte every 100 ms (never idle, never done)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'inpod-sec-cni-'));
    const sock = join(dir, 'agent.sock');
    const timers = new Set<NodeJS.Timeout>();
    const server = net.createServer((s) => {
      s.on('error', () => {});
      s.write('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n');
      const t = setInterval(() => s.write('1\r\n \r\n'), 100);
      timers.add(t);
      s.on('close', () => clearInterval(t));
    });
    const listening = new Promise<void>((r) => server.listen(sock, r));
    afterAll(() => {
      for (const t of timers) clearInterval(t);
      server.close();
      rmSync(dir, { recursive: true, force: true });
    });

    it('DEL still exits 0 once the deadline passes (bounded by timeoutSeconds, at most 10 s)', async () => {
      await listening;
      const r = await cni({ ...ADD_ENV, CNI_COMMAND: 'DEL' }, conf({ agentSocket: sock, timeoutSeconds: 1 }));
      expect(r).toMatchObject({ code: 0, stdout: '' });
      expect(r.stderr).toMatch(/did not answer .* within 1 s/);
      expect(r.ms).toBeLessThan(5000);
    });

    it('ADD fails with "try again later" (11) once the deadline passes, instead of hanging the pod start', async () => {
      await listening;
      const err = cniErrorOf(await cni(ADD_ENV, conf({ agentSocket: sock, timeoutSeconds: 1 })));
      expect(err).toMatchObject({ code: 11, msg: expect.stringMatching(/shop\/web-0 was not added to the mesh: the inpod agent did not answer .* within 1 s/) });
    });
  });
});

describe('inpod agent --manifests with a YAML alias bomb in the directory', () => {
  let lab: Lab;
  let dir: string;
  let backend: RedirectBackend;
  let agent: ReturnType<typeof inpodProcess> | undefined;
  let proxy: ReturnType<typeof inpodProcess> | undefined;
  let health = 0;
  const p = (f: string): string => join(dir, f);
  const logs = (): string => `agent:\n${agent?.log() ?? ''}\nproxy:\n${proxy?.log() ?? ''}`;

  beforeAll(async () => {
    [health] = await freePorts(1);
    lab = await Lab.create();
    dir = mkdtempSync(join(tmpdir(), `${lab.prefix}in`));
    for (const d of ['manifests', 'net.d', 'bin', 'state']) mkdirSync(p(d));
    const { cniVersion, name, ...bridge } = lab.node.netConf() as { cniVersion: string; name: string };
    writeFileSync(p('net.d/10-sim.conflist'), JSON.stringify({ cniVersion, name, plugins: [bridge] }));
    writeFileSync(p('manifests/00-bomb.yaml'), ALIAS_BOMB);
    writeFileSync(p('manifests/ns.yaml'), 'apiVersion: v1\nkind: Namespace\nmetadata: {name: mesh, labels: {istio.io/dataplane-mode: ambient}}\n');
    writeFileSync(p('manifests/pod.yaml'), 'apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: mesh, uid: u-sec-a}\nspec: {serviceAccountName: default}\n');
    backend = await createBackend('iptables', { stateDir: p('state') });
    proxy = inpodProcess(['ztunnel', '--zds', p('zds.sock'), '--ca-dir', p('ca'), '--drain-seconds', '1', '--admin-addr', '127.0.0.1:0', '--metrics-addr', '127.0.0.1:0', '--readiness-addr', '127.0.0.1:0']);
    agent = inpodProcess(['agent', '--backend', 'iptables', '--manifests', p('manifests'), '--zds', p('zds.sock'), '--cni-socket', p('plugin.sock'),
      '--cni-bin-dir', p('bin'), '--cni-conf-dir', p('net.d'), '--state-dir', p('state'), '--health-addr', `127.0.0.1:${health}`, '--host-netns', lab.nodeNetnsPath]);
  }, 60_000);

  afterAll(async () => {
    agent?.proc.kill('SIGKILL');
    proxy?.proc.kill('SIGKILL');
    await backend?.uninstall().catch(() => {});
    await lab?.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('becomes ready anyway, names the bomb in a warning, and captures a pod the rest of the directory puts in the mesh', async () => {
    const ready = async (): Promise<boolean> => (await fetch(`http://127.0.0.1:${health}/healthz/ready`).catch(() => null))?.status === 200;
    await until('the agent to be ready', ready, { timeoutMs: 20_000, context: logs });
    const warning = agent!.log().split('\n').find((l) => l.includes('00-bomb.yaml'));
    expect(warning).toMatch(/"level":40.*alias bomb.*manifest unreadable; skipped/);
    await until('the proxy to take the snapshot', () => /snapshot sent/.test(agent!.log()), { timeoutMs: 20_000, context: logs });
    const conflist = JSON.parse(readFileSync(p('net.d/10-sim.conflist'), 'utf8')) as { cniVersion: string; name: string; plugins: object[] };
    expect(JSON.stringify(conflist)).toContain('inpod-cni');
    // the namespace label and the pod come from the files next to the bomb
    const pod = await lab.node.addPodWithChain('a', conflist, { namespace: 'mesh', name: 'a', uid: 'u-sec-a' }, `${p('bin')}:/usr/lib/cni:/opt/cni/bin`);
    expect((await backend.list()).map((x) => x.netns)).toContain(pod.netnsPath);
  });
});

/** ztunnel's local-config format, one workload per address 10.x.y.z; 150k of them is ~19 MiB. */
function configOf(n: number, first = 0): string {
  const out = ['workloads:'];
  for (let i = first; i < first + n; i++) {
    out.push(`- uid: u${i}\n  name: w${i}\n  namespace: ns${i % 100}\n  serviceAccount: sa${i % 50}\n  workloadIps: ["10.${10 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}"]\n  protocol: HBONE\n  node: node-1`);
  }
  return `${out.join('\n')}\n`;
}

describe('inpod ztunnel --config hot reload fed bad or huge files', () => {
  let dir: string;
  let file: string;
  let zds: ZdsServer;
  let proxy: ReturnType<typeof inpodProcess> | undefined;
  let admin = 0;
  let readiness = 0;
  const GOOD = configOf(3);

  interface StateHealth {
    loading: boolean;
    workloads: number;
    lastError?: { message: string };
  }
  const state = async (): Promise<StateHealth> => (await (await fetch(`http://127.0.0.1:${admin}/state`)).json()) as StateHealth;
  const workloads = async (): Promise<{ uid: string }[]> => {
    const r = await inpod('ztunnel', 'workloads', '--admin-addr', `127.0.0.1:${admin}`);
    expect(r.code).toBe(0);
    return JSON.parse(r.stdout) as { uid: string }[];
  };
  /** Replaces the file as an editor or kubelet does (write aside, rename over). */
  const replace = (text: string | Buffer): void => {
    writeFileSync(`${file}.tmp`, text);
    renameSync(`${file}.tmp`, file);
  };
  const refusedWith = async (re: RegExp): Promise<string> => {
    let last: StateHealth | undefined;
    await until(`the reload to be refused with ${re}`, async () => re.test((last = await state()).lastError?.message ?? ''), { timeoutMs: 20_000, context: () => `${JSON.stringify(last)}\n${proxy?.log()}` });
    return last!.lastError!.message;
  };
  const backToGood = async (): Promise<void> => {
    replace(GOOD);
    await until('the good file to be loaded again', async () => (await state()).lastError === undefined, { timeoutMs: 20_000, context: () => proxy?.log() ?? '' });
  };

  beforeAll(async () => {
    [admin, readiness] = await freePorts(2);
    dir = mkdtempSync(join(tmpdir(), 'inpod-sec-reload-'));
    file = join(dir, 'config.yaml');
    writeFileSync(file, GOOD);
    zds = new ZdsServer({ path: join(dir, 'zds.sock'), pods: () => [] });
    zds.start();
    proxy = inpodProcess(['ztunnel', '--config', file, '--zds', join(dir, 'zds.sock'), '--ca-dir', join(dir, 'ca'), '--drain-seconds', '1',
      '--admin-addr', `127.0.0.1:${admin}`, '--metrics-addr', '127.0.0.1:0', '--readiness-addr', `127.0.0.1:${readiness}`]);
    await until('the proxy to be ready', async () => (await fetch(`http://127.0.0.1:${readiness}/healthz/ready`).catch(() => null))?.status === 200, { timeoutMs: 20_000, context: () => proxy?.log() ?? '' });
  }, 60_000);

  afterAll(() => {
    proxy?.proc.kill('SIGKILL');
    zds?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('truncates the config to an empty file (as a writer does first): refused as empty, the 3 workloads stay, the log says so', async () => {
    writeFileSync(file, '');
    expect(await refusedWith(/the file is empty/)).toContain(file);
    expect((await workloads()).map((w) => w.uid)).toEqual(['u0', 'u1', 'u2']);
    expect(proxy!.log()).toMatch(/the file is empty.*config reload refused; keeping the last good state/);
    // still ready: it serves the last good state, and says the update was refused
    const ready = await fetch(`http://127.0.0.1:${readiness}/healthz/ready`);
    expect(ready.status).toBe(200);
    expect(await ready.text()).toMatch(/the last state update was refused .*the file is empty/);
    await backToGood();
  });

  it('writes half of a file (cut inside an entry): refused naming where it breaks, the workloads stay', async () => {
    const text = configOf(50);
    writeFileSync(file, text.slice(0, text.indexOf('w40') + 2));
    expect(await refusedWith(/workloads\[40\]\.workloadIps: missing: this field is required/)).toMatch(new RegExp(`^${file}: `));
    expect(await workloads()).toHaveLength(3);
    await backToGood();
  });

  it('writes an invalid file (an address that is not one): refused naming the field, the workloads stay', async () => {
    replace(GOOD.replace('10.10.0.1', '10.10.0.300'));
    expect(await refusedWith(/workloads\[1\]\.workloadIps\[0\]: expected an IP address, got "10\.10\.0\.300"/)).toMatch(new RegExp(`^${file}: `));
    expect(await workloads()).toHaveLength(3);
    await backToGood();
  });

  it('writes a YAML alias bomb: refused naming the file, the workloads stay', async () => {
    replace(`${GOOD}${ALIAS_BOMB.replace(/^a:/, 'x:')}`);
    expect(await refusedWith(/alias bomb/)).toMatch(new RegExp(`^${file}: YAML aliases expand`));
    expect(await workloads()).toHaveLength(3);
    await backToGood();
  });

  it('writes a 40 MiB file: refused by size before it is parsed, the workloads stay', async () => {
    replace(`${GOOD}${'#'.repeat(40 << 20)}\n`);
    await refusedWith(/40\.0 MiB is more than the 32 MiB this file may have/);
    expect(await workloads()).toHaveLength(3);
    await backToGood();
  });

  it('writes a 19 MiB file of 150k workloads: readiness and admin each answer within 1 s throughout, the process stays under 1 GiB, the 150k arrive', async () => {
    const big = configOf(150_000);
    expect(big.length).toBeGreaterThan(18 << 20);
    replace(big);
    const slow: string[] = [];
    let sawLoading = false;
    await until('the 150k workloads to arrive', async () => {
      const t0 = Date.now();
      const ready = await fetch(`http://127.0.0.1:${readiness}/healthz/ready`);
      const t1 = Date.now();
      const s = await state();
      const t2 = Date.now();
      if (t1 - t0 >= 1000) slow.push(`readiness took ${t1 - t0} ms`);
      if (t2 - t1 >= 1000) slow.push(`admin /state took ${t2 - t1} ms`);
      expect(ready.status).toBe(200);
      sawLoading ||= s.loading;
      return s.workloads === 150_000;
    }, { timeoutMs: 90_000, intervalMs: 100, context: () => proxy!.log() });
    expect(slow).toEqual([]);
    expect(sawLoading).toBe(true);
    const peakKb = Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${proxy!.proc.pid}/status`, 'utf8'))![1]);
    expect(peakKb).toBeLessThan(1 << 20);
  }, 120_000);
});
