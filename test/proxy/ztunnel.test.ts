/**
 * Which pods the proxy serves as ZDS drives it (ts/proxy/ztunnel.ts), with pods that open no
 * listeners (the podProxy seam) and plain files standing in for netns fds (a netns is told apart
 * by the (dev, inode) of its fd). The semantics are ztunnel's src/inpod/statemanager.rs: on each
 * new connection the agent sends a snapshot (an Add or a Keep for every pod it knows), then
 * SnapshotSent; the pods it did not name are removed then, and only then; what breaks that order
 * is a protocol error, answered as workloadmanager.rs answers it (the last describe, over a real
 * ZDS socket). The wire is tested in test/zds/zds.test.ts, real listeners in
 * test/netns/ztunnel.test.ts.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { openPath, type Fd } from '../../ts/native/index.js';
import type { ProxyDeps } from '../../ts/proxy/inputs.js';
import { PodProxy, type PodInfo } from '../../ts/proxy/pod.js';
import { Ztunnel, bytePathSetting } from '../../ts/proxy/ztunnel.js';
import { StateStore } from '../../ts/state/store.js';
import { ZdsClient } from '../../ts/zds/client.js';
import { ZdsProtocolError, type WorkloadRequest } from '../../ts/zds/messages.js';
import { FakeAgent, type FakeAgentConn } from '../zds/fixtures/agent.js';
import { until } from '../netns/lab.js';
import { CLI } from '../cli.js';

/** A pod proxy that opens nothing: it records its start and stop (stop() is PodProxy's own). */
class FakePod extends PodProxy {
  starts = 0;
  stopped = false;
  constructor(info: PodInfo, netns: Fd, deps: ProxyDeps, readonly failStart: boolean) {
    super(info, netns, deps);
  }
  override async start(): Promise<void> {
    this.starts++;
    if (this.failStart) {
      this.stop(); // as PodProxy.start does when a listener cannot be opened
      throw new Error(`cannot listen in the netns of ${this.info.name}`);
    }
  }
  override stop(): void {
    this.stopped = true;
    super.stop();
  }
}

