/**
 * inpod-cni as the runtime runs it: the static executable the agent installs (cni/inpod-cni.c),
 * fed stdin and CNI_* variables, with a stand-in agent socket and mesh view files, so each test
 * sees what a runtime and the agent would: the result or CNI error, and what reached the agent.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { FakeAgent, installedPlugin, runCni } from './run.js';

const dir = mkdtempSync(join(tmpdir(), 'inpod-cni-test-'));
const sock = join(dir, 'agent.sock');
const view = join(dir, 'meshview.json');
let bin = '';
let agent: FakeAgent;

const prevResult = { cniVersion: '1.0.0', interfaces: [{ name: 'eth0' }], ips: [{ address: '10.200.1.5/24', gateway: '10.200.1.1', interface: 0 }] };
const conf = { cniVersion: '1.0.0', name: 'k8s', type: 'inpod-cni', agentSocket: sock, meshView: view, prevResult };
const withConf = (o: Record<string, unknown>): string => JSON.stringify({ ...conf, ...o });
const ENV = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c1', CNI_NETNS: '/run/netns/p', CNI_IFNAME: 'eth0', CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_UID=abc' };
const cni = (env: Record<string, string> = {}, stdin: string = JSON.stringify(conf)) => runCni(bin, { ...ENV, ...env }, stdin);
/** Writes the mesh view as the agent would (ts/agent/meshview.ts). */
const writeView = (namespaces: Record<string, boolean>, pods: Record<string, { uid: string; mesh: boolean }> = {}, version = 1): void =>
  writeFileSync(view, JSON.stringify({ version, namespaces, pods }));

beforeAll(async () => {
  bin = installedPlugin(dir);
  agent = new FakeAgent(sock);
  await agent.listen();
});
afterAll(async () => {
  await agent.close();
  rmSync(dir, { recursive: true, force: true });
});
beforeEach(() => {
  agent.requests.length = 0;
  agent.connections = 0;
  agent.answer = () => ({ status: 200, body: {} });
  writeView({ shop: true });
});

describe('inpod-cni ADD of a pod of the mesh', () => {
  it('asks the agent with the pod identity and passes prevResult through unchanged', async () => {
    const out = await cni();
    expect(out.code).toBe(0);
    expect(JSON.parse(out.stdout)).toEqual(prevResult);
    expect(agent.requests).toEqual([{ path: '/cmd/add', body: { podName: 'web-0', podNamespace: 'shop', podUid: 'abc', netns: '/run/netns/p', containerId: 'c1', ips: ['10.200.1.5'] } }]);
  });

  it('fails with a CNI error naming the cause when the agent cannot capture the pod', async () => {
    agent.answer = () => ({ status: 500, body: { error: 'no proxy is connected' } });
    const out = await cni();
    expect(out.code).toBe(1);
    expect(JSON.parse(out.stdout)).toMatchObject({ cniVersion: '1.0.0', code: 11, msg: expect.stringMatching(/shop\/web-0 was not added to the mesh: no proxy is connected; the runtime will retry/) });
  });

  it('answers in the configuration\'s CNI version and gives a result without one its version', async () => {
    const { cniVersion: _v, ...bare } = prevResult;
    const out = await cni({}, withConf({ cniVersion: '0.4.0', prevResult: bare }));
    expect(JSON.parse(out.stdout)).toEqual({ cniVersion: '0.4.0', ...bare });
  });
});

