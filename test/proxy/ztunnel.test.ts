/**
 * Which pods the proxy serves as ZDS drives it (ts/proxy/ztunnel.ts), with pods that open no
 * listeners (the podProxy seam) and plain files standing in for netns fds (a netns is told apart
 * by the (dev, inode) of its fd). The semantics are ztunnel's src/inpod/statemanager.rs: on each
 * new connection the agent sends a snapshot (an Add or a Keep for every pod it knows), then
 * SnapshotSent; the pods it did not name are removed then, and only then. The wire is tested in
 * test/zds/zds.test.ts, real listeners in test/netns/ztunnel.test.ts.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { openPath, type Fd } from '../../ts/native/index.js';
import type { ProxyDeps } from '../../ts/proxy/inputs.js';
import { PodProxy, type PodInfo } from '../../ts/proxy/pod.js';
import { Ztunnel } from '../../ts/proxy/ztunnel.js';
import { StateStore } from '../../ts/state/store.js';

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

  it('serves a pod added in the snapshot for the first time, and one whose sandbox changed on the new netns only', async () => {
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

  it('changes nothing on a Keep or SnapshotSent outside a snapshot (live updates after SnapshotSent)', async () => {
    await firstSnapshot();
    zt.keepPod('u-zzz');
    zt.snapshotSent(); // a second SnapshotSent on the same connection
    expect(served()).toEqual(['u-a', 'u-b', 'u-c']);
    // live Add and Del after the snapshot
    await zt.addPod(info('d'), netns('d'));
    zt.removePod('u-a');
    zt.removePod('u-unknown'); // unknown: a no-op
    expect(served()).toEqual(['u-b', 'u-c', 'u-d']);
  });
});
