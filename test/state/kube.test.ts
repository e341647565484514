import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ManifestStateSource } from '../../ts/state/kube.js';
import { StateStore } from '../../ts/state/store.js';
import { buildRoute } from '../../ts/proxy/route.js';
import { ALIAS_BOMB } from '../fixtures/yaml.js';

describe('proxy state from a manifest directory', () => {
  const dir = mkdtempSync(join(tmpdir(), 'inpod-state-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('builds workloads, services and policies from Kubernetes YAML, and follows changes', async () => {
    writeFileSync(join(dir, 'app.yaml'), `
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop, uid: w0, labels: {app: web}, annotations: {ambient.istio.io/redirection: enabled}}
spec: {serviceAccountName: web, nodeName: n1}
status: {phase: Running, podIP: 10.200.9.5}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.9.1, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.200.9.5], targetRef: {kind: Pod, name: web-0, uid: w0}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: shop}
spec: {action: ALLOW, rules: [{}]}
`);
    const store = new StateStore();
    const src = new ManifestStateSource(dir, store, 'cluster.local');
    await src.start();
    expect(buildRoute(store.snapshot, { ip: '10.96.9.1', port: 80 })).toMatchObject({
      kind: 'hbone', authority: { ip: '10.200.9.5', port: 8080 }, identities: ['spiffe://cluster.local/ns/shop/sa/web'],
    });
    expect(store.snapshot.state.policies).toHaveLength(1);
    const updated = new Promise((r) => store.once('update', r));
    writeFileSync(join(dir, 'app.yaml'), 'apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n');
    await updated;
    expect(store.snapshot.byIp.size).toBe(0);
    src.stop();
  });

  it('skips an alias bomb (named in the state health), keeps the last good state when the objects do not make one', async () => {
    const d = mkdtempSync(join(tmpdir(), 'inpod-state-'));
    try {
      const pod = (ips: string): string => `apiVersion: v1\nkind: Pod\nmetadata: {name: web-0, namespace: shop, uid: w0}\nspec: {nodeName: n1}\nstatus: {phase: Running, podIPs: ${ips}}\n`;
      writeFileSync(join(d, 'app.yaml'), pod('[{ip: 10.200.9.5}]'));
      writeFileSync(join(d, 'bomb.yaml'), ALIAS_BOMB);
      const store = new StateStore();
      const src = new ManifestStateSource(d, store, 'cluster.local');
      await src.start();
      expect(store.snapshot.byIp.has('10.200.9.5')).toBe(true);
      expect(store.health()).toMatchObject({ source: d, workloads: 1, notes: [expect.stringMatching(/bomb\.yaml: YAML aliases expand .* alias bomb.*; the file is skipped/)] });
      expect(store.lastError).toBeUndefined();
      // podIPs that is not a list used to throw out of a timer and kill the proxy
      const refused = new Promise<Error>((r) => store.once('error', r));
      writeFileSync(join(d, 'app.yaml'), pod('"10.200.9.6"'));
      expect((await refused).message).toMatch(/the manifests do not make a state .*; keeping the last good state/);
      expect(store.snapshot.byIp.has('10.200.9.5')).toBe(true);
      src.stop();
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });
});
