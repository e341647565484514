/**
 * ztunnel's local-config YAML (`workloads:`, `services:`, `policies:`), validated into MeshState.
 * Every error names the field path ("workloads[1].workloadIps[0]") and what was expected, so a
 * broken file says exactly where it is broken.
 */
import { isIP } from 'node:net';
import { MeshError } from '../util/errors.js';
import { translatePolicy } from '../policy/istio.js';
import { parseYaml } from '../util/yaml.js';
import { PORTS } from '../istio.js';
import type { MeshState, Policy, Service, Waypoint, Workload } from './types.js';

export const DEFAULT_TRUST_DOMAIN = 'cluster.local';

class Fields {
  constructor(readonly path: string, readonly v: Record<string, unknown>) {}
  fail(field: string, want: string): never {
    throw new MeshError('INPOD_ERR_CONFIG', `${this.path}.${field}: ${want}`);
  }
  str(field: string, dflt?: string): string {
    const x = this.v[field];
    if (x === undefined || x === null) {
      if (dflt !== undefined) return dflt;
      this.fail(field, 'required string is missing');
    }
    if (typeof x !== 'string' || x === '') this.fail(field, `expected a non-empty string, got ${JSON.stringify(x)}`);
    return x;
  }
  list(field: string): unknown[] {
    const x = this.v[field];
    if (x === undefined || x === null) return [];
    if (!Array.isArray(x)) this.fail(field, 'expected a list');
    return x;
  }
  map(field: string): Record<string, unknown> {
    const x = this.v[field];
    if (x === undefined || x === null) return {};
    if (typeof x !== 'object' || Array.isArray(x)) this.fail(field, 'expected a mapping');
    return x as Record<string, unknown>;
  }
}

function obj(path: string, v: unknown): Fields {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new MeshError('INPOD_ERR_CONFIG', `${path}: expected a mapping`);
  return new Fields(path, v as Record<string, unknown>);
}

function ip(path: string, v: unknown): string {
  if (typeof v !== 'string' || !isIP(v)) throw new MeshError('INPOD_ERR_CONFIG', `${path}: expected an IP address, got ${JSON.stringify(v)}`);
  return v;
}

/** "network/ip" or a bare ip -> the ip */
function networkAddress(path: string, v: unknown): string {
  if (typeof v !== 'string') throw new MeshError('INPOD_ERR_CONFIG', `${path}: expected "network/ip", got ${JSON.stringify(v)}`);
  const slash = v.lastIndexOf('/');
  return ip(path, slash >= 0 ? v.slice(slash + 1) : v);
}

function port(path: string, v: unknown, allowZero = false): number {
  const n = typeof v === 'string' ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < (allowZero ? 0 : 1) || n > 65535) {
    throw new MeshError('INPOD_ERR_CONFIG', `${path}: expected a port number, got ${JSON.stringify(v)}`);
  }
  return n;
}

function portMap(path: string, m: Record<string, unknown>): Record<number, number> {
  const out: Record<number, number> = {};
  for (const [k, v] of Object.entries(m)) out[port(`${path}.${k} (key)`, k)] = port(`${path}.${k}`, v, true);
  return out;
}

function waypoint(path: string, v: unknown): Waypoint | undefined {
  if (v === undefined || v === null) return undefined;
  const f = obj(path, v);
  const dest = f.v.destination ?? f.v.address;
  return { address: networkAddress(`${path}.destination`, dest), hboneMtlsPort: port(`${path}.hboneMtlsPort`, f.v.hboneMtlsPort ?? PORTS.hbone) };
}