describe('inpod-cni looks the pod up in the mesh view and asks the agent only when it may be in the mesh', () => {
  const asked = async (env: Record<string, string>, stdin?: string): Promise<boolean> => {
    agent.requests.length = 0;
    const out = await cni(env, stdin);
    expect(out.code, out.stdout).toBe(0);
    expect(JSON.parse(out.stdout)).toEqual(prevResult);
    return agent.requests.length > 0;
  };
  const pod = (ns: string, name = 'web-0', uid = 'abc') => ({ CNI_ARGS: `K8S_POD_NAMESPACE=${ns};K8S_POD_NAME=${name};K8S_POD_UID=${uid}` });

  it('passes pods of excluded namespaces through without reading the view: kube-system and inpod-system by default, the entry\'s list when it has one', async () => {
    rmSync(view);
    expect(await asked(pod('kube-system'))).toBe(false);
    expect(await asked(pod('inpod-system'))).toBe(false);
    expect(await asked(pod('shop'))).toBe(true); // no view: not ruled out
    expect(await asked(pod('kube-system'), withConf({ excludeNamespaces: ['ops'] }))).toBe(true);
    expect(await asked(pod('ops'), withConf({ excludeNamespaces: ['ops'] }))).toBe(false);
    expect(agent.connections).toBe(2);
  });

  it('follows the pod\'s own verdict when the view has the pod with the same uid, else its namespace\'s', async () => {
    writeView({ shop: true, plain: false }, { 'shop/opted-out': { uid: 'u1', mesh: false }, 'plain/labelled': { uid: 'u2', mesh: true } });
    expect(await asked(pod('shop', 'opted-out', 'u1'))).toBe(false);
    expect(await asked(pod('plain', 'labelled', 'u2'))).toBe(true);
    expect(await asked(pod('plain', 'other'))).toBe(false);
    expect(await asked(pod('shop', 'other'))).toBe(true);
    // the same name with another uid is a new pod the view has not seen: its namespace decides
    expect(await asked(pod('shop', 'opted-out', 'u9'))).toBe(true);
    expect(await asked(pod('plain', 'labelled', 'u9'))).toBe(false);
  });

  it('asks about a namespace the view does not know, and about every pod when the view is missing, unreadable or of another version (fail closed)', async () => {
    writeView({ plain: false });
    expect(await asked(pod('brand-new'))).toBe(true);
    for (const text of ['{"version":1,', JSON.stringify({ version: 2, namespaces: { plain: false }, pods: {} }), '[]']) {
      writeFileSync(view, text);
      expect(await asked(pod('plain')), text).toBe(true);
    }
    rmSync(view);
    expect(await asked(pod('plain'))).toBe(true);
  });

  it('says in the error which rule made it ask, so a stopped agent is not a mystery', async () => {
    writeView({ plain: false });
    const out = await runCni(bin, { ...ENV, ...pod('brand-new') }, withConf({ agentSocket: join(dir, 'nobody.sock') }));
    expect(JSON.parse(out.stdout)).toMatchObject({
      code: 11,
      msg: expect.stringMatching(/brand-new\/web-0 was not added to the mesh: the inpod agent is not running \(no listener on .*nobody\.sock\)/),
      details: expect.stringMatching(/asked because namespace brand-new is not in the mesh view .* yet/),
    });
  });
});

