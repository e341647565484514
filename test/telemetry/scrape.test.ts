/**
 * A real proxy process (`inpod ztunnel --manifests DIR`, pods handed over ZDS under the eBPF
 * backend) after real traffic: its /metrics carries ztunnel's series with exactly ztunnel's
 * traffic labels, filled from the workload state as istiod fills ztunnel's (the pods' owners and
 * labels, their node's topology), and its access log ztunnel's fields and messages.
 *
 * The lists below are upstream's, written out here so that a change on either side shows:
 * istio/ztunnel at main (62d8265), src/proxy/metrics.rs lines 258-311 (CommonTrafficLabels and
 * the LocalityLabels it flattens in) and 352-416 (Metrics::new), src/metrics.rs lines 34-37 (the
 * "istio" prefix), src/metrics/meta.rs lines 30-45 (istio_build), src/inpod/metrics.rs lines
 * 27-51 with src/app.rs lines 352-362 (workload_manager_*, no prefix).
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type LabPod, type PodShell, until } from '../netns/lab.js';
import { Rig } from '../netns/rig.js';

/** ztunnel's CommonTrafficLabels fields and LocalityLabels, in its order (src/proxy/metrics.rs 258-311). */
const ZTUNNEL_TRAFFIC_LABELS = [
  'reporter',
  'source_workload', 'source_canonical_service', 'source_canonical_revision', 'source_workload_namespace',
  'source_principal', 'source_app', 'source_version', 'source_cluster',
  'destination_service', 'destination_service_namespace', 'destination_service_name',
  'destination_workload', 'destination_canonical_service', 'destination_canonical_revision', 'destination_workload_namespace',
  'destination_principal', 'destination_app', 'destination_version', 'destination_cluster',
  'request_protocol', 'response_flags', 'connection_security_policy',
  'source_region', 'source_zone', 'destination_region', 'destination_zone',
];

/** The families ztunnel registers with these labels (src/proxy/metrics.rs 352-416), as a scrape names them. */
const ZTUNNEL_TRAFFIC_SERIES = [
  'istio_tcp_connections_opened_total', 'istio_tcp_connections_closed_total', 'istio_tcp_received_bytes_total',
  'istio_tcp_sent_bytes_total', 'istio_tcp_connections_failed_total',
];

/**
 * Every istio_ and workload_manager_ family a ztunnel serving pods registers, less those of
 * features inpod does not have: istio_on_demand_dns and istio_crl_* (src/proxy/metrics.rs), the
 * DNS proxy's istio_dns_* (src/dns/metrics.rs, registered only with the DNS proxy on) and the
 * xDS client's istio_xds_* (src/xds/metrics.rs: inpod has no xDS client yet).
 */
const ZTUNNEL_FAMILIES = [
  ...ZTUNNEL_TRAFFIC_SERIES.map((n) => n.replace(/_total$/, '')),
  'istio_tcp_sockets_open',
  'istio_build',
  'workload_manager_active_proxy_count', 'workload_manager_pending_proxy_count',
  'workload_manager_proxies_started', 'workload_manager_proxies_stopped',
];

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

function parse(text: string): { types: Map<string, string>; samples: Sample[] } {
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    const t = /^# TYPE (\S+) (\S+)/.exec(line);
    if (t) types.set(t[1]!, t[2]!);
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    samples.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return { types, samples };
}

