/**
 * The mesh view the plugin reads (ts/agent/meshview.ts): what it says for namespaces and pods
 * (policy.ts's verdicts, excluded namespaces included), how the writer replaces the file, and
 * the agent keeping it current from its cache. The plugin's side of the contract:
 * test/cni/plugin.test.ts; both with the kernel: test/netns/cni-plugin.test.ts.
 */
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Agent } from '../../ts/agent/agent.js';
import { MeshViewWriter, meshView, type MeshView } from '../../ts/agent/meshview.js';
import type { NamespaceObj, PodObj } from '../../ts/agent/policy.js';
import { FakeBackend, FakeNetnsTable, FakeProc, FakeSource, FakeZds, ManualTimer } from './fakes.js';
import { until } from '../netns/lab.js';

const ns = (name: string, ambient: boolean): NamespaceObj => ({ metadata: { name, labels: ambient ? { 'istio.io/dataplane-mode': 'ambient' } : {} } });
const pod = (namespace: string, name: string, labels: Record<string, string> = {}, extra: Partial<PodObj> = {}): PodObj => ({ metadata: { namespace, name, uid: `u-${name}`, labels }, ...extra });

describe('meshView: the verdicts the plugin looks up', () => {
  const namespaces = [ns('mesh', true), ns('plain', false), ns('kube-system', true)];
  const nsOf = (n: string) => namespaces.find((x) => x.metadata?.name === n);
  const excluded = new Set(['kube-system']);

  it('says per namespace whether a pod with no labels of its own is in the mesh; an excluded namespace never is, whatever its label', () => {
    expect(meshView(namespaces, [], nsOf, excluded).namespaces).toEqual({ 'kube-system': false, mesh: true, plain: false });
  });

  it('says per pod of the node its own verdict with its uid: opt-outs, own ambient labels, sidecars, host network, excluded namespaces', () => {
    const pods = [
      pod('mesh', 'a'),
      pod('mesh', 'out', { 'istio.io/dataplane-mode': 'none' }),
      pod('plain', 'own', { 'istio.io/dataplane-mode': 'ambient' }),
      pod('plain', 'b'),
      pod('mesh', 'host', {}, { spec: { hostNetwork: true } }),
      pod('kube-system', 'dns', { 'istio.io/dataplane-mode': 'ambient' }),
    ];
    expect(meshView(namespaces, pods, nsOf, excluded).pods).toEqual({
      'kube-system/dns': { uid: 'u-dns', mesh: false },
      'mesh/a': { uid: 'u-a', mesh: true },
      'mesh/host': { uid: 'u-host', mesh: false },
      'mesh/out': { uid: 'u-out', mesh: false },
      'plain/b': { uid: 'u-b', mesh: false },
      'plain/own': { uid: 'u-own', mesh: true },
    });
  });

  it('keeps a name such as __proto__ from a manifest a plain key', () => {
    const v = meshView([ns('__proto__', true)], [], () => ns('__proto__', true));
    expect(JSON.stringify(v.namespaces)).toBe('{"__proto__":true}');
  });
});

