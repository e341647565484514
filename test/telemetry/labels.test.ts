/**
 * The traffic labels of a connection and its access-log lines, derived as ztunnel derives them
 * (istio/ztunnel src/proxy/metrics.rs: CommonTrafficLabels with_derived_source / with_source /
 * with_destination / with_destination_service, ConnectionOpen as outbound.rs
 * conn_metrics_from_request, inbound.rs and inbound_passthrough.rs fill it, ConnectionResult's
 * "connection complete" and log_early_deny; src/proxy.rs guess_inbound_service).
 */
import { describe, expect, it } from 'vitest';
import type { ConnContext, ConnRecord } from '../../ts/proxy/hooks.js';
import { shopState } from './shop.js';
import { StateSnapshot } from '../../ts/state/store.js';
import { describe as describeConn, inboundService, TRAFFIC_LABELS } from '../../ts/telemetry/labels.js';
import { completeLine, connectionFields, earlyDenyLine } from '../../ts/telemetry/accesslog.js';
import { socketAddr } from '../../ts/util/sockaddr.js';
import { MeshError } from '../../ts/util/errors.js';

const snap = new StateSnapshot(shopState({ locality: true }));

const SLEEP = 'spiffe://cluster.local/ns/default/sa/sleep';
const WEB = 'spiffe://cluster.local/ns/shop/sa/web';
const webSvc = { hostname: 'web.shop.svc.cluster.local', name: 'web', namespace: 'shop' };

const outboundHbone: ConnContext = {
  direction: 'outbound', transport: 'hbone', src: { ip: '10.0.0.1', port: 40000, identity: SLEEP },
  dst: { ip: '10.0.0.2', port: 8080 }, via: { ip: '10.0.0.2', port: 15008 }, pod: { uid: 'u-sleep', name: 'sleep-7f-abc', namespace: 'default' }, service: webSvc,
};
const inboundHbone: ConnContext = {
  direction: 'inbound', transport: 'hbone', src: { ip: '10.0.0.1', port: 40000, identity: SLEEP },
  dst: { ip: '10.0.0.2', port: 8080, identity: WEB }, via: { ip: '10.0.0.2', port: 15008 }, pod: { uid: 'u-web', name: 'web-5d-xyz', namespace: 'shop' },
};

