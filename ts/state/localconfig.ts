/**
 * ztunnel's local config (`inpod ztunnel --config`), read as ztunnel reads it (src/xds.rs
 * `LocalConfig`, `LocalWorkload`; src/state/workload.rs `Workload`, `GatewayAddress`;
 * src/state/service.rs `Service`; src/rbac.rs `Authorization`, in ../policy/ztunnel.ts), into
 * MeshState. Every field those structs have is read and kept; a key they do not have is refused,
 * as serde's deny_unknown_fields refuses it; a field they require is required, with one
 * exception: a workload's `services` map may be left out (ztunnel requires it; inpod configs
 * have always omitted it). Defaults are ztunnel's (`network` '', `protocol` TCP, ...), except
 * `trustDomain` and `serviceAccount`, which name the workload's identity: left out, they are
 * cluster.local and default, as ztunnel fills them from xDS (its local config leaves them empty,
 * which its test CA signs and inpod's CA would not). Every error names the field's path
 * ("workloads[1].workloadIps[0]") and what was expected.
 */
import { Type, CORE_SCHEMA } from 'js-yaml';
import { MeshError } from '../util/errors.js';
import { Struct, Tagged, configError, ipAddr, list, oneOf, portMap, str, uint } from '../util/fields.js';
import { localAuthorization } from '../policy/ztunnel.js';
import { parseYaml } from '../util/yaml.js';
import type { GatewayAddress, MeshState, NetworkAddress, Service, ServiceEndpoint, Workload } from './types.js';

export const DEFAULT_TRUST_DOMAIN = 'cluster.local';

/** serde_yaml 0.9 writes a data-carrying enum variant as a YAML tag: ztunnel's StringMatch. */
const LOCAL_CONFIG_SCHEMA = CORE_SCHEMA.extend(
  [...['Exact', 'Prefix', 'Suffix'].map((t) => new Type(`!${t}`, { kind: 'scalar', construct: (d: unknown) => new Tagged(t, d ?? '') })),
    new Type('!Presence', { kind: 'sequence', construct: (d: unknown) => new Tagged('Presence', d ?? []) })],
);

const LOCAL_CONFIG = ['workloads', 'policies', 'services'];
const WORKLOAD = [
  'workloadIps', 'waypoint', 'networkGateway', 'protocol', 'networkMode', 'uid', 'name', 'namespace', 'trustDomain',
  'serviceAccount', 'network', 'workloadName', 'workloadType', 'canonicalName', 'canonicalRevision', 'hostname', 'node',
  'nativeTunnel', 'applicationTunnel', 'authorizationPolicies', 'status', 'clusterId', 'locality', 'capacity', 'services',
];
const SERVICE = [
  'name', 'namespace', 'hostname', 'vips', 'cidrVips', 'ports', 'endpoints', 'subjectAltNames', 'waypoint',
  'weightedWaypoints', 'loadBalancer', 'ipFamilies', 'canonical', 'visibility',
];

/** "network/ip" (NetworkAddress): the slash is required, the network may be empty. */
function networkAddress(path: string, v: unknown): NetworkAddress {
  const s = str(path, v);
  const slash = s.indexOf('/');
  if (slash < 0) throw configError(path, `expected "network/ip" ("/ip" on the default network), got ${JSON.stringify(s)}`);
  return { network: s.slice(0, slash), address: ipAddr(path, s.slice(slash + 1)) };
}

/** GatewayAddress: `destination` is "network/ip", else "namespace/hostname" (serde's untagged enum, in that order). */
function gatewayAddress(path: string, v: unknown): GatewayAddress {
  const f = new Struct(path, v, ['destination', 'hboneMtlsPort'], 'a gateway address');
  const dest = f.str('destination');
  const hboneMtlsPort = f.uint('hboneMtlsPort', 65535);
  const slash = dest.indexOf('/');
  if (slash < 0) throw configError(f.at('destination'), `expected "network/ip" or "namespace/hostname", got ${JSON.stringify(dest)}`);
  const [before, after] = [dest.slice(0, slash), dest.slice(slash + 1)];
  try {
    return { ...networkAddress(f.at('destination'), dest), hboneMtlsPort };
  } catch {
    return { address: '', network: '', hostname: { namespace: before, hostname: after }, hboneMtlsPort };
  }
}

