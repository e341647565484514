/**
 * WDS resources into the proxy's state types, as ztunnel converts them (src/state/workload.rs
 * `TryFrom<XdsWorkload>`, `byte_to_ip`, `GatewayAddress`; src/state/service.rs
 * `TryFrom<&XdsService>`; src/rbac.rs `TryFrom<XdsRbac>`), and refused where ztunnel refuses, or
 * where it would read an unknown or malformed value as something else (ts/xds/convert.ts).
 * Every resource goes through the wire: encoded, decoded, converted.
 */
import { describe, expect, it } from 'vitest';
import { addressFromXds, authorizationFromXds, bytesToIp, type XAddress, type XAuthorization } from '../../ts/xds/convert.js';
import { T, decodePlain, encodePlain } from '../../ts/xds/proto.js';
import { ipBytes } from '../fixtures/istiod/resources.js';

const address = (a: object) => addressFromXds(decodePlain<XAddress>(T.address, encodePlain(T.address, a)));
const authorization = (a: object) => authorizationFromXds(decodePlain<XAuthorization>(T.authorization, encodePlain(T.authorization, a)));
const workload = (o: object) => address({ workload: { uid: 'u', name: 'w', namespace: 'ns', addresses: [ipBytes('10.0.0.1')], ...o } });
const service = (o: object) => address({ service: { name: 's', namespace: 'ns', hostname: 's.ns.svc.cluster.local', ...o } });
const policy = (m: object, o: object = {}) => authorization({ name: 'p', namespace: 'ns', scope: 1, action: 1, rules: [{ clauses: [{ matches: [m] }] }], ...o });

