import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ManifestSource } from '../../ts/agent/manifests.js';
import { ALIAS_BOMB } from '../fixtures/yaml.js';

describe('manifest directory as the cluster', () => {
  const dir = mkdtempSync(join(tmpdir(), 'inpod-manifests-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('reads namespaces and this node\'s pods, and reports changes to the files', async () => {
    writeFileSync(join(dir, 'ns.yaml'), 'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n');
    writeFileSync(join(dir, 'pods.yaml'), [
      'apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop, uid: u1}\nspec: {nodeName: n1}',
      'apiVersion: v1\nkind: Pod\nmetadata: {name: elsewhere, namespace: shop, uid: u2}\nspec: {nodeName: n2}',
    ].join('\n---\n'));
    writeFileSync(join(dir, 'broken.yaml'), 'kind: [\n');
    const src = new ManifestSource(dir, 'n1');
    await src.start();
    expect(src.pods().map((p) => p.metadata?.name)).toEqual(['web']);
    // as the API server's ServiceAccount admission: a pod naming no account runs as "default"
    expect(src.pod('shop', 'web')?.spec?.serviceAccountName).toBe('default');
    expect(src.namespace('shop')?.metadata?.labels).toBeUndefined();
    const changed = new Promise<string>((r) => src.once('namespace', r));
    writeFileSync(join(dir, 'ns.yaml'), 'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels: {istio.io/dataplane-mode: ambient}\n');
    expect(await changed).toBe('shop');
    expect(src.namespace('shop')?.metadata?.labels?.['istio.io/dataplane-mode']).toBe('ambient');
    await src.annotatePod('shop', 'web', 'ambient.istio.io/redirection', 'enabled');
    expect(src.pod('shop', 'web')?.metadata?.annotations).toEqual({ 'ambient.istio.io/redirection': 'enabled' });
    src.stop();
  });

  it('skips an alias bomb and applies the rest; a file broken later keeps the pods it held', async () => {
    const d = mkdtempSync(join(tmpdir(), 'inpod-manifests-'));
    try {
      writeFileSync(join(d, 'ns.yaml'), 'apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}\n');
      writeFileSync(join(d, 'pods.yaml'), 'apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop, uid: u1}\n');
      writeFileSync(join(d, 'bomb.yaml'), ALIAS_BOMB);
      const src = new ManifestSource(d);
      await src.start(); // returns: the bomb does not hold the source up
      expect(src.pods().map((p) => p.metadata?.name)).toEqual(['web']);
      expect(src.namespace('shop')?.metadata?.labels).toEqual({ 'istio.io/dataplane-mode': 'ambient' });
      // half written: a pod file cut mid-object must not make its pods vanish (the agent would unenroll them)
      const changed = new Promise<void>((r) => src.once('namespace', () => r()));
      writeFileSync(join(d, 'pods.yaml'), 'apiVersion: v1\nkind: Pod\nmetadata: {name: web, namesp');
      writeFileSync(join(d, 'ns.yaml'), 'apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n');
      await changed;
      expect(src.pods().map((p) => p.metadata?.name)).toEqual(['web']);
      src.stop();
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });
});
