/**
 * ztunnel's workload-manager series as ZDS drives the proxy (istio/ztunnel src/inpod/metrics.rs,
 * moved as src/inpod/statemanager.rs moves them: proxies_started when a pod's proxy is up,
 * proxies_stopped once it has exited, active_proxy_count and pending_proxy_count from the pods
 * served and those that could not be), with pod proxies that open nothing (the podProxy seam).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { openPath, type Fd } from '../../ts/native/index.js';
import { PodProxy, type PodInfo } from '../../ts/proxy/pod.js';
import type { ProxyDeps } from '../../ts/proxy/inputs.js';
import { Ztunnel } from '../../ts/proxy/ztunnel.js';
import { StateStore } from '../../ts/state/store.js';
import { until } from '../netns/lab.js';

class FakePod extends PodProxy {
  constructor(info: PodInfo, netns: Fd, deps: ProxyDeps, readonly failStart: boolean) {
    super(info, netns, deps);
  }
  override async start(): Promise<void> {
    if (!this.failStart) return;
    this.stop();
    throw new Error(`cannot listen in the netns of ${this.info.name}`);
  }
}

describe('workload_manager_* as pods come and go', () => {
  let dir: string;
  let zt: Ztunnel;
  const failing = new Set<string>();
  const netns = (name: string): Fd => {
    writeFileSync(join(dir, name), '', { flag: 'a' });
    return openPath(join(dir, name));
  };
  const info = (name: string): PodInfo => ({ uid: `u-${name}`, name, namespace: 'default', serviceAccount: 'sa' });
  const metric = async (name: string): Promise<number> =>
    Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(await zt.telemetry.registry.getSingleMetricAsString(name))?.[1]);
  const all = async (): Promise<Record<string, number>> => ({
    active: await metric('workload_manager_active_proxy_count'),
    pending: await metric('workload_manager_pending_proxy_count'),
    started: await metric('workload_manager_proxies_started_total'),
    stopped: await metric('workload_manager_proxies_stopped_total'),
  });

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'inpod-wm-'));
    zt = await Ztunnel.create({
      trustDomain: 'cluster.local', caDir: join(dir, 'ca'), state: new StateStore(), log: pino({ level: 'silent' }),
      podProxy: (i, ns, deps) => new FakePod(i, ns, deps, failing.has(i.name)),
    });
  });
  afterAll(async () => {
    await zt?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('counts a started proxy active, a failed one pending, a removed one stopped, and a repeated Add not at all', async () => {
    expect(await all()).toEqual({ active: 0, pending: 0, started: 0, stopped: 0 });
    await zt.addPod(info('a'), netns('a'));
    await zt.addPod(info('a'), netns('a')); // the same netns again: idempotent, as ztunnel's add_workload_inner
    expect(await all()).toEqual({ active: 1, pending: 0, started: 1, stopped: 0 });
    failing.add('b');
    await expect(zt.addPod(info('b'), netns('b'))).rejects.toThrow(/cannot listen/);
    expect(await all()).toEqual({ active: 1, pending: 1, started: 1, stopped: 0 });
    failing.delete('b');
    await zt.addPod(info('b'), netns('b'));
    expect(await all()).toEqual({ active: 2, pending: 0, started: 2, stopped: 0 });
    zt.removePod('u-a');
    // stopped once its connections are over (none here)
    await until('the removed proxy counted stopped', async () => (await all()).stopped === 1);
    expect(await all()).toEqual({ active: 1, pending: 0, started: 2, stopped: 1 });
  });

  it('counts a pod whose sandbox was recreated as one proxy stopped and one started, still one active', async () => {
    await zt.addPod(info('b'), netns('b-new'));
    await until('the old sandbox\'s proxy counted stopped', async () => (await all()).stopped === 2);
    expect(await all()).toEqual({ active: 1, pending: 0, started: 3, stopped: 2 });
  });
});
