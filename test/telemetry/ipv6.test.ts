/**
 * Telemetry of IPv6 and dual-stack connections (issue 18): the access log writes every address as
 * Rust's SocketAddr does (`[addr]:port`, an IPv4-mapped one as IPv4: ztunnel logs canonical
 * addresses, src/socket.rs to_canonical), and a dual-stack workload is named in the labels
 * whichever of its addresses the connection used (ztunnel finds workloads by any of their IPs).
 */
import { describe, expect, it } from 'vitest';
import type { ConnContext, ConnRecord } from '../../ts/proxy/hooks.js';
import { parseLocalConfig } from '../../ts/state/localconfig.js';
import { StateSnapshot } from '../../ts/state/store.js';
import { describe as describeConn } from '../../ts/telemetry/labels.js';
import { completeLine, earlyDenyLine } from '../../ts/telemetry/accesslog.js';
import { MeshError } from '../../ts/util/errors.js';

const snap = new StateSnapshot(parseLocalConfig(`
workloads:
  - {uid: u-sleep, name: sleep-0, workloadName: sleep, namespace: default, serviceAccount: sleep, workloadIps: ["10.0.0.1", "fd00:200::1"], protocol: HBONE}
  - {uid: u-web, name: web-0, workloadName: web, namespace: shop, serviceAccount: web, workloadIps: ["10.0.0.2", "fd00:200::2"], protocol: HBONE,
     services: {"shop/web.shop.svc.cluster.local": {80: 8080}}}
services:
  - {name: web, namespace: shop, hostname: web.shop.svc.cluster.local, vips: ["/10.96.0.10", "/fd00:200::96:10"], ports: {80: 8080}, ipFamilies: Dual}
`));
const SLEEP = 'spiffe://cluster.local/ns/default/sa/sleep';
const WEB = 'spiffe://cluster.local/ns/shop/sa/web';
const pod = { uid: 'u-sleep', name: 'sleep-0', namespace: 'default' };
const rec = (ctx: ConnContext): ConnRecord => ({ ...ctx, startedAt: 0, durationMs: 3, bytesSent: 5, bytesReceived: 7, outcome: 'ok', path: 'userspace', kernelBytes: 0 });

describe('IPv6 in the access log and labels', () => {
  const out6: ConnContext = {
    direction: 'outbound', transport: 'hbone', src: { ip: 'fd00:200::1', port: 40000, identity: SLEEP }, dst: { ip: 'fd00:200::2', port: 8080 },
    via: { ip: 'fd00:200::2', port: 15008 }, pod, service: { hostname: 'web.shop.svc.cluster.local', name: 'web', namespace: 'shop' }, traceId: 'abc',
  };

  it('writes IPv6 addresses bracketed, and names both workloads found by their IPv6 addresses', () => {
    const line = completeLine(describeConn(snap, out6), rec(out6), '-');
    expect(line.fields).toMatchObject({
      'src.addr': '[fd00:200::1]:40000', 'src.workload': 'sleep-0', 'dst.addr': '[fd00:200::2]:15008', 'dst.hbone_addr': '[fd00:200::2]:8080',
      'dst.workload': 'web-0', 'dst.service': 'web.shop.svc.cluster.local',
    });
    expect(describeConn(snap, out6).labels).toMatchObject({ source_workload: 'sleep', destination_workload: 'web', destination_service_name: 'web' });
  });

  it("writes the inbound span's peer bracketed", () => {
    const in6: ConnContext = { ...out6, direction: 'inbound', dst: { ip: 'fd00:200::2', port: 8080, identity: WEB }, pod: { uid: 'u-web', name: 'web-0', namespace: 'shop' } };
    expect(completeLine(describeConn(snap, in6), rec(in6), '-').fields).toMatchObject({ inbound: { id: 'abc', peer: '[fd00:200::1]:40000' } });
  });

  it('writes an IPv4-mapped address as the IPv4 address it stands for, never ::ffff:', () => {
    const mapped: ConnContext = { ...out6, src: { ip: '::ffff:10.0.0.1', port: 40000, identity: SLEEP }, dst: { ip: '::ffff:10.0.0.2', port: 8080 }, via: { ip: '::ffff:10.0.0.2', port: 15008 } };
    expect(completeLine(describeConn(snap, mapped), rec(mapped), '-').fields).toMatchObject({ 'src.addr': '10.0.0.1:40000', 'dst.addr': '10.0.0.2:15008', 'dst.hbone_addr': '10.0.0.2:8080' });
  });

  it('writes a refused IPv6 connection bracketed ("connection failed")', () => {
    const f = earlyDenyLine({ direction: 'outbound', src: { ip: 'fd00:200::1', port: 40000 }, dst: { ip: 'fd00:200::9', port: 15001 }, error: new MeshError('INPOD_ERR_SELF_CALL', 'self call') });
    expect(f).toMatchObject({ 'src.addr': '[fd00:200::1]:40000', 'dst.addr': '[fd00:200::9]:15001', code: 'INPOD_ERR_SELF_CALL' });
  });
});