function optional<T>(f: Struct, field: string, read: (path: string, v: unknown) => T): T | undefined {
  const x = f.opt(field);
  return x === undefined ? undefined : read(f.at(field), x);
}

function strings(path: string, v: unknown): string[] {
  return list(path, v, str);
}

function workload(path: string, v: unknown): Workload {
  const f = new Struct(path, v, WORKLOAD, 'a workload');
  // the required fields first, in the struct's order, so the first one missing is named as serde names it
  const workloadIps = list(f.at('workloadIps'), f.list('workloadIps', true), ipAddr);
  const namespace = f.str('namespace');
  const services: Record<string, Record<number, number>> = {};
  for (const [svc, ports] of Object.entries(f.map('services'))) services[svc] = portMap(`${f.at('services')}["${svc}"]`, ports);
  const tunnel = optional(f, 'applicationTunnel', (p, x) => {
    const t = new Struct(p, x, ['protocol', 'port'], 'an application tunnel');
    const port = t.has('port') ? t.uint('port', 65535) : undefined;
    return { protocol: t.oneOf('protocol', ['NONE', 'PROXY']), ...(port === undefined ? {} : { port }) };
  });
  const locality = optional(f, 'locality', (p, x) => {
    const l = new Struct(p, x, ['region', 'zone', 'subzone'], 'a locality');
    return { region: l.str('region'), zone: l.str('zone'), subzone: l.str('subzone') };
  });
  const w: Workload = {
    uid: f.str('uid', ''),
    name: f.str('name', ''),
    namespace,
    serviceAccount: f.str('serviceAccount', 'default'),
    trustDomain: f.str('trustDomain', DEFAULT_TRUST_DOMAIN),
    workloadIps,
    protocol: f.oneOf('protocol', ['TCP', 'HBONE'], 'TCP'),
    node: f.str('node', ''),
    network: f.str('network', ''),
    services,
    waypoint: optional(f, 'waypoint', gatewayAddress),
    labels: {},
    healthy: f.oneOf('status', ['Healthy', 'Unhealthy'], 'Healthy') === 'Healthy',
    networkGateway: optional(f, 'networkGateway', gatewayAddress),
    networkMode: f.oneOf('networkMode', ['Standard', 'HostNetwork'], 'Standard'),
    workloadName: f.str('workloadName', ''),
    workloadType: f.str('workloadType', ''),
    canonicalName: f.str('canonicalName', ''),
    canonicalRevision: f.str('canonicalRevision', ''),
    hostname: f.str('hostname', ''),
    nativeTunnel: f.bool('nativeTunnel', false),
    applicationTunnel: tunnel,
    authorizationPolicies: strings(f.at('authorizationPolicies'), f.list('authorizationPolicies')),
    clusterId: f.str('clusterId', ''),
    locality: locality ?? { region: '', zone: '', subzone: '' },
    capacity: f.uint('capacity', 4294967295, 1),
  };
  if (!w.waypoint) delete w.waypoint;
  if (!w.networkGateway) delete w.networkGateway;
  if (!w.applicationTunnel) delete w.applicationTunnel;
  return w;
}

function endpoint(path: string, v: unknown): ServiceEndpoint {
  const f = new Struct(path, v, ['workloadUid', 'port', 'status'], 'an endpoint');
  return { workloadUid: f.str('workloadUid'), port: portMap(f.at('port'), f.map('port', true)), status: f.oneOf('status', ['Healthy', 'Unhealthy']) };
}

