/**
 * Waypoint routing through the whole path on real namespaces: state from the Kubernetes API (fake
 * API server, real informers) with an `istio.io/use-waypoint` namespace label and a waypoint
 * Gateway, eBPF capture in the client pod, the proxy's outbound choosing the waypoint (ztunnel
 * outbound.rs build_request / state.rs fetch_service_waypoint), a fake waypoint (the project's
 * HBONE server in its own netns, with a certificate of the waypoint identity from the test's CA)
 * that records the CONNECT and forwards it to the server pod over HBONE with its own identity, and
 * the server's inbound admitting the waypoint while refusing a client that goes around it (istiod's
 * implicit waypoint ALLOW policy, enforced by ztunnel state.rs assert_rbac).
 */
import type { Http2SecureServer, IncomingHttpHeaders, ServerHttp2Stream } from 'node:http2';
import * as k8s from '@kubernetes/client-node';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalCa } from '../../ts/identity/ca.js';
import { CertManager } from '../../ts/identity/manager.js';
import { openPath, type Fd } from '../../ts/native/index.js';
import { answered, dialHbone, sendConnect } from '../../ts/proxy/hbone/client.js';
import { DEFAULT_HBONE_LIMITS } from '../../ts/proxy/hbone/limits.js';
import { createHboneServer } from '../../ts/proxy/hbone/server.js';
import { podListenerFd } from '../../ts/proxy/sockets.js';
import type { Ztunnel } from '../../ts/proxy/ztunnel.js';
import { KubeStateSource } from '../../ts/state/kube.js';
import { StateStore } from '../../ts/state/store.js';
import type { FakeApiServer } from '../fixtures/apiserver.js';
import { type Lab, type LabPod, type PodShell, until } from './lab.js';
import { Rig } from './rig.js';

const TD = 'cluster.local';
const WAYPOINT_ID = { trustDomain: TD, namespace: 'shop', serviceAccount: 'waypoint' };