describe('telemetry of a real proxy, as ztunnel reports it', () => {
  let rig: Rig;
  const log = (): string => rig.log;
  let metricsPort = 0;
  let client: LabPod, server: LabPod, outside: LabPod;
  let sh: Record<'client' | 'server' | 'outside', PodShell>;
  let vip = '';
  const SLEEP = 'spiffe://cluster.local/ns/default/sa/sleep';
  const WEB = 'spiffe://cluster.local/ns/shop/sa/web';

  const scrape = async (): Promise<Sample[]> => parse(await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text()).samples;
  const sum = (s: Sample[], name: string, want: Record<string, string>): number =>
    s.filter((x) => x.name === name && Object.entries(want).every(([k, v]) => x.labels[k] === v)).reduce((a, x) => a + x.value, 0);
  const lines = (): Record<string, unknown>[] => log().split('\n').filter((l) => l.includes('"scope":"access"')).flatMap((l) => {
    try {
      return [JSON.parse(l) as Record<string, unknown>];
    } catch {
      return []; // a line still being written
    }
  });
  const complete = (): Record<string, unknown>[] => lines().filter((l) => l.msg === 'connection complete');

  beforeAll(async () => {
    rig = await Rig.create({ tag: 'sc' });
    const { lab } = rig;
    [client, server, outside] = await Promise.all(['client', 'server', 'outside'].map((n) => lab.addPod(n)));
    vip = `10.96.${lab.node.subnet.split('.')[2]}.10`;
    const manifests = rig.p('manifests');
    mkdirSync(manifests);
    const mesh = 'annotations: {ambient.istio.io/redirection: enabled}';
    // a Deployment's pod (its ReplicaSet named after the pod-template-hash), a StatefulSet's pod
    // with the canonical labels, and a pod outside the mesh; their node in region r1, zone z1
    writeFileSync(join(manifests, 'cluster.yaml'), `
apiVersion: v1
kind: Node
metadata: {name: node1, labels: {topology.kubernetes.io/region: r1, topology.kubernetes.io/zone: z1}}
---
apiVersion: v1
kind: Pod
metadata:
  {name: sleep-6d8f9-abcde, generateName: sleep-6d8f9-, namespace: default, uid: u-client, ${mesh},
   labels: {app: sleep, version: v1, pod-template-hash: 6d8f9},
   ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: sleep-6d8f9, uid: rs1, controller: true}]}
spec: {nodeName: node1, serviceAccountName: sleep}
status: {phase: Running, podIP: ${client.ip}}
---
apiVersion: v1
kind: Pod
metadata:
  {name: web-0, generateName: web-, namespace: shop, uid: u-server, ${mesh},
   labels: {service.istio.io/canonical-name: storefront, app.kubernetes.io/version: v2, app: ignored},
   ownerReferences: [{apiVersion: apps/v1, kind: StatefulSet, name: web, uid: ss1, controller: true}]}
spec: {nodeName: node1, serviceAccountName: web}
status: {phase: Running, podIP: ${server.ip}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: ${vip}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [${server.ip}], targetRef: {kind: Pod, name: web-0, uid: u-server}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-9999, namespace: shop}
spec: {action: DENY, rules: [{to: [{operation: {ports: ["9999"]}}]}]}
`);
    rig.startZds();
    metricsPort = (await rig.startProxy({ args: ['--manifests', manifests], ports: true, env: { ...process.env, INPOD_LOG_LEVEL: 'debug' } })).ports.metrics;
    await until('the proxy to connect over ZDS', () => rig.zdsReady >= 1, { timeoutMs: 20_000, context: log });
    for (const [p, name, ns, sa] of [[client, 'sleep-6d8f9-abcde', 'default', 'sleep'], [server, 'web-0', 'shop', 'web']] as const) {
      await rig.handOver(p, { uid: p === client ? 'u-client' : 'u-server', name, namespace: ns, serviceAccount: sa });
    }
    sh = {
      client: await lab.shell(client.netnsPath, { inCgroup: true }),
      server: await lab.shell(server.netnsPath, { inCgroup: true }),
      outside: await lab.shell(outside.netnsPath, { inCgroup: true }),
    };
    await sh.server.listen({ port: 8080, tag: 'web' });
    await sh.outside.listen({ port: 80, tag: 'outside' });
    await until('both pods served', async () => sum(await scrape(), 'workload_manager_active_proxy_count', {}) === 2, { context: log });
  }, 60_000);

  afterAll(async () => {
    await rig?.destroy();
  });

  it('after real traffic, every traffic series carries exactly ztunnel\'s labels, and the families are ztunnel\'s', async () => {
    const talk = async (from: PodShell, host: string, port: number, send: string): Promise<void> => {
      const r = await from.connect({ host, port, send, timeoutMs: 5000 });
      if (r.ok) await from.close(r.connId);
    };
    await talk(sh.client, vip, 80, 'via the service'); // HBONE, both ends report
    await talk(sh.client, outside.ip, 80, 'to the outside'); // passthrough
    await talk(sh.outside, server.ip, 8080, 'from the outside'); // plaintext inbound
    await talk(sh.client, server.ip, 9999, 'denied'); // HBONE, DENY at the destination
    await until('all six ends reported closed', async () => sum(await scrape(), 'istio_tcp_connections_closed_total', {}) >= 6, { context: log });
    const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    const { types, samples } = parse(text);
    expect([...types.keys()].filter((n) => /^(istio_|workload_manager_)/.test(n)).sort()).toEqual([...ZTUNNEL_FAMILIES].map((n) => (types.has(n) ? n : `${n}_total`)).sort());
    const traffic = samples.filter((s) => ZTUNNEL_TRAFFIC_SERIES.includes(s.name));
    expect(new Set(traffic.map((s) => s.name))).toEqual(new Set(ZTUNNEL_TRAFFIC_SERIES));
    for (const s of traffic) {
      expect(Object.keys(s.labels).sort(), `${s.name} ${JSON.stringify(s.labels)}`).toEqual([...ZTUNNEL_TRAFFIC_LABELS].sort());
      for (const [k, v] of Object.entries(s.labels)) expect(v, k).not.toBe('');
    }
  });

  it('fills the labels from the state as istiod fills ztunnel\'s workloads: owner, canonical labels, cluster, node locality, the service addressed', async () => {
    const s = await scrape();
    const viaService = { source_workload: 'sleep', destination_service_name: 'web', response_flags: '-' };
    const want = {
      source_workload: 'sleep', source_canonical_service: 'sleep', source_canonical_revision: 'v1', source_workload_namespace: 'default',
      source_principal: SLEEP, source_app: 'sleep', source_version: 'v1', source_cluster: 'Kubernetes',
      destination_service: 'web.shop.svc.cluster.local', destination_service_namespace: 'shop', destination_service_name: 'web',
      destination_workload: 'web', destination_canonical_service: 'storefront', destination_canonical_revision: 'v2',
      destination_workload_namespace: 'shop', destination_principal: WEB, destination_app: 'storefront', destination_version: 'v2',
      destination_cluster: 'Kubernetes', request_protocol: 'tcp', response_flags: '-', connection_security_policy: 'mutual_tls',
      source_region: 'r1', source_zone: 'z1', destination_region: 'r1', destination_zone: 'z1',
    };
    const opened = s.filter((x) => x.name === 'istio_tcp_connections_opened_total' && x.labels.destination_service_name === 'web' && x.labels.source_workload === 'sleep');
    expect(opened.map((x) => x.labels).sort((a, b) => a.reporter!.localeCompare(b.reporter!))).toEqual([
      { ...want, reporter: 'destination' },
      { ...want, reporter: 'source' },
    ]);
    const request = 'via the service'.length;
    const response = 'web:'.length + request;
    for (const reporter of ['source', 'destination']) {
      expect(sum(s, 'istio_tcp_received_bytes_total', { ...viaService, reporter }), reporter).toBe(request);
      expect(sum(s, 'istio_tcp_sent_bytes_total', { ...viaService, reporter }), reporter).toBe(response);
    }
  });

  it('writes "unknown" where ztunnel does: no source principal or destination outside the mesh, no source for a client outside it', async () => {
    const s = await scrape();
    const passthrough = s.find((x) => x.name === 'istio_tcp_connections_opened_total' && x.labels.reporter === 'source' && x.labels.connection_security_policy === 'unknown')!;
    expect(passthrough.labels).toMatchObject({ source_workload: 'sleep', source_principal: 'unknown', destination_workload: 'unknown',
      destination_principal: 'unknown', destination_service: 'unknown', destination_cluster: 'unknown', destination_region: 'unknown' });
    const plaintext = s.find((x) => x.name === 'istio_tcp_connections_opened_total' && x.labels.reporter === 'destination' && x.labels.connection_security_policy === 'unknown')!;
    expect(plaintext.labels).toMatchObject({ source_workload: 'unknown', source_workload_namespace: 'unknown', source_principal: 'unknown',
      destination_workload: 'web', destination_principal: WEB, destination_service_name: 'web' });
  });

  it('counts a denied connection closed and failed with DENY at both ends, its bytes (none) under "-"', async () => {
    const s = await scrape();
    for (const reporter of ['source', 'destination']) {
      const denied = { reporter, response_flags: 'DENY', source_workload: 'sleep', destination_workload: 'web' };
      expect(sum(s, 'istio_tcp_connections_closed_total', denied), reporter).toBe(1);
      expect(sum(s, 'istio_tcp_connections_failed_total', denied), reporter).toBe(1);
      expect(sum(s, 'istio_tcp_connections_failed_total', { reporter, response_flags: '-' }), reporter).toBe(0);
    }
    expect(s.filter((x) => /^istio_tcp_\w+_bytes_total$/.test(x.name) && x.labels.response_flags !== '-')).toEqual([]);
  });

  it('reports its build and the pods it serves, and open sockets while a connection is open', async () => {
    const s = await scrape();
    const version = (JSON.parse(readFileSync(join(__dirname, '..', '..', 'package.json'), 'utf8')) as { version: string }).version;
    expect(s.filter((x) => x.name === 'istio_build')).toEqual([{ name: 'istio_build', labels: { component: 'ztunnel', tag: version }, value: 1 }]);
    expect(sum(s, 'workload_manager_proxies_started_total', {})).toBe(2);
    expect(sum(s, 'workload_manager_pending_proxy_count', {})).toBe(0);
    expect(sum(s, 'workload_manager_proxies_stopped_total', {})).toBe(0);
    const r = await sh.client.connect({ host: outside.ip, port: 80, send: 'held', timeoutMs: 5000 });
    expect(r.ok).toBe(true);
    await until('the held socket counted open', async () => sum(await scrape(), 'istio_tcp_sockets_open', { reporter: 'source' }) === 1);
    if (r.ok) await sh.client.close(r.connId);
    await until('the socket counted closed', async () => sum(await scrape(), 'istio_tcp_sockets_open', { reporter: 'source' }) === 0);
  });

  it('logs each connection in ztunnel\'s fields and messages: "connection opened" (debug), "connection complete", "connection failed"', async () => {
    const out = complete().find((l) => l.direction === 'outbound' && l['dst.service'] === 'web.shop.svc.cluster.local' && l.bytes_sent === 'via the service'.length)!;
    expect(out).toMatchObject({
      scope: 'access', level: 30, 'src.addr': expect.stringMatching(new RegExp(`^${client.ip.replace(/\./g, '\\.')}:\\d+$`)),
      'src.workload': 'sleep-6d8f9-abcde', 'src.namespace': 'default', 'src.identity': SLEEP, 'src.cluster': 'Kubernetes',
      'dst.addr': `${server.ip}:15008`, 'dst.hbone_addr': `${server.ip}:8080`, 'dst.workload': 'web-0', 'dst.namespace': 'shop',
      'dst.identity': WEB, 'dst.cluster': 'Kubernetes', bytes_recv: 'web:via the service'.length, duration: expect.stringMatching(/^\d+ms$/),
    });
    const inb = complete().find((l) => l.direction === 'inbound' && l['dst.service'] === 'web.shop.svc.cluster.local' && l['src.identity'] === SLEEP && !l.error)!;
    // the destination's view: it sent the response and received the request
    expect(inb).toMatchObject({ 'dst.addr': `${server.ip}:15008`, 'dst.hbone_addr': `${server.ip}:8080`, bytes_sent: 'web:via the service'.length, bytes_recv: 'via the service'.length });
    // both proxies log the connection in its span, under the trace id its CONNECT carried
    // (ztunnel outbound.rs info_span!("outbound", id), inbound.rs extract_traceparent)
    const id = (out.outbound as { id?: string } | undefined)?.id ?? '';
    expect(id).toMatch(/^[0-9a-f]{32}$/);
    await until('the inbound line under the same trace id', () => complete().some((l) => l.direction === 'inbound' && (l.inbound as { id?: string } | undefined)?.id === id), { context: log });
    const denied = complete().filter((l) => l.response_flags === 'DENY');
    expect(denied.map((l) => [l.direction, l.level])).toEqual(expect.arrayContaining([['inbound', 50], ['outbound', 50]]));
    expect(lines().filter((l) => l.msg === 'connection opened').length).toBeGreaterThanOrEqual(complete().length);
    // a CONNECT to the proxy's own port is refused before it is a connection: "connection failed"
    await sh.client.connect({ host: server.ip, port: 15020, send: 'x', timeoutMs: 3000 });
    await until('the early refusal\'s line', () => lines().some((l) => l.msg === 'connection failed'), { context: log });
    expect(lines().find((l) => l.msg === 'connection failed')).toMatchObject({ level: 40, direction: expect.any(String), 'src.addr': expect.any(String), 'dst.addr': expect.any(String), error: expect.any(String) });
  });
});