function workload(path: string, v: unknown): Workload {
  const f = obj(path, v);
  const ips = f.v.workloadIps ?? (f.v.workloadIp !== undefined ? [f.v.workloadIp] : []);
  if (!Array.isArray(ips) || ips.length === 0) f.fail('workloadIps', 'expected a non-empty list of IP addresses');
  const protocol = f.str('protocol', 'TCP');
  if (protocol !== 'HBONE' && protocol !== 'TCP') f.fail('protocol', `expected HBONE or TCP, got "${protocol}"`);
  const name = f.str('name');
  const namespace = f.str('namespace');
  const services: Record<string, Record<number, number>> = {};
  for (const [svc, ports] of Object.entries(f.map('services'))) {
    services[svc] = portMap(`${path}.services["${svc}"]`, obj(`${path}.services["${svc}"]`, ports ?? {}).v);
  }
  const labels: Record<string, string> = {};
  for (const [k, val] of Object.entries(f.map('labels'))) labels[k] = String(val);
  const status = f.str('status', 'Healthy');
  return {
    uid: f.str('uid', `${namespace}/${name}`),
    name,
    namespace,
    serviceAccount: f.str('serviceAccount', 'default'),
    trustDomain: f.str('trustDomain', DEFAULT_TRUST_DOMAIN),
    workloadIps: (ips as unknown[]).map((x, i) => ip(`${path}.workloadIps[${i}]`, x)),
    protocol: protocol as Workload['protocol'],
    node: f.str('node', ''),
    network: f.str('network', ''),
    services,
    waypoint: waypoint(`${path}.waypoint`, f.v.waypoint),
    labels,
    healthy: status === 'Healthy',
    ...telemetryFields(f),
  };
}

/**
 * ztunnel's Workload fields telemetry reports (src/state/workload.rs: workloadName,
 * workloadType, canonicalName, canonicalRevision, clusterId, locality): optional strings, empty
 * allowed (reported as "unknown").
 */
function telemetryFields(f: Fields): Partial<Workload> {
  const opt = (o: Fields, k: string): string | undefined => {
    const x = o.v[k];
    if (x === undefined || x === null) return undefined;
    if (typeof x !== 'string') o.fail(k, `expected a string, got ${JSON.stringify(x)}`);
    return x;
  };
  const out: Partial<Workload> = {};
  for (const k of ['workloadName', 'workloadType', 'canonicalName', 'canonicalRevision', 'clusterId'] as const) {
    const v = opt(f, k);
    if (v !== undefined) out[k] = v;
  }
  if (f.v.locality !== undefined && f.v.locality !== null) {
    const l = obj(`${f.path}.locality`, f.v.locality);
    out.locality = { region: opt(l, 'region') ?? '', zone: opt(l, 'zone') ?? '', subzone: opt(l, 'subzone') ?? '' };
  }
  return out;
}

function service(path: string, v: unknown): Service {
  const f = obj(path, v);
  return {
    name: f.str('name'),
    namespace: f.str('namespace'),
    hostname: f.str('hostname'),
    vips: f.list('vips').map((x, i) => networkAddress(`${path}.vips[${i}]`, x)),
    ports: portMap(`${path}.ports`, f.map('ports')),
    subjectAltNames: f.list('subjectAltNames').map((x, i) => {
      if (typeof x !== 'string') throw new MeshError('INPOD_ERR_CONFIG', `${path}.subjectAltNames[${i}]: expected a string`);
      return x;
    }),
    waypoint: waypoint(`${path}.waypoint`, f.v.waypoint),
  };
}

/**
 * An AuthorizationPolicy in Istio's Kubernetes shape (metadata/spec) or flat (name/namespace/spec,
 * dryRun), kept as written. A field the proxy does not know or a malformed value refuses the file,
 * naming the field, as ztunnel refuses unknown fields in its local config; what is valid but not
 * enforced at the pod (HTTP attributes, targetRef, AUDIT, CUSTOM) is reported when it is applied.
 */
function policy(path: string, v: unknown): Policy {
  const f = obj(path, v);
  const meta = f.v.metadata === undefined ? f : obj(`${path}.metadata`, f.v.metadata);
  meta.str('name');
  meta.str('namespace');
  const bad = translatePolicy(f.v).problems[0];
  if (bad) throw new MeshError('INPOD_ERR_CONFIG', `${path}.${bad.field}: ${bad.why}`);
  return f.v;
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
  const doc = parseYaml(text, source);
  if (doc === null) {
    if (opts.empty === 'refuse') throw new MeshError('INPOD_ERR_CONFIG', `${source}: the file is empty (still being written?); to remove every workload write "workloads: []"`);
    return { workloads: [], services: [], policies: [] };
  }
  // ztunnel's oldest format was a bare list of workloads
  const root = Array.isArray(doc) ? new Fields(source, { workloads: doc }) : obj(source, doc);
  const state: MeshState = {
    workloads: root.list('workloads').map((w, i) => workload(`workloads[${i}]`, w)),
    services: root.list('services').map((s, i) => service(`services[${i}]`, s)),
    policies: root.list('policies').map((p, i) => policy(`policies[${i}]`, p)),
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