function service(path: string, v: unknown): Service {
  const f = new Struct(path, v, SERVICE, 'a service');
  const endpoints: Record<string, ServiceEndpoint> = {};
  for (const [uid, ep] of Object.entries(f.map('endpoints'))) endpoints[uid] = endpoint(`${f.at('endpoints')}["${uid}"]`, ep);
  const s: Service = {
    name: f.str('name'),
    namespace: f.str('namespace'),
    hostname: f.str('hostname'),
    vips: list(f.at('vips'), f.list('vips', true), networkAddress),
    ports: portMap(f.at('ports'), f.map('ports', true)),
    subjectAltNames: strings(f.at('subjectAltNames'), f.list('subjectAltNames')),
    waypoint: optional(f, 'waypoint', gatewayAddress),
    cidrVips: list(f.at('cidrVips'), f.list('cidrVips'), (p, x) => {
      const c = new Struct(p, x, ['network', 'cidr'], 'a CIDR VIP');
      return { network: c.str('network'), cidr: c.str('cidr') };
    }),
    endpoints,
    weightedWaypoints: list(f.at('weightedWaypoints'), f.list('weightedWaypoints'), (p, x) => {
      const ww = new Struct(p, x, ['destination', 'weight'], 'a weighted waypoint');
      return { destination: gatewayAddress(ww.at('destination'), ww.map('destination', true)), weight: ww.uint('weight', 4294967295) };
    }),
    loadBalancer: optional(f, 'loadBalancer', (p, x) => {
      const lb = new Struct(p, x, ['routingPreferences', 'mode', 'healthPolicy'], 'a load balancer');
      return {
        routingPreferences: list(lb.at('routingPreferences'), lb.list('routingPreferences', true), (q, y) => oneOf(q, y, ['Region', 'Zone', 'Subzone', 'Node', 'Cluster', 'Network'] as const)),
        mode: lb.oneOf('mode', ['Standard', 'Strict', 'Failover', 'Passthrough']),
        healthPolicy: lb.oneOf('healthPolicy', ['OnlyHealthy', 'AllowAll']),
      };
    }),
    ipFamilies: f.has('ipFamilies') ? f.oneOf('ipFamilies', ['Dual', 'IPv4', 'IPv6']) : undefined,
    canonical: f.bool('canonical', false),
    visibility: f.oneOf('visibility', ['Public', 'Namespace'], 'Public'),
  };
  for (const k of ['waypoint', 'loadBalancer', 'ipFamilies'] as const) if (s[k] === undefined) delete s[k];
  return s;
}

export interface ParseOptions {
  /**
   * What an empty document (no content, or only comments) means: `none` (the default, as at
   * start) is a state with no workloads; `refuse` throws, as a reload must: an empty file is far
   * more often one being written, or truncated, than an operator removing every workload (who
   * writes `workloads: []`).
   */
  empty?: 'none' | 'refuse';
}

/** Parses and validates a local-config document. Throws MeshError INPOD_ERR_CONFIG naming the field. */
export function parseLocalConfig(text: string, source = 'config', opts: ParseOptions = {}): MeshState {
  const doc = parseYaml(text, source, LOCAL_CONFIG_SCHEMA);
  if (doc === null) {
    if (opts.empty === 'refuse') throw new MeshError('INPOD_ERR_CONFIG', `${source}: the file is empty (still being written?); to remove every workload write "workloads: []"`);
    return { workloads: [], services: [], policies: [], authorizations: [] };
  }
  if (Array.isArray(doc)) throw configError(source, 'expected a mapping with workloads, services and policies (a bare list of workloads is an old format ztunnel no longer reads)');
  const root = new Struct(source, doc, LOCAL_CONFIG, 'the local config');
  const state: MeshState = {
    workloads: list('workloads', root.list('workloads'), workload),
    services: list('services', root.list('services'), service),
    policies: [],
    authorizations: list('policies', root.list('policies'), localAuthorization),
  };
  const seen = new Map<string, string>();
  state.workloads.forEach((w, i) => {
    for (const a of w.workloadIps) {
      const prev = seen.get(a);
      if (prev) throw new MeshError('INPOD_ERR_CONFIG', `workloads[${i}].workloadIps: ${a} is also the address of ${prev}`);
      seen.set(a, `workloads[${i}] (${w.namespace}/${w.name})`);
    }
  });
  return state;
}