describe('inpod-cni fed bad input', () => {
  it.each([
    ['malformed stdin', {}, '{not json', 6, /not valid JSON/],
    ['stdin that is not an object', {}, '[1]', 6, /must be a JSON object, got a list/],
    ['missing CNI_NETNS', { CNI_NETNS: '' }, undefined, 4, /CNI_NETNS is not set/],
    ['a relative CNI_NETNS', { CNI_NETNS: 'p' }, undefined, 4, /CNI_NETNS "p" is not an absolute path/],
    ['missing CNI_CONTAINERID', { CNI_CONTAINERID: '' }, undefined, 4, /CNI_CONTAINERID is not set/],
    ['a container ID with a slash', { CNI_CONTAINERID: 'a/b' }, undefined, 4, /CNI_CONTAINERID "a\/b" is not a container ID/],
    ['a pod name Kubernetes never gives', { CNI_ARGS: 'K8S_POD_NAMESPACE=shop;K8S_POD_NAME=../x' }, undefined, 4, /K8S_POD_NAME="\.\.\/x" is not a Kubernetes pod name/],
    ['a uid Kubernetes never gives', { CNI_ARGS: 'K8S_POD_NAMESPACE=shop;K8S_POD_NAME=x;K8S_POD_UID=a/b' }, undefined, 4, /K8S_POD_UID="a\/b" is not a Kubernetes UID/],
    ['no prevResult (not chained)', {}, withConf({ prevResult: undefined }), 7, /must be chained after/],
    ['no cniVersion', {}, withConf({ cniVersion: undefined }), 7, /cniVersion must be a version string/],
    ['an unsupported version', {}, withConf({ cniVersion: '9.9.9' }), 1, /"9\.9\.9" is not supported/],
    ['a timeout that is not a number of seconds', {}, withConf({ timeoutSeconds: -1 }), 7, /timeoutSeconds must be a number of seconds above 0 and at most 600, got -1/],
    ['a relative agent socket', {}, withConf({ agentSocket: 'agent.sock' }), 7, /agentSocket must be an absolute path/],
    ['a relative mesh view', {}, withConf({ meshView: 'view.json' }), 7, /meshView must be an absolute path/],
    ['excludeNamespaces that is a string', {}, withConf({ excludeNamespaces: 'kube-system' }), 7, /excludeNamespaces must be a list of namespace names, got "kube-system"/],
    ['an excluded namespace that is a number', {}, withConf({ excludeNamespaces: ['a', 5] }), 7, /excludeNamespaces\[1\] must be a namespace name, got 5/],
    ['prevResult.ips that is not a list', {}, withConf({ prevResult: { ips: 'x' } }), 7, /prevResult\.ips must be a list/],
    ['an address that is not an address', {}, withConf({ prevResult: { ips: [{ address: '10.0.0.300/24' }] } }), 7, /prevResult\.ips\[0\]\.address must be an address with prefix length/],
    ['an address without prefix length', {}, withConf({ prevResult: { ips: [{ address: '10.0.0.3' }] } }), 7, /prevResult\.ips\[0\]\.address must be an address/],
    ['an IPv6 prefix past 128', {}, withConf({ prevResult: { ips: [{ address: 'fd00::1/129' }] } }), 7, /prevResult\.ips\[0\]\.address must be an address/],
    ['an unknown command', { CNI_COMMAND: 'FROB' }, undefined, 4, /unknown CNI_COMMAND "FROB"/],
    ['no command', { CNI_COMMAND: '' }, undefined, 4, /CNI_COMMAND is not set/],
  ])('answers %s with a CNI error, asking no one', async (_n, env, stdin, code, msg) => {
    const out = await cni(env as Record<string, string>, stdin as string | undefined);
    expect(out.code).toBe(1);
    expect(JSON.parse(out.stdout)).toMatchObject({ cniVersion: '1.0.0', code, msg: expect.stringMatching(msg) });
    expect(agent.connections).toBe(0);
  });

  it('accepts what is valid at the edges: IPv6 addresses, a 600 s timeout, nulls for the defaults', async () => {
    for (const o of [{ prevResult: { ...prevResult, ips: [{ address: 'fd00:200::5/64' }] } }, { timeoutSeconds: 600 }, { timeoutSeconds: 0.5 }, { agentSocket: sock, meshView: view, excludeNamespaces: null }]) {
      const out = await cni({}, withConf(o));
      expect(out.code, `${JSON.stringify(o)}: ${out.stdout}`).toBe(0);
    }
  });

  it('never hits an internal error for any JSON type in any field it reads: each answer is a result or a CNI error (ADD, CHECK, DEL)', async () => {
    const values: unknown[] = [null, true, 0, -1, 1e308, 0.1, '', 'x', '/x', [], [null], {}, { address: 1 }, 'a'.repeat(5000), 'é\u0000\n"'];
    const base = { cniVersion: '1.0.0', name: 'k8s', type: 'inpod-cni', agentSocket: sock, meshView: view, timeoutSeconds: 5, prevResult: { ips: [{ address: '10.0.0.1/24' }] } };
    const paths: ((v: unknown) => unknown)[] = [
      (v) => v,
      (v) => ({ ...base, cniVersion: v }),
      (v) => ({ ...base, agentSocket: v }),
      (v) => ({ ...base, meshView: v }),
      (v) => ({ ...base, timeoutSeconds: v }),
      (v) => ({ ...base, excludeNamespaces: v }),
      (v) => ({ ...base, excludeNamespaces: [v] }),
      (v) => ({ ...base, prevResult: v }),
      (v) => ({ ...base, prevResult: { ips: v } }),
      (v) => ({ ...base, prevResult: { ips: [v] } }),
      (v) => ({ ...base, prevResult: { ips: [{ address: v }] } }),
    ];
    const runs = paths.flatMap((path) => values.flatMap((v) => ['ADD', 'CHECK', 'DEL'].map((command) => ({ command, stdin: JSON.stringify(path(v)) ?? 'undefined' }))));
    for (let i = 0; i < runs.length; i += 16) {
      await Promise.all(runs.slice(i, i + 16).map(async ({ command, stdin }) => {
        const out = await cni({ CNI_COMMAND: command }, stdin);
        expect([0, 1], `${command} ${stdin}`).toContain(out.code);
        if (out.code === 1) expect(JSON.parse(out.stdout).code, `${command} ${stdin}`).toBeLessThan(100);
        if (command === 'DEL') expect(out.code).toBe(0);
      }));
    }
  });
});