describe('MeshViewWriter', () => {
  let dir: string;
  let view: MeshView;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'inpod-meshview-'));
    view = { version: 1, namespaces: { mesh: true }, pods: {} };
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('writes at start, replaces the file by renaming a whole new one over it on a change, and leaves no temporary file', async () => {
    const path = join(dir, 'run', 'meshview.json');
    const w = new MeshViewWriter(path, () => view, { delayMs: 1 });
    w.changed(); // before start: nothing (start writes everything)
    expect(readdirSync(dir)).toEqual([]);
    w.start();
    expect(JSON.parse(readFileSync(path, 'utf8'))).toEqual(view);
    const before = statSync(path).ino;
    view = { ...view, namespaces: { mesh: true, plain: false } };
    w.changed();
    w.changed(); // a burst is one write
    await until('the new view', () => JSON.parse(readFileSync(path, 'utf8')).namespaces.plain === false);
    expect(statSync(path).ino).not.toBe(before); // a new file renamed over: a reader has the old or the new one
    expect(readdirSync(join(dir, 'run'))).toEqual(['meshview.json']);
    w.stop();
  });

  it('does not rewrite a view that did not change', async () => {
    const path = join(dir, 'meshview.json');
    let reads = 0;
    const w = new MeshViewWriter(path, () => (reads++, view), { delayMs: 1 });
    w.start();
    const ino = statSync(path).ino;
    w.changed();
    await until('the view read again', () => reads === 2);
    expect(statSync(path).ino).toBe(ino);
    w.stop();
  });

  it('keeps the old file whole and tries again when a write fails', async () => {
    const path = join(dir, 'meshview.json');
    writeFileSync(path, 'old');
    const logs: string[] = [];
    mkdirSync(`${path}.tmp`); // a directory where the temporary file goes: the write fails
    const w = new MeshViewWriter(path, () => view, { delayMs: 1, log: pino({}, { write: (s: string) => logs.push(s) }) });
    w.start();
    expect(readFileSync(path, 'utf8')).toBe('old');
    expect(logs.join('')).toMatch(/mesh view not written; trying again in 1 s/);
    rmSync(`${path}.tmp`, { recursive: true });
    await until('the retry', () => readFileSync(path, 'utf8') !== 'old', { timeoutMs: 3000 });
    expect(JSON.parse(readFileSync(path, 'utf8'))).toEqual(view);
    w.stop();
  });
});

describe('the agent keeps the mesh view', () => {
  let dir: string;
  let source: FakeSource;
  let backend: FakeBackend;
  let table: FakeNetnsTable;
  let agent: Agent;
  const path = (): string => join(dir, 'run', 'meshview.json');
  const read = (): MeshView => JSON.parse(readFileSync(path(), 'utf8')) as MeshView;

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'inpod-agent-view-'));
    source = new FakeSource();
    backend = new FakeBackend();
    source.setNamespace('mesh', true, false);
    source.setNamespace('plain', false, false);
    source.setNamespace('ops', true, false);
    table = new FakeNetnsTable();
    agent = new Agent({
      source, backend, stateDir: join(dir, 'state'), zdsPath: '/unused', pluginSocket: join(dir, 'plugin.sock'), podWaitMs: 0,
      meshView: path(), excludeNamespaces: ['ops'],
      zds: new FakeZds().factory, openNetns: table.opener, netnsAddrs: table.addresses, proc: new FakeProc(dir), bootId: 'boot-1', retry: { minMs: 100, maxMs: 400, timer: new ManualTimer().timer },
      log: pino({ level: 'silent' }),
    });
    await agent.start();
  });
  afterEach(() => {
    agent.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('writes it once the cluster is listed, and follows namespace labels and pods as they change', async () => {
    expect(read()).toEqual({ version: 1, namespaces: { mesh: true, ops: false, plain: false }, pods: {} });
    source.setNamespace('plain', true);
    await until('plain in the mesh', () => read().namespaces.plain === true);
    const uid = source.setPod('mesh', 'web', { labels: { 'istio.io/dataplane-mode': 'none' } }).metadata!.uid!;
    await until('the pod in the view', () => read().pods['mesh/web']?.mesh === false);
    expect(read().pods['mesh/web']).toEqual({ uid, mesh: false });
    source.deletePod('mesh', 'web');
    await until('the pod gone from the view', () => read().pods['mesh/web'] === undefined);
  });

  it('never enrolls a pod of an excluded namespace, even labelled ambient (the plugin passes it through, so the two agree)', async () => {
    const netns = join(dir, 'netns-x');
    writeFileSync(netns, '');
    table.add(netns);
    source.setPod('ops', 'x', { labels: { 'istio.io/dataplane-mode': 'ambient' } }, false);
    expect(await agent.cniAdd({ podNamespace: 'ops', podName: 'x', podUid: source.pod('ops', 'x')!.metadata!.uid!, netns, containerId: 'c', ips: [] }))
      .toEqual({ enrolled: false, reason: 'namespace ops is excluded from the mesh (excludeNamespaces)' });
    source.setNamespace('ops', true);
    await until('the view rewritten', () => read().pods['ops/x'] !== undefined);
    expect(read().pods['ops/x']?.mesh).toBe(false);
    expect(backend.netns()).toEqual([]);
  });
});