describe('waypoints on the data path', () => {
  let rig: Rig;
  let lab: Lab;
  let api: FakeApiServer;
  let zt: Ztunnel;
  let source: KubeStateSource;
  const state = new StateStore();
  let client: LabPod, server: LabPod, waypoint: LabPod;
  let sh: { client: PodShell; server: PodShell };
  let wpNs: Fd;
  let wpServer: Http2SecureServer;
  /** what the fake waypoint saw: each CONNECT's authority and the client's verified identity */
  const seen: { authority: string; peer: string }[] = [];
  let webVip: string, waypointVip: string;
  const uids: Record<string, string> = {};

  /** The fake waypoint: answers each CONNECT by tunnelling on to the server pod's 15008 as itself. */
  async function startFakeWaypoint(certs: CertManager): Promise<void> {
    const cert = await certs.get(WAYPOINT_ID);
    const forward = async (stream: ServerHttp2Stream, headers: IncomingHttpHeaders): Promise<void> => {
      const req = { target: { ip: server.ip, port: 15008 }, authority: { ip: server.ip, port: 8080 }, identities: [`spiffe://${TD}/ns/shop/sa/web`] };
      const src = { owner: 'fake-waypoint', nsFd: wpNs.fd, identity: WAYPOINT_ID, ip: waypoint.ip };
      try {
        const { session } = await dialHbone({ certs, connectTimeoutMs: 3000, h2: { ...DEFAULT_HBONE_LIMITS, pingIntervalMs: 60_000, pingTimeoutMs: 10_000 } }, src, req);
        // the client's own headers carried on, as a waypoint propagates them
        const up = sendConnect(session, req, { baggage: String(headers.baggage ?? ''), forwarded: String(headers.forwarded ?? ''), traceparent: String(headers.traceparent ?? '') });
        await answered(up, req);
        stream.respond({ ':status': 200 });
        stream.pipe(up).pipe(stream);
        up.on('close', () => session.close());
      } catch {
        stream.respond({ ':status': 503 }, { endStream: true });
      }
    };
    wpServer = createHboneServer({
      cert: cert.chainPem, key: cert.keyPem, ca: certs.rootPem, trustDomain: TD, log: pino({ level: 'silent' }),
      onStream: async ({ stream, headers, peer }) => {
        seen.push({ authority: String(headers[':authority']), peer: `spiffe://${peer.trustDomain}/ns/${peer.namespace}/sa/${peer.serviceAccount}` });
        await forward(stream, headers);
      },
    });
    const fd = podListenerFd(wpNs.fd, 15008);
    await new Promise<void>((resolve) => wpServer.listen({ fd }, () => resolve()));
  }

  beforeAll(async () => {
    rig = await Rig.create({ tag: 'wp', api: true });
    lab = rig.lab;
    api = rig.api!;
    // VIPs in the lab's own /24, above the addresses host-local hands out to its few pods
    const base = lab.node.subnet.replace(/\.0\/24$/, '');
    [webVip, waypointVip] = [`${base}.200`, `${base}.201`];
    [client, server, waypoint] = await Promise.all(['client', 'server', 'waypoint'].map((n) => lab.addPod(n)));
    wpNs = openPath(waypoint.netnsPath);
    // the shop namespace sends its services' traffic to the waypoint "waypoint" (service traffic, istiod's default)
    api.apply('namespaces', { metadata: { name: 'shop', labels: { 'istio.io/use-waypoint': 'waypoint' } } });
    api.apply('namespaces', { metadata: { name: 'default' } });
    api.apply('gatewayclasses', { metadata: { name: 'istio-waypoint' } });
    api.apply('gateways', {
      metadata: { name: 'waypoint', namespace: 'shop' },
      spec: { gatewayClassName: 'istio-waypoint', listeners: [{ name: 'mesh', port: 15008, protocol: 'HBONE' }] },
      status: { addresses: [{ type: 'Hostname', value: 'waypoint.shop.svc.cluster.local' }] },
    } as never);
    const pods: [LabPod, string, string, Record<string, string>, boolean][] = [
      [client, 'default', 'sleep', {}, true],
      [server, 'shop', 'web', { app: 'web' }, true],
      // the waypoint runs outside the mesh's capture, as Istio's waypoints do
      [waypoint, 'shop', 'waypoint', { 'gateway.networking.k8s.io/gateway-name': 'waypoint' }, false],
    ];
    for (const [p, ns, sa, labels, mesh] of pods) {
      const o = api.apply('pods', {
        metadata: { name: p.name, namespace: ns, labels, annotations: mesh ? { 'ambient.istio.io/redirection': 'enabled' } : {} },
        spec: { nodeName: 'node1', serviceAccountName: sa },
        status: { phase: 'Running', podIP: p.ip, podIPs: [{ ip: p.ip }] },
      } as never);
      uids[p.name] = o.metadata.uid!;
    }
    const svc = (name: string, vip: string, port: number, target: number, pod: LabPod, labels: Record<string, string> = {}): void => {
      api.apply('services', { metadata: { name, namespace: 'shop', labels }, spec: { clusterIP: vip, clusterIPs: [vip], ports: [{ name: 'p', port, protocol: 'TCP', targetPort: target }] } } as never);
      api.apply('endpointslices', {
        metadata: { name: `${name}-1`, namespace: 'shop', labels: { 'kubernetes.io/service-name': name } },
        addressType: 'IPv4', ports: [{ name: 'p', port: target, protocol: 'TCP' }],
        endpoints: [{ addresses: [pod.ip], targetRef: { kind: 'Pod', name: pod.name, namespace: 'shop', uid: uids[pod.name] } }],
      } as never);
    };
    svc('web', webVip, 80, 8080, server);
    svc('waypoint', waypointVip, 15008, 15008, waypoint, { 'gateway.istio.io/managed': 'istio.io-mesh-controller' });
    const kc = new k8s.KubeConfig();
    kc.loadFromString(api.kubeconfig());
    source = new KubeStateSource(kc, state, TD, { autoAllowWaypointPolicy: true });
    await source.start();
    zt = await rig.serve(state, { trustDomain: TD, level: 'silent' });
    // the client and the server are in the mesh; the waypoint runs outside the mesh's capture
    await rig.servePod(client, { uid: uids.client!, name: 'client', namespace: 'default', serviceAccount: 'sleep' });
    await rig.servePod(server, { uid: uids.server!, name: 'server', namespace: 'shop', serviceAccount: 'web' });
    // the test's CA is the proxy's (the same cacerts directory): the waypoint's certificate comes from it
    await startFakeWaypoint(new CertManager(await LocalCa.open(rig.p('ca'), TD)));
    sh = { client: await lab.shell(client.netnsPath, { inCgroup: true }), server: await lab.shell(server.netnsPath, { inCgroup: true }) };
    await sh.server.listen({ port: 8080, tag: 'server' });
    await until('the waypoint in the state', () => state.snapshot.byVip.get(webVip)?.waypoint !== undefined && state.snapshot.byIp.get(server.ip)?.authorizationPolicies !== undefined);
  }, 60_000);

  afterAll(async () => {
    wpServer?.close();
    wpNs?.close();
    source?.stop();
    await rig?.destroy();
  });

  it('sends a captured connection to the service through the waypoint, with the service VIP:port as :authority', async () => {
    const r = await sh.client.connect({ host: webVip, port: 80, send: 'via-waypoint', timeoutMs: 5000 });
    // answered by the app: the waypoint forwarded it and the server admitted the waypoint
    expect(r.ok && r.reply).toBe('server:via-waypoint');
    expect(seen).toEqual([{ authority: `${webVip}:80`, peer: `spiffe://${TD}/ns/default/sa/sleep` }]);
    const accepted = await sh.server.accepted((await sh.server.listenerByTag('server')).id);
    // the app sees the waypoint's address: the waypoint opened the last hop
    expect(accepted.at(-1)!.peer.host).toBe(waypoint.ip);
  });

  it("refuses at the destination a connection that goes around the waypoint (straight to the pod): istiod's implicitWaypointPolicy, enforced by ztunnel's assert_rbac", async () => {
    const listener = (await sh.server.listenerByTag('server')).id;
    const before = (await sh.server.accepted(listener)).length;
    const seenBefore = seen.length;
    const r = await sh.client.connect({ host: server.ip, port: 8080, send: 'around', timeoutMs: 3000 });
    expect(r.ok ? r.reply : r.error).not.toMatch(/^server:/);
    expect((await sh.server.accepted(listener)).length).toBe(before);
    expect(seen.length).toBe(seenBefore); // workload-addressed, and the waypoint is for services only: it was not asked
    // the server's side counted it denied by policy, from the client's identity
    const denied = /^istio_tcp_connections_closed_total\{reporter="destination",.*source_principal="spiffe:\/\/cluster\.local\/ns\/default\/sa\/sleep".*response_flags="DENY"/m;
    await until('the denial counted at the destination', async () => denied.test(await zt.telemetry.registry.metrics()));
  });

  it('fails closed when the waypoint has no instance: the connection is refused, never sent direct', async () => {
    const listener = (await sh.server.listenerByTag('server')).id;
    const before = (await sh.server.accepted(listener)).length;
    api.delete('pods', 'shop', 'waypoint');
    await until('the waypoint pod gone from the state', () => !state.snapshot.byIp.has(waypoint.ip));
    expect(state.snapshot.byVip.get(webVip)?.waypoint).toBeDefined(); // the Gateway still names it
    const r = await sh.client.connect({ host: webVip, port: 80, send: 'no-waypoint', timeoutMs: 3000 });
    expect(r.ok ? r.reply : r.error).not.toMatch(/^server:/);
    expect((await sh.server.accepted(listener)).length).toBe(before);
  });
});