describe('the pods the proxy serves, as ZDS drives it', () => {
  let dir: string;
  let zt: Ztunnel;
  const made: FakePod[] = [];
  const failing = new Set<string>();

  /** An fd standing in for netns `name`: the same name is the same netns. */
  const netns = (name: string): Fd => {
    writeFileSync(join(dir, name), '', { flag: 'a' });
    return openPath(join(dir, name));
  };
  const info = (name: string): PodInfo => ({ uid: `u-${name}`, name, namespace: 'default', serviceAccount: 'sa' });
  const served = (): string[] => [...zt.pods.keys()].sort();
  const pod = (name: string): FakePod => zt.pods.get(`u-${name}`) as FakePod;

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'inpod-zt-'));
  });
  beforeEach(async () => {
    zt = await Ztunnel.create({
      trustDomain: 'cluster.local',
      caDir: join(dir, 'ca'),
      state: new StateStore(),
      log: pino({ level: 'silent' }),
      podProxy: (i, ns, deps) => {
        const p = new FakePod(i, ns, deps, failing.has(i.name));
        made.push(p);
        return p;
      },
    });
  });
  afterEach(() => {
    zt.close();
    made.length = 0;
    failing.clear();
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /** The first connection: a snapshot of a, b and c. */
  async function firstSnapshot(): Promise<void> {
    zt.snapshotStarted();
    for (const n of ['a', 'b', 'c']) await zt.addPod(info(n), netns(n));
    zt.snapshotSent();
    expect(served()).toEqual(['u-a', 'u-b', 'u-c']);
  }

  it('after a reconnect keeps the pods the snapshot names (Add or Keep) as they are, and removes the others only at SnapshotSent', async () => {
    await firstSnapshot();
    const [a, b, c] = [pod('a'), pod('b'), pod('c')];
    zt.snapshotStarted();
    const again = netns('a');
    await zt.addPod(info('a'), again); // Add, same netns
    zt.keepPod('u-b'); // Keep: the agent knows b but could not send its netns
    expect(served()).toEqual(['u-a', 'u-b', 'u-c']); // c is still served until the snapshot is complete
    expect(c.stopped).toBe(false);
    zt.snapshotSent();
    expect(served()).toEqual(['u-a', 'u-b']);
    expect(c.stopped).toBe(true);
    expect(c.netns.closed).toBe(true);
    // a and b untouched: the same proxies, started once, their listeners never closed
    expect([pod('a'), pod('b')]).toEqual([a, b]);
    expect([a.starts, b.starts, a.stopped, b.stopped]).toEqual([1, 1, false, false]);
    expect(again.closed).toBe(true); // the repeated Add's fd: the pod keeps the one it has
    expect(a.netns.closed).toBe(false);
  });

  it('reports ready only once a snapshot was taken whole and every pod in it is served (what a rollout waits for)', async () => {
    expect(zt.notReady()).toMatch(/waiting for the agent's snapshot/);
    failing.add('b');
    zt.snapshotStarted();
    await zt.addPod(info('a'), netns('a'));
    await expect(zt.addPod(info('b'), netns('b'))).rejects.toThrow(/cannot listen/);
    expect(zt.notReady()).toMatch(/waiting for the agent's snapshot/);
    zt.snapshotSent();
    expect(zt.notReady()).toMatch(/pods not served .*: u-b/);
    failing.clear();
    await zt.addPod(info('b'), netns('b')); // the agent tries again
    expect(zt.notReady()).toBeNull();
    // a reconnect starts over: not ready until its snapshot is in
    zt.snapshotStarted();
    expect(zt.notReady()).toMatch(/waiting for the agent's snapshot/);
    failing.add('c');
    await expect(zt.addPod(info('c'), netns('c'))).rejects.toThrow(/cannot listen/);
    zt.keepPod('u-a');
    zt.keepPod('u-b');
    zt.snapshotSent();
    expect(zt.notReady()).toMatch(/u-c/);
    zt.removePod('u-c'); // deleted: nothing left to serve
    expect(zt.notReady()).toBeNull();
  });

  it('takes every later snapshot afresh: a pod kept by one is removed by the next that does not name it', async () => {
    await firstSnapshot();
    zt.snapshotStarted();
    zt.keepPod('u-a');
    zt.keepPod('u-b');
    zt.snapshotSent();
    expect(served()).toEqual(['u-a', 'u-b']);
    zt.snapshotStarted();
    zt.keepPod('u-b');
    zt.snapshotSent();
    expect(served()).toEqual(['u-b']);
    // an empty snapshot (the agent knows no pod) removes them all
    zt.snapshotStarted();
    zt.snapshotSent();
    expect(served()).toEqual([]);
    expect(made.every((p) => p.stopped)).toBe(true);
  });

  it('serves a pod added in the snapshot for the first time, and one whose sandbox changed on the new netns only, draining the old (ztunnel statemanager.rs add_workload_inner)', async () => {
    await firstSnapshot();
    const oldA = pod('a');
    zt.snapshotStarted();
    await zt.addPod(info('a'), netns('a-sandbox2')); // the runtime recreated a's sandbox meanwhile
    await zt.addPod(info('d'), netns('d'));
    zt.keepPod('u-b');
    zt.keepPod('u-c');
    zt.snapshotSent();
    expect(served()).toEqual(['u-a', 'u-b', 'u-c', 'u-d']);
    expect(pod('a')).not.toBe(oldA);
    expect(oldA.stopped).toBe(true);
    expect([pod('a').starts, pod('d').starts, pod('a').stopped]).toEqual([1, 1, false]);
  });

  it('removes a pod deleted during the snapshot at once, and SnapshotSent does not bring it back', async () => {
    await firstSnapshot();
    const c = pod('c');
    zt.snapshotStarted();
    await zt.addPod(info('c'), netns('c'));
    zt.removePod('u-c'); // Del after its Add
    expect(c.stopped).toBe(true);
    zt.keepPod('u-a');
    zt.keepPod('u-b');
    zt.snapshotSent();
    expect(served()).toEqual(['u-a', 'u-b']);
  });

  it('keeps serving the old sandbox when the new one cannot be served, and the Add fails', async () => {
    await firstSnapshot();
    const a = pod('a');
    failing.add('a');
    zt.snapshotStarted();
    await expect(zt.addPod(info('a'), netns('a-sandbox2'))).rejects.toThrow(/cannot listen in the netns of a/);
    zt.keepPod('u-b');
    zt.keepPod('u-c');
    zt.snapshotSent();
    // named in the snapshot (its Add came, though it failed): the old sandbox stays served
    expect(served()).toEqual(['u-a', 'u-b', 'u-c']);
    expect(pod('a')).toBe(a);
    expect(a.stopped).toBe(false);
  });

  it('refuses Keep after SnapshotSent and a second SnapshotSent as protocol errors, changing nothing (ztunnel statemanager.rs process_msg)', async () => {
    // before, both were acknowledged as no-ops
    await firstSnapshot();
    expect(() => zt.keepPod('u-zzz')).toThrow(ZdsProtocolError);
    expect(() => zt.keepPod('u-zzz')).toThrow(/pod keep received after snapshot/);
    expect(() => zt.snapshotSent()).toThrow(/pod snapshot received already/);
    expect(served()).toEqual(['u-a', 'u-b', 'u-c']);
    // live Add and Del after the snapshot are the protocol
    await zt.addPod(info('d'), netns('d'));
    zt.removePod('u-a');
    zt.removePod('u-unknown'); // unknown: a no-op
    expect(served()).toEqual(['u-b', 'u-c', 'u-d']);
  });

  it('refuses an Add without workload_info as a protocol error: nothing opened, its netns closed (ztunnel statemanager.rs process_msg)', async () => {
    // before, it was served as a pod with no name, namespace or service account
    const h = zt.zdsHandler();
    h.connected();
    const ns = netns('x');
    await expect(h.add('u-x', undefined, ns)).rejects.toThrow(/workload_info is required but not present/);
    expect(ns.closed).toBe(true);
    expect(made).toHaveLength(0);
    expect(served()).toEqual([]);
  });
});

describe('the proxy on a ZDS connection that breaks the protocol (ztunnel workloadmanager.rs process)', () => {
  let dir: string;
  let zt: Ztunnel;
  let agent: FakeAgent;
  let client: ZdsClient;
  const fatal: Error[] = [];
  const made: FakePod[] = [];
  const fdCount = (): number => readdirSync('/proc/self/fd').length;
  const nsFd = (): Fd => openPath(join(dir, 'netns'));
  const add = (uid: string): WorkloadRequest => ({ kind: 'add', uid, info: { name: uid, namespace: 'default', serviceAccount: 'sa' } });

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'inpod-ztp-'));
    writeFileSync(join(dir, 'netns'), '');
    zt = await Ztunnel.create({
      trustDomain: 'cluster.local',
      caDir: join(dir, 'ca'),
      state: new StateStore(),
      log: pino({ level: 'silent' }),
      podProxy: (i, ns, deps) => {
        const p = new FakePod(i, ns, deps, false);
        made.push(p);
        return p;
      },
    });
    agent = new FakeAgent(join(dir, 'zds.sock'));
    client = new ZdsClient({ path: agent.path, handler: zt.zdsHandler(), minBackoffMs: 20, maxBackoffMs: 50, log: pino({ level: 'silent' }), onFatal: (e) => fatal.push(e) });
    client.start();
  });
  afterEach(() => {
    client.stop();
    agent.close();
    zt.close();
    rmSync(dir, { recursive: true, force: true });
    fatal.length = 0;
    made.length = 0;
  });

  /** The agent's snapshot of pod p1, taken. */
  async function snapshot(): Promise<FakeAgentConn> {
    const c = await agent.conn(0);
    const f = nsFd();
    expect(await c.send(add('p1'), [f.fd])).toBe('');
    f.close();
    expect(await c.send({ kind: 'snapshotSent' })).toBe('');
    expect(zt.notReady()).toBeNull();
    return c;
  }

  it.each([
    ['Keep after SnapshotSent', { kind: 'keep', uid: 'p1' } as WorkloadRequest, /pod keep received after snapshot/],
    ['a second SnapshotSent', { kind: 'snapshotSent' } as WorkloadRequest, /pod snapshot received already/],
  ])('%s: an error Ack, then the connection ends and the proxy stops talking ZDS', async (_name, req, why) => {
    // before, it was acknowledged, and the proxy went on
    const c = await snapshot();
    const ack = await c.send(req);
    expect(ack).toMatch(/^failure to process message : ZDS protocol error: /);
    expect(ack).toMatch(why);
    await c.hungUp();
    expect(fatal).toHaveLength(1);
    expect(client.stopped).toBe(true);
    expect([...zt.pods.keys()]).toEqual(['p1']); // the pods it served stay until the process exits
  });

  it('Add without workload_info: an error Ack, nothing opened, its netns fd closed, then the connection ends for good', async () => {
    const c = await snapshot();
    const baseline = fdCount();
    const f = nsFd();
    const ack = await c.send({ kind: 'add', uid: 'p2', info: undefined }, [f.fd]);
    f.close();
    expect(ack).toMatch(/^failure to process message : ZDS protocol error: workload_info is required but not present/);
    await c.hungUp();
    expect(made.map((p) => p.info.uid)).toEqual(['p1']);
    expect(fatal).toHaveLength(1);
    await until('the received netns fd to be closed', () => fdCount() <= baseline, { timeoutMs: 5000 });
  });

  it('Add without an fd: an error Ack, then the connection ends and the proxy connects again, its pods kept (protocol.rs "No control message")', async () => {
    // before, the connection was closed with no Ack: the agent waited out its timeout
    const c = await snapshot();
    const ack = await c.send(add('p2'));
    expect(ack).toMatch(/^failure to read message : add came with 0 fd\(s\), expected 1/);
    await c.hungUp();
    const again = await agent.conn(1);
    expect(await again.send({ kind: 'keep', uid: 'p1' })).toBe(''); // a new snapshot: Keep belongs in it
    expect(await again.send({ kind: 'snapshotSent' })).toBe('');
    expect(fatal).toHaveLength(0);
    expect(made.map((p) => [p.info.uid, p.stopped])).toEqual([['p1', false]]);
  });

  it('inpod ztunnel, the process, exits 1 after a protocol error, as ztunnel (app.rs: WorkloadProxyManager run error, exit 1)', async () => {
    client.stop(); // this describe's in-process client: the agent below is for the process alone
    const path = join(dir, 'proc.sock');
    const procAgent = new FakeAgent(path);
    writeFileSync(join(dir, 'empty.yaml'), 'workloads: []\n');
    const proc = spawn('node', [CLI, 'ztunnel', '--config', join(dir, 'empty.yaml'), '--zds', path, '--ca-dir', join(dir, 'ca'),
      '--admin-addr', '127.0.0.1:0', '--metrics-addr', '127.0.0.1:0', '--readiness-addr', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    proc.stdout!.on('data', (d) => (out += d));
    proc.stderr!.on('data', (d) => (out += d));
    const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
    try {
      const c = await procAgent.conn(0);
      expect(await c.send({ kind: 'snapshotSent' })).toBe('');
      expect(await c.send({ kind: 'snapshotSent' })).toMatch(/^failure to process message : ZDS protocol error: pod snapshot received already/);
      expect(await exited).toBe(1);
      expect(out).toMatch(/"code":"INPOD_ERR_ZDS_PROTOCOL".*protocol mismatch with the node agent; exiting/);
    } finally {
      proc.kill('SIGKILL');
      procAgent.close();
    }
  }, 30_000);
});

describe('the HBONE byte path setting', () => {
  it('takes --byte-path, else INPOD_BYTE_PATH, else node, and refuses anything else naming where it came from', () => {
    expect(bytePathSetting(undefined, undefined)).toBe('node');
    expect(bytePathSetting(undefined, 'native')).toBe('native');
    expect(bytePathSetting('node', 'native')).toBe('node');
    expect(() => bytePathSetting('rust', 'native')).toThrow(/^--byte-path rust: want node or native$/);
    expect(() => bytePathSetting(undefined, 'Native')).toThrow(/^INPOD_BYTE_PATH="Native": want node or native$/);
  });
});