describe('inpod-cni DEL, CHECK, VERSION', () => {
  it('DEL succeeds whatever the input, and says on stderr why the agent was not told', async () => {
    for (const stdin of ['null', '{not json', withConf({ prevResult: { ips: 5 } })]) {
      const out = await cni({ CNI_COMMAND: 'DEL' }, stdin);
      expect(out).toMatchObject({ code: 0, stdout: '', stderr: expect.stringMatching(/DEL not passed to the agent/) });
    }
    expect(agent.connections).toBe(0);
    expect(await cni({ CNI_COMMAND: 'DEL' })).toMatchObject({ code: 0, stdout: '', stderr: '' });
    expect(agent.requests.map((r) => r.path)).toEqual(['/cmd/del']);
  });

  it('DEL of a pod outside the mesh does not contact the agent', async () => {
    writeView({ shop: false });
    expect(await cni({ CNI_COMMAND: 'DEL' })).toMatchObject({ code: 0, stdout: '' });
    expect(agent.connections).toBe(0);
  });

  it('DEL succeeds when the agent is gone, twice, and names it on stderr', async () => {
    for (let i = 0; i < 2; i++) {
      const out = await cni({ CNI_COMMAND: 'DEL' }, withConf({ agentSocket: join(dir, 'gone.sock') }));
      expect(out).toMatchObject({ code: 0, stdout: '', stderr: expect.stringMatching(/DEL of shop\/web-0 not passed to the agent \(the inpod agent is not running/) });
    }
  });

  it('bounds its waits: DEL gives a silent agent at most 10 s whatever timeoutSeconds says; a runtime that never closes stdin gets an I/O failure (5) after 10 s', async () => {
    agent.answer = () => null;
    const neverClosed = new Promise<{ code: number | null; stdout: string }>((resolve) => {
      const p = spawn(bin, [], { env: { ...ENV }, stdio: ['pipe', 'pipe', 'ignore'] });
      let stdout = '';
      p.stdout.on('data', (d: Buffer) => (stdout += d));
      p.stdin.write('{"cniVersion":'); // and never closed, until the plugin gives up
      p.on('close', (code) => resolve({ code, stdout }));
    });
    const [del, stalled] = await Promise.all([cni({ CNI_COMMAND: 'DEL' }, withConf({ timeoutSeconds: 600 })), neverClosed]);
    expect(del).toMatchObject({ code: 0, stdout: '', stderr: expect.stringMatching(/did not answer on .* within 10 s/) });
    expect(del.ms).toBeLessThan(15_000);
    expect(stalled.code).toBe(1);
    expect(JSON.parse(stalled.stdout)).toMatchObject({ code: 5, msg: 'inpod-cni: no network configuration on stdin within 10 s' });
  }, 30_000);

  it('CHECK checks the configuration and succeeds without the agent', async () => {
    expect(await cni({ CNI_COMMAND: 'CHECK' })).toMatchObject({ code: 0, stdout: '' });
    expect((await cni({ CNI_COMMAND: 'CHECK' }, withConf({ timeoutSeconds: 'x' }))).code).toBe(1);
    expect(agent.connections).toBe(0);
  });

  it('VERSION lists the supported versions without reading stdin', async () => {
    const out = await runCni(bin, { CNI_COMMAND: 'VERSION' });
    expect(JSON.parse(out.stdout)).toEqual({ cniVersion: '1.0.0', supportedVersions: ['0.3.0', '0.3.1', '0.4.0', '1.0.0'] });
  });

  it('passes a non-Kubernetes container through without asking the agent', async () => {
    const out = await cni({ CNI_ARGS: '' });
    expect(JSON.parse(out.stdout)).toEqual(prevResult);
    expect(agent.connections).toBe(0);
  });
});

describe('inpod-cni with dual-stack and IPv6-only pods (CNI spec 1.0 "ips", issue 18)', () => {
  /** What the bridge plugin returns: host-side bridge and veth without sandbox, the pod's eth0 in CNI_NETNS. */
  const result = (ips: object[]) => ({
    cniVersion: '1.0.0',
    interfaces: [{ name: 'br0', mac: '0a:58:0a:c8:01:01' }, { name: 'veth1', mac: '0a:58:0a:c8:01:02' }, { name: 'eth0', mac: '0a:58:0a:c8:01:05', sandbox: '/run/netns/p' }],
    ips,
  });
  const add = async (prev: object, cniVersion = '1.0.0'): Promise<string[]> => {
    const out = await cni({}, withConf({ cniVersion, prevResult: prev }));
    expect(out.code, out.stdout).toBe(0);
    expect(JSON.parse(out.stdout)).toEqual(prev); // passed through unchanged
    return (agent.requests[0]?.body as { ips: string[] }).ips;
  };

  it('sends the agent every pod IP of a dual-stack result, IPv4 and IPv6, without prefix length', async () => {
    const prev = result([
      { address: '10.200.1.5/24', gateway: '10.200.1.1', interface: 2 },
      { address: 'fd00:200::1:0:0:5/80', gateway: 'fd00:200::1:0:0:1', interface: 2 },
    ]);
    expect(await add(prev)).toEqual(['10.200.1.5', 'fd00:200::1:0:0:5']);
  });

  it('sends an IPv6-only pod\'s address, written as the kernel writes it (lowercase, compressed), each address once', async () => {
    const prev = result([{ address: 'FD00:0200:0000:0000:0000:0000:0000:0007/64', interface: 2 }, { address: 'fd00:200::7/64', interface: 2 }]);
    expect(await add(prev)).toEqual(['fd00:200::7']);
  });

  it('reads a 0.4.0 result\'s IPs with their "version" field, and ips without an interface index', async () => {
    const prev = { cniVersion: '0.4.0', ips: [{ version: '4', address: '10.200.1.5/24' }, { version: '6', address: 'fd00:200::5/64' }] };
    expect(await add(prev, '0.4.0')).toEqual(['10.200.1.5', 'fd00:200::5']);
  });
});