describe('WDS workloads', () => {
  it("takes ztunnel's defaults for what istiod leaves out: trust domain cluster.local, service account default, cluster Kubernetes, capacity 1, TCP, healthy", () => {
    expect(workload({})).toEqual({
      kind: 'workload',
      workload: {
        uid: 'u', name: 'w', namespace: 'ns', serviceAccount: 'default', trustDomain: 'cluster.local', workloadIps: ['10.0.0.1'], protocol: 'TCP',
        node: '', network: '', services: {}, labels: {}, healthy: true, networkMode: 'Standard', workloadName: '', workloadType: 'deployment',
        canonicalName: '', canonicalRevision: '', hostname: '', nativeTunnel: false, authorizationPolicies: [], clusterId: 'Kubernetes',
        locality: { region: '', zone: '', subzone: '' }, capacity: 1,
      },
    });
  });

  it('reads waypoints by address or hostname, the application tunnel, capacity, status and the network mode', () => {
    const w = workload({
      waypoint: { address: { network: 'net1', address: ipBytes('10.0.0.50') }, hbone_mtls_port: 15008 },
      network_gateway: { hostname: { namespace: 'istio-system', hostname: 'eastwest.example' }, hbone_mtls_port: 15009 },
      application_tunnel: { protocol: 1, port: 15088 }, capacity: { value: 3 }, status: 1, network_mode: 1, workload_type: 2, tunnel_protocol: 1,
    });
    expect(w).toMatchObject({
      workload: {
        waypoint: { network: 'net1', address: '10.0.0.50', hboneMtlsPort: 15008 },
        networkGateway: { address: '', network: '', hostname: { namespace: 'istio-system', hostname: 'eastwest.example' }, hboneMtlsPort: 15009 },
        applicationTunnel: { protocol: 'PROXY', port: 15088 }, capacity: 3, healthy: false, networkMode: 'HostNetwork', workloadType: 'pod', protocol: 'HBONE',
      },
    });
  });

  it.each([
    ['IPv4', [10, 1, 2, 3], '10.1.2.3'],
    ['IPv6, RFC 5952 compressed', [0xfd, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 'fd00:200::1'],
    ['IPv6, the first longest zero run', [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1], '2001:db8::1:0:0:1'],
    ['IPv6 without zero runs', [0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7, 0, 8], '1:2:3:4:5:6:7:8'],
    ['IPv4-mapped IPv6', [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1], '::ffff:10.0.0.1'],
  ])('writes addresses as text (%s)', (_n, bytes, text) => {
    expect(bytesToIp('a', Uint8Array.from(bytes))).toBe(text);
  });

  it.each<[string, object, RegExp]>([
    ['an address of 5 bytes (byte_to_ip)', { addresses: [Buffer.from([1, 2, 3, 4, 5])] }, /^workload\.addresses\[0\]: an IP address is 4 or 16 bytes, got 5$/],
    ['legacy Istio mTLS, which ztunnel cannot send', { tunnel_protocol: 2 }, /^workload\.tunnel_protocol: unsupported tunnel protocol: legacy istio mtls/],
    ['an unknown tunnel protocol', { tunnel_protocol: 9 }, /^workload\.tunnel_protocol: 9 is not a value of TunnelProtocol this proxy knows/],
    ['an unknown status', { status: 5 }, /^workload\.status: 5 is not a value of WorkloadStatus/],
    ['an unknown network mode', { network_mode: 4 }, /^workload\.network_mode: 4 is not a value of NetworkMode/],
    ['an unknown workload type (ztunnel reads it as a Deployment)', { workload_type: 8 }, /^workload\.workload_type: 8 is not a value of WorkloadType/],
    ['an unknown application tunnel protocol', { application_tunnel: { protocol: 3 } }, /^workload\.application_tunnel\.protocol: 3 is not/],
    ['a services key that is not namespace/hostname', { services: { 'web.svc': { ports: [] } } }, /^workload\.services\["web\.svc"\]: expected "namespace\/hostname"/],
    ['a service port above 65535 (ztunnel truncates it)', { services: { 'ns/h': { ports: [{ service_port: 70000, target_port: 80 }] } } }, /^workload\.services\["ns\/h"\]\.ports\[0\]\.service_port: a port is 0 to 65535, got 70000$/],
    ['a waypoint with neither hostname nor address', { waypoint: { hbone_mtls_port: 15008 } }, /^workload\.waypoint: a gateway address needs a hostname or an address/],
  ])('refuses %s, naming the field', (_n, o, message) => {
    expect(() => workload(o)).toThrow(message);
  });

  it('refuses an Address that is neither a workload nor a service', () => {
    expect(() => address({})).toThrow(/^address: neither a workload nor a service/);
  });
});

describe('WDS services', () => {
  it('splits host addresses (VIPs) from ranges (a length shorter than the address), and reads ports, load balancing and IP families', () => {
    const s = service({
      addresses: [{ network: '', address: ipBytes('10.96.0.10') }, { network: 'n', address: ipBytes('10.96.0.11'), length: 32 }, { network: '', address: ipBytes('10.97.0.0'), length: 16 }],
      ports: [{ service_port: 80, target_port: 8080 }, { service_port: 443, target_port: 0 }],
      load_balancing: { routing_preference: [2, 1], mode: 2, health_policy: 1 }, ip_families: 3, visibility: 1, canonical: true,
      waypoint: { hostname: { namespace: 'ns', hostname: 'waypoint.ns.svc.cluster.local' }, hbone_mtls_port: 15008 },
      weighted_waypoints: [{ destination: { address: { network: '', address: ipBytes('10.0.0.60') }, hbone_mtls_port: 15008 }, weight: 9 }],
    });
    expect(s).toEqual({
      kind: 'service',
      service: {
        name: 's', namespace: 'ns', hostname: 's.ns.svc.cluster.local',
        vips: [{ network: '', address: '10.96.0.10' }, { network: 'n', address: '10.96.0.11' }], cidrVips: [{ network: '', cidr: '10.97.0.0/16' }],
        ports: { 80: 8080, 443: 0 }, subjectAltNames: [], canonical: true, visibility: 'Namespace', ipFamilies: 'Dual',
        loadBalancer: { routingPreferences: ['Zone', 'Region'], mode: 'Failover', healthPolicy: 'AllowAll' },
        waypoint: { address: '', network: '', hostname: { namespace: 'ns', hostname: 'waypoint.ns.svc.cluster.local' }, hboneMtlsPort: 15008 },
        weightedWaypoints: [{ destination: { network: '', address: '10.0.0.60', hboneMtlsPort: 15008 }, weight: 9 }],
      },
    });
  });

  it.each<[string, object, RegExp]>([
    ['an unknown visibility (ztunnel reads it as PUBLIC: fail open)', { visibility: 7 }, /^service\.visibility: 7 is not a value of Service\.Visibility/],
    ['UNSPECIFIED_SCOPE as a routing preference (ztunnel: invalid target)', { load_balancing: { routing_preference: [0] } }, /^service\.load_balancing\.routing_preference\[0\]: 0 is not a value of LoadBalancing\.Scope/],
    ['an unknown load-balancing mode', { load_balancing: { mode: 9 } }, /^service\.load_balancing\.mode: 9 is not/],
    ['an unknown IP family', { ip_families: 4 }, /^service\.ip_families: 4 is not a value of IPFamilies/],
    ['a prefix longer than the address', { addresses: [{ network: '', address: ipBytes('10.0.0.0'), length: 33 }] }, /^service\.addresses\[0\]\.length: a prefix of 10\.0\.0\.0 is 0 to 32, got 33$/],
    ['a weighted waypoint without a destination', { weighted_waypoints: [{ weight: 1 }] }, /^service\.weighted_waypoints\[0\]\.destination: missing/],
  ])('refuses %s, naming the field', (_n, o, message) => {
    expect(() => service(o)).toThrow(message);
  });
});

describe('WDS authorizations', () => {
  it("reads every match field into ztunnel's form, as the local config would give it", () => {
    const a = policy({
      namespaces: [{ exact: 'a' }], not_namespaces: [{ prefix: 'b' }], principals: [{ suffix: '/sa/c' }], not_principals: [{ presence: {} }],
      service_accounts: [{ namespace: 'ns', serviceAccount: 'sa' }], not_service_accounts: [{ namespace: 'x', serviceAccount: 'y' }],
      source_ips: [{ address: ipBytes('10.0.0.0'), length: 8 }], not_source_ips: [{ address: ipBytes('fd00::'), length: 64 }],
      destination_ips: [{ address: ipBytes('10.0.0.1'), length: 32 }], not_destination_ips: [{ address: ipBytes('10.0.0.2'), length: 32 }],
      destination_ports: [80], not_destination_ports: [9999],
    }, { dry_run: true, scope: 2, action: 0 });
    expect(a).toEqual({
      name: 'p', namespace: 'ns', scope: 'WorkloadSelector', action: 'Allow', dryRun: true,
      rules: [[[{
        namespaces: [{ Exact: 'a' }], notNamespaces: [{ Prefix: 'b' }], principals: [{ Suffix: '/sa/c' }], notPrincipals: [{ Presence: [] }],
        serviceAccounts: [{ namespace: 'ns', serviceAccount: 'sa' }], notServiceAccounts: [{ namespace: 'x', serviceAccount: 'y' }],
        sourceIps: ['10.0.0.0/8'], notSourceIps: ['fd00::/64'], destinationIps: ['10.0.0.1/32'], notDestinationIps: ['10.0.0.2/32'],
        destinationPorts: [80], notDestinationPorts: [9999],
      }]]],
    });
  });

  it.each<[string, object, object, RegExp]>([
    ['an unknown scope', {}, { scope: 3 }, /^authorization\.scope: 3 is not a value of Scope/],
    ['an unknown action (an AUDIT or CUSTOM policy is not ztunnel\'s to enforce)', {}, { action: 2 }, /^authorization\.action: 2 is not a value of Action/],
    ['a string match of no kind (ztunnel drops it: a DENY on it would deny nothing)', { not_principals: [{}] }, {}, /^authorization\.rules\[0\]\.clauses\[0\]\.matches\[0\]\.not_principals\[0\]: a string match with no exact/],
    ['an address of 3 bytes (ztunnel drops it)', { source_ips: [{ address: Buffer.from([10, 0, 0]), length: 8 }] }, {}, /matches\[0\]\.source_ips\[0\]\.address: an IP address is 4 or 16 bytes, got 3/],
    ['a prefix longer than the address (ztunnel drops it)', { destination_ips: [{ address: ipBytes('10.0.0.0'), length: 40 }] }, {}, /destinationIps\[0\]: expected an address range "ip\/length", got "10\.0\.0\.0\/40"/],
    ['a port above 65535 (ztunnel truncates it)', { not_destination_ports: [65536 + 22] }, {}, /notDestinationPorts\[0\]: expected a whole number from 0 to 65535, got 65558/],
  ])('refuses %s', (_n, m, o, message) => {
    expect(() => policy(m, o)).toThrow(message);
  });
});
