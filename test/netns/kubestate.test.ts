/**
 * Proxy state from the Kubernetes API (fake API server, real informers): a Service and its
 * EndpointSlice added live become routable through the VIP without a restart; a deleted pod
 * leaves the state.
 */
import * as k8s from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StateStore } from '../../ts/state/store.js';
import { KubeStateSource } from '../../ts/state/kube.js';
import type { FakeApiServer } from '../fixtures/apiserver.js';
import { type Lab, type LabPod, type PodShell, until } from './lab.js';
import { Rig } from './rig.js';

describe('proxy state from the Kubernetes API', () => {
  let rig: Rig;
  let lab: Lab;
  let api: FakeApiServer;
  let source: KubeStateSource;
  const state = new StateStore();
  let client: LabPod, s1: LabPod, s2: LabPod;
  let sh: Record<'client' | 's1' | 's2', PodShell>;
  const uids: Record<string, string> = {};
  const vip = '10.96.77.10';

  beforeAll(async () => {
    rig = await Rig.create({ tag: 'ks', api: true });
    lab = rig.lab;
    api = rig.api!;
    [client, s1, s2] = await Promise.all(['client', 's1', 's2'].map((n) => lab.addPod(n)));
    for (const [p, ns, sa, app] of [[client, 'default', 'sleep', 'sleep'], [s1, 'shop', 'web', 'web'], [s2, 'shop', 'web', 'web']] as const) {
      const o = api.apply('pods', {
        metadata: { name: p.name, namespace: ns, labels: { app }, annotations: { 'ambient.istio.io/redirection': 'enabled' } },
        spec: { nodeName: 'node1', serviceAccountName: sa },
        status: { phase: 'Running', podIP: p.ip, podIPs: [{ ip: p.ip }] },
      } as never);
      uids[p.name] = o.metadata.uid!;
    }
    const kc = new k8s.KubeConfig();
    kc.loadFromString(api.kubeconfig());
    source = new KubeStateSource(kc, state, 'cluster.local');
    await source.start();
    await rig.serve(state, { level: 'silent' });
    for (const [p, ns, sa] of [[client, 'default', 'sleep'], [s1, 'shop', 'web'], [s2, 'shop', 'web']] as const) {
      await rig.servePod(p, { uid: uids[p.name]!, name: p.name, namespace: ns, serviceAccount: sa });
    }
    sh = {
      client: await lab.shell(client.netnsPath, { inCgroup: true }),
      s1: await lab.shell(s1.netnsPath, { inCgroup: true }),
      s2: await lab.shell(s2.netnsPath, { inCgroup: true }),
    };
    await sh.s1.listen({ port: 8080, tag: 's1' });
    await sh.s2.listen({ port: 8080, tag: 's2' });
  }, 60_000);

  afterAll(async () => {
    source?.stop();
    await rig?.destroy();
  });

  it('builds HBONE workloads from the pods', async () => {
    await until('the pods in the state', () => state.snapshot.byIp.size === 3);
    expect(state.snapshot.byIp.get(s1.ip)).toMatchObject({ name: 's1', namespace: 'shop', serviceAccount: 'web', protocol: 'HBONE', labels: { app: 'web' } });
    // direct pod to pod goes over HBONE already
    const r = await sh.client.connect({ host: s1.ip, port: 8080, send: 'direct', timeoutMs: 5000 });
    expect(r.ok && r.reply).toBe('s1:direct');
  });

  it('makes a Service and its EndpointSlice routable through the VIP, live, with a named target port', async () => {
    api.apply('services', { metadata: { name: 'web', namespace: 'shop' }, spec: { clusterIP: vip, clusterIPs: [vip], ports: [{ name: 'http', port: 80, protocol: 'TCP', targetPort: 'http' }] } } as never);
    api.apply('endpointslices', {
      metadata: { name: 'web-abc', namespace: 'shop', labels: { 'kubernetes.io/service-name': 'web' } },
      addressType: 'IPv4',
      ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
      endpoints: [s1, s2].map((p) => ({ addresses: [p.ip], targetRef: { kind: 'Pod', name: p.name, namespace: 'shop', uid: uids[p.name] } })),
    } as never);
    await until('the VIP in the state', () => state.snapshot.byVip.has(vip) && (state.snapshot.endpoints.get('shop/web.shop.svc.cluster.local')?.length ?? 0) === 2);
    const seen = new Set<string>();
    for (let i = 0; i < 24 && seen.size < 2; i++) {
      const r = await sh.client.connect({ host: vip, port: 80, send: 'svc', timeoutMs: 5000 });
      if (r.ok) seen.add(r.reply!.split(':')[0]!);
    }
    expect([...seen].sort()).toEqual(['s1', 's2']);
    const service = /istio_tcp_connections_opened_total\{reporter="source",source_workload="client"[^}]*destination_service="web\.shop\.svc\.cluster\.local",destination_service_namespace="shop",destination_service_name="web",destination_workload="s[12]"/;
    await until('a connection counted with the service as its destination', async () => service.test(await rig.zt!.telemetry!.registry.metrics()));
  });

  it('enforces an AuthorizationPolicy created in the API server', async () => {
    api.apply('authorizationpolicies', {
      apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy',
      metadata: { name: 'deny-default', namespace: 'shop' },
      spec: { action: 'DENY', rules: [{ from: [{ source: { namespaces: ['default'] } }] }] },
    } as never);
    await until('the policy in the state', () => state.snapshot.state.policies.length === 1);
    const before = (await sh.s1.accepted((await sh.s1.listenerByTag('s1')).id)).length;
    const r = await sh.client.connect({ host: s1.ip, port: 8080, send: 'x', timeoutMs: 3000 });
    expect(r.ok ? r.reply : r.error).not.toMatch(/^s1:/); // reset, or refused: never answered by the app
    expect((await sh.s1.accepted((await sh.s1.listenerByTag('s1')).id)).length).toBe(before);
    api.delete('authorizationpolicies', 'shop', 'deny-default');
    await until('the policy gone', () => state.snapshot.state.policies.length === 0);
  });

  it('drops a deleted pod from the state', async () => {
    api.delete('pods', 'shop', 's2');
    await until('s2 to leave the state', () => !state.snapshot.byIp.has(s2.ip));
    expect(state.snapshot.endpoints.get('shop/web.shop.svc.cluster.local')?.map((w) => w.name)).toEqual(['s1']);
  });
});
