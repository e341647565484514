/**
 * What the agent learns about its owner from the API at shutdown (ts/agent/selfowner.ts),
 * against the fake API server: the owner through the pod's controller reference, 404 as gone,
 * 401/403 as revoked, an outage as unknown after the retries.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { loadKubeConfig } from '../../ts/agent/kube.js';
import { shutdownVerdict } from '../../ts/agent/lifecycle.js';
import { SelfOwner } from '../../ts/agent/selfowner.js';
import { FakeApiServer } from '../fixtures/apiserver.js';

const NS = 'inpod-system';
const SELF = { podName: 'inpod-agent-x7k2p', podNamespace: NS, nodeName: 'node1' };

describe('SelfOwner', () => {
  let api: FakeApiServer;
  let dir: string;
  let owner: SelfOwner;

  beforeAll(async () => {
    api = new FakeApiServer();
    await api.start();
    dir = mkdtempSync(join(tmpdir(), 'selfowner'));
    writeFileSync(join(dir, 'kubeconfig'), api.kubeconfig());
  });
  afterAll(async () => {
    await api.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  beforeEach(() => {
    for (const k of ['pods', 'daemonsets', 'nodes', 'namespaces'] as const) api.fail(k, null);
    api.apply('namespaces', { metadata: { name: NS } });
    api.apply('daemonsets', { metadata: { name: 'inpod-agent', namespace: NS }, spec: { template: { spec: { tolerations: [{ operator: 'Exists' }] } } } } as never);
    const ds = api.get('daemonsets', NS, 'inpod-agent')!;
    api.apply('pods', { metadata: { name: SELF.podName, namespace: NS, ownerReferences: [{ apiVersion: 'apps/v1', kind: 'DaemonSet', name: 'inpod-agent', uid: ds.metadata.uid, controller: true }] }, spec: { nodeName: 'node1' } });
    api.apply('nodes', { metadata: { name: 'node1', labels: { 'kubernetes.io/os': 'linux' } } });
    owner = new SelfOwner(loadKubeConfig(join(dir, 'kubeconfig')), SELF, { attempts: 2, delayMs: 10, timeoutMs: 1000 });
  });

  it('finds the DaemonSet through the pod\'s controller reference, and the node: an upgrade keeps the plugin', async () => {
    const l = await owner.lookup();
    expect(l).toMatchObject({ state: 'present', daemonSet: { metadata: { name: 'inpod-agent' } }, node: { metadata: { name: 'node1' } } });
    expect(shutdownVerdict(l).cleanup).toBe(false);
  });

  it('reads the DaemonSet deleted (404) as gone, and one being deleted (deletionTimestamp) as being deleted', async () => {
    const cur = api.get('daemonsets', NS, 'inpod-agent')!;
    api.apply('daemonsets', { ...cur, metadata: { ...cur.metadata, deletionTimestamp: '2026-01-01T00:00:00Z' } });
    expect(shutdownVerdict(await owner.lookup())).toMatchObject({ cleanup: true, reason: 'DaemonSet inpod-agent is being deleted' });
    api.delete('daemonsets', NS, 'inpod-agent');
    expect(await owner.lookup()).toEqual({ state: 'gone', why: `DaemonSet ${NS}/inpod-agent is gone` });
  });

  it('reads its namespace being deleted as an uninstall, even while the DaemonSet object still exists (kubectl delete -k)', async () => {
    api.apply('namespaces', { metadata: { name: NS, deletionTimestamp: '2026-01-01T00:00:00Z' } });
    expect(await owner.lookup()).toEqual({ state: 'gone', why: `namespace ${NS} is being deleted` });
    expect(api.get('daemonsets', NS, 'inpod-agent')).toBeDefined();
  });

  it('falls back to the owner read at start-up when its own pod is already gone (force-deleted)', async () => {
    await owner.remember();
    api.delete('pods', NS, SELF.podName);
    expect(await owner.lookup()).toMatchObject({ state: 'present' });
    const fresh = new SelfOwner(loadKubeConfig(join(dir, 'kubeconfig')), SELF, { attempts: 1 });
    expect(await fresh.lookup()).toMatchObject({ state: 'unknown', error: expect.stringMatching(/owner was never read/) });
  });

  it('reads a pod with no DaemonSet owner as gone: nothing brings an agent back', async () => {
    api.apply('pods', { metadata: { name: SELF.podName, namespace: NS } });
    expect(await owner.lookup()).toMatchObject({ state: 'gone', why: expect.stringMatching(/not run by a DaemonSet/) });
  });

  it('reads 401 or 403 as revoked (an uninstall took the role), without retrying', async () => {
    api.fail('daemonsets', 403);
    expect(await owner.lookup()).toEqual({ state: 'revoked', status: 403, what: `DaemonSet ${NS}/inpod-agent` });
    api.fail('daemonsets', null);
    api.fail('pods', 401);
    expect(await owner.lookup()).toMatchObject({ state: 'revoked', status: 401 });
  });

  it('reads an outage (5xx, after the retries) as unknown: the plugin stays', async () => {
    api.fail('nodes', 503);
    const l = await owner.lookup();
    expect(l).toEqual({ state: 'unknown', error: 'node node1: HTTP 503' });
    expect(shutdownVerdict(l).cleanup).toBe(false);
  });

  it('reads an API server that is gone, or that takes the request and never answers, as unknown within its deadline', async () => {
    const gone = new SelfOwner(loadKubeConfig(join(dir, 'kubeconfig')), SELF, { attempts: 1, timeoutMs: 1000 });
    await api.stop();
    try {
      expect(await gone.lookup()).toMatchObject({ state: 'unknown' });
    } finally {
      await api.start(api.port);
    }
    const silent = createServer(() => {}); // accepts, reads the request, never answers
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()));
    try {
      const port = (silent.address() as AddressInfo).port;
      writeFileSync(join(dir, 'silent'), api.kubeconfig().replace(`127.0.0.1:${api.port}`, `127.0.0.1:${port}`));
      const l = await new SelfOwner(loadKubeConfig(join(dir, 'silent')), SELF, { attempts: 2, delayMs: 10, timeoutMs: 200 }).lookup();
      expect(l).toEqual({ state: 'unknown', error: `pod ${NS}/${SELF.podName}: no answer within 200 ms` });
      // the whole lookup keeps to its budget whatever the tries and per-request bounds: a shutdown has only its grace period
      const started = Date.now();
      const b = await new SelfOwner(loadKubeConfig(join(dir, 'silent')), SELF, { attempts: 5, delayMs: 10, timeoutMs: 1000, budgetMs: 300 }).lookup();
      // the last GET gets what is left of the 300 ms budget (less once the first try took any time)
      expect(b).toMatchObject({ state: 'unknown', error: expect.stringMatching(new RegExp(`^pod ${NS}/${SELF.podName}: no answer within \\d+ ms$`)) });
      expect(Number(/within (\d+) ms/.exec((b as { error: string }).error)![1])).toBeLessThanOrEqual(300);
      expect(Date.now() - started).toBeLessThan(1000);
    } finally {
      silent.closeAllConnections();
      await new Promise((r) => silent.close(r));
    }
  });

  it('sees the node\'s labels and taints: a node the DaemonSet no longer selects gets the plugin removed', async () => {
    const cur = api.get('daemonsets', NS, 'inpod-agent')!;
    api.apply('daemonsets', { ...cur, spec: { template: { spec: { nodeSelector: { 'inpod.io/mesh': 'true' } } } } } as never);
    expect(shutdownVerdict(await owner.lookup())).toMatchObject({ cleanup: true, reason: expect.stringMatching(/nodeSelector inpod.io\/mesh=true/) });
    api.apply('nodes', { metadata: { name: 'node1', labels: { 'inpod.io/mesh': 'true' } } });
    expect(shutdownVerdict(await owner.lookup())).toMatchObject({ cleanup: false });
  });
});