describe('traffic labels (ztunnel src/proxy/metrics.rs CommonTrafficLabels)', () => {
  it('has every label ztunnel writes, in its order, for every kind of connection', () => {
    for (const ctx of [outboundHbone, inboundHbone]) expect(Object.keys(describeConn(snap, ctx).labels)).toEqual([...TRAFFIC_LABELS]);
  });

  it('outbound over HBONE: source from the served pod, our identity proven, destination and the addressed service from the state', () => {
    expect(describeConn(snap, outboundHbone).labels).toEqual({
      reporter: 'source',
      source_workload: 'sleep', source_canonical_service: 'sleep', source_canonical_revision: 'v1', source_workload_namespace: 'default',
      source_principal: SLEEP, source_app: 'sleep', source_version: 'v1', source_cluster: 'Kubernetes',
      destination_service: 'web.shop.svc.cluster.local', destination_service_namespace: 'shop', destination_service_name: 'web',
      destination_workload: 'web', destination_canonical_service: 'web', destination_canonical_revision: 'v2', destination_workload_namespace: 'shop',
      destination_principal: WEB, destination_app: 'web', destination_version: 'v2', destination_cluster: 'Kubernetes',
      request_protocol: 'tcp', response_flags: '-', connection_security_policy: 'mutual_tls',
      source_region: 'r1', source_zone: 'z1', destination_region: 'unknown', destination_zone: 'unknown',
    });
  });

  it('outbound plain TCP: no source principal (nothing was proven), the destination workload\'s own identity, no service when a pod IP was addressed', () => {
    const l = describeConn(snap, { ...outboundHbone, transport: 'passthrough', dst: { ip: '10.0.0.3', port: 5432 }, via: undefined, service: undefined }).labels;
    expect(l).toMatchObject({
      source_principal: 'unknown', destination_workload: 'unknown', destination_workload_namespace: 'data',
      destination_principal: 'spiffe://cluster.local/ns/data/sa/db', destination_service: 'unknown', connection_security_policy: 'unknown',
      destination_canonical_service: 'unknown', destination_cluster: 'unknown',
    });
  });

  it('outbound to an address outside the mesh: every destination label unknown', () => {
    const l = describeConn(snap, { ...outboundHbone, transport: 'passthrough', dst: { ip: '192.0.2.7', port: 443 }, via: undefined, service: undefined }).labels;
    for (const k of TRAFFIC_LABELS.filter((n) => n.startsWith('destination_'))) expect(l[k], k).toBe('unknown');
  });

  it('outbound through a waypoint: the destination is the waypoint the tunnel goes to', () => {
    const l = describeConn(snap, { ...outboundHbone, dst: { ip: '10.0.0.3', port: 5432 }, via: { ip: '10.0.0.2', port: 15008 } }).labels;
    expect(l).toMatchObject({ destination_workload: 'web', destination_principal: WEB });
  });

  it('inbound over HBONE: the peer\'s proven identity, the source from its address, the served pod as destination, the service guessed from the port', () => {
    expect(describeConn(snap, inboundHbone).labels).toMatchObject({
      reporter: 'destination', source_workload: 'sleep', source_principal: SLEEP, source_workload_namespace: 'default',
      destination_workload: 'web', destination_principal: WEB, destination_service: 'web.shop.svc.cluster.local', destination_service_name: 'web',
      connection_security_policy: 'mutual_tls',
    });
  });

  it('inbound plaintext from outside the mesh: the source unknown, no principal, no mutual TLS', () => {
    const l = describeConn(snap, { ...inboundHbone, transport: 'plaintext', src: { ip: '192.0.2.9', port: 5555 }, via: undefined }).labels;
    expect(l).toMatchObject({ source_workload: 'unknown', source_workload_namespace: 'unknown', source_principal: 'unknown', source_region: 'unknown',
      destination_workload: 'web', connection_security_policy: 'unknown' });
  });

  it('a served pod missing from the state still reports its own namespace and (inbound) identity', () => {
    const pod = { uid: 'u-ghost', name: 'ghost', namespace: 'ns9' };
    expect(describeConn(snap, { ...outboundHbone, src: { ip: '10.9.9.9', port: 1, identity: 'spiffe://cluster.local/ns/ns9/sa/g' }, pod }).labels)
      .toMatchObject({ source_workload: 'unknown', source_workload_namespace: 'ns9', source_principal: 'spiffe://cluster.local/ns/ns9/sa/g' });
    expect(describeConn(snap, { ...inboundHbone, dst: { ip: '10.9.9.9', port: 80, identity: 'spiffe://cluster.local/ns/ns9/sa/g' }, pod }).labels)
      .toMatchObject({ destination_workload: 'unknown', destination_workload_namespace: 'ns9', destination_principal: 'spiffe://cluster.local/ns/ns9/sa/g' });
  });
});

describe('the service an inbound connection reached (ztunnel guess_inbound_service)', () => {
  const web = snap.byUid.get('u-web');
  it('is the one the client named when it is the destination\'s, else the first whose target port matches, else none', () => {
    expect(inboundService(snap, web, 1234, { hostname: 'admin.shop.svc.cluster.local', name: 'admin', namespace: 'shop' })?.name).toBe('admin');
    expect(inboundService(snap, web, 1234, { hostname: 'other.svc', name: 'other', namespace: 'shop' })).toBeUndefined();
    expect(inboundService(snap, web, 8080)?.name).toBe('web');
    expect(inboundService(snap, undefined, 8080)).toBeUndefined();
  });
});

describe('access-log lines (ztunnel ConnectionResult and log_early_deny)', () => {
  const rec = (ctx: ConnContext, over: Partial<ConnRecord> = {}): ConnRecord => ({
    ...ctx, startedAt: 0, durationMs: 12.4, bytesSent: 16, bytesReceived: 47, outcome: 'ok', ...over,
  });

  it('writes addresses as Rust\'s SocketAddr does', () => {
    expect(socketAddr({ ip: '10.0.0.1', port: 80 })).toBe('10.0.0.1:80');
    expect(socketAddr({ ip: 'fd00::1', port: 80 })).toBe('[fd00::1]:80');
    expect(socketAddr({ ip: '::ffff:10.0.0.1', port: 80 })).toBe('10.0.0.1:80');
  });

  it('"connection complete" outbound: ztunnel\'s fields, the tunnel as dst.addr and the app as dst.hbone_addr, request bytes sent', () => {
    const d = describeConn(snap, outboundHbone);
    const line = completeLine(d, rec(outboundHbone, { path: 'userspace', kernelBytes: 0 }), '-');
    expect(line.level).toBe('info');
    expect(line.fields).toEqual({
      'src.addr': '10.0.0.1:40000', 'src.workload': 'sleep-7f-abc', 'src.namespace': 'default', 'src.identity': SLEEP, 'src.cluster': 'Kubernetes',
      'dst.addr': '10.0.0.2:15008', 'dst.hbone_addr': '10.0.0.2:8080', 'dst.service': 'web.shop.svc.cluster.local', 'dst.workload': 'web-5d-xyz',
      'dst.namespace': 'shop', 'dst.identity': WEB, 'dst.cluster': 'Kubernetes',
      direction: 'outbound', bytes_sent: 16, bytes_recv: 47, duration: '12ms',
      transport: 'hbone', response_flags: '-', path: 'userspace', kernel_bytes: 0, pod: 'default/sleep-7f-abc',
    });
  });

  it('"connection complete" inbound: sent is the response (ztunnel unflips its counters for the log); a denial is an error with its reason', () => {
    const d = describeConn(snap, inboundHbone);
    expect(completeLine(d, rec(inboundHbone), '-').fields).toMatchObject({ direction: 'inbound', bytes_sent: 47, bytes_recv: 16 });
    const denied = completeLine(d, rec(inboundHbone, { bytesSent: 0, bytesReceived: 0, outcome: 'denied', error: 'no ALLOW policy matched (shop/x)' }), 'DENY');
    expect(denied).toMatchObject({ level: 'error', fields: { error: 'no ALLOW policy matched (shop/x)', response_flags: 'DENY' } });
  });

  it('leaves out what nobody knows, and identities without mutual TLS', () => {
    const plain: ConnContext = { ...inboundHbone, transport: 'plaintext', src: { ip: '192.0.2.9', port: 5555 }, via: undefined };
    const f = connectionFields(describeConn(snap, plain), plain);
    expect(f).toEqual({
      'src.addr': '192.0.2.9:5555', 'dst.addr': '10.0.0.2:8080', 'dst.service': 'web.shop.svc.cluster.local', 'dst.workload': 'web-5d-xyz',
      'dst.namespace': 'shop', 'dst.cluster': 'Kubernetes', direction: 'inbound',
    });
  });

  it('carries the connection\'s span as ztunnel\'s JSON log does (outbound.rs info_span!("outbound", id), inbound.rs info_span!("inbound", id, peer); telemetry.rs writes a span as an object under its name)', () => {
    const id = '4bf92f3577b34da6a3ce929d0e0e4736';
    expect(connectionFields(describeConn(snap, outboundHbone), { ...outboundHbone, traceId: id }).outbound).toEqual({ id });
    expect(connectionFields(describeConn(snap, inboundHbone), { ...inboundHbone, traceId: id }).inbound).toEqual({ id, peer: socketAddr(inboundHbone.src) });
    expect(connectionFields(describeConn(snap, outboundHbone), outboundHbone)).not.toHaveProperty('outbound');
    expect(earlyDenyLine({ direction: 'inbound', src: { ip: '10.0.0.1', port: 1 }, dst: { ip: '10.0.0.2', port: 15008 }, error: new Error('400: bad'), traceId: id }).inbound).toEqual({ id, peer: '10.0.0.1:1' });
  });

  it('"connection failed" for a connection refused before it was reported: addresses, direction, the error and its code', () => {
    expect(earlyDenyLine({ direction: 'outbound', src: { ip: '10.0.0.1', port: 1 }, dst: { ip: '10.96.0.99', port: 80 }, error: new MeshError('INPOD_ERR_NO_ROUTE', 'service x has no healthy endpoints') }))
      .toEqual({ 'src.addr': '10.0.0.1:1', 'dst.addr': '10.96.0.99:80', direction: 'outbound', error: 'service x has no healthy endpoints', code: 'INPOD_ERR_NO_ROUTE' });
  });
});
