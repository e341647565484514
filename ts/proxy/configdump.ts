/**
 * The admin's `/config_dump` in ztunnel's JSON (pure), so that `istioctl ztunnel-config` reads an
 * inpod proxy as it reads ztunnel. Upstream at the snapshots this follows: ztunnel src/admin.rs
 * `ConfigDump`, `CertsDump`, `CertDump`, `dump_certs`; src/state.rs `ProxyState`'s serializer
 * (`workloads`, `services`, `policies`, `stagedServices`); src/state/workload.rs `Workload`,
 * `GatewayAddress`; src/state/service.rs `Service`, `Endpoint`; src/rbac.rs `Authorization`,
 * `RbacMatch`; src/inpod/admin.rs (`workloadState`); src/version.rs `BuildInfo`; src/config.rs
 * `Config`. What istioctl reads of it: istio istioctl/pkg/writer/ztunnel/configdump/api.go.
 *
 * How serde writes them, and so how this does:
 * - field names camelCase; a field marked `skip_serializing_if` is left out when empty or
 *   default (e.g. a workload's `uid`, `node`, `waypoint`), the others are always written (a
 *   workload's `protocol`, `status`, `clusterId`, `capacity`; a service's `endpoints`,
 *   `subjectAltNames`, `canonical`, `visibility`);
 * - enums by variant name ("HBONE", "Healthy", "Allow", "WorkloadSelector"), a network address
 *   as "network/ip", a namespaced hostname as "namespace/hostname", map keys as strings, a
 *   StringMatch as {"Exact": "..."}, a Duration as {"secs", "nanos"};
 * - admin.rs turns the dump into a serde_json Value before printing, whose objects are sorted
 *   maps: every object's keys come out in byte order, printed by `to_string_pretty` (two spaces).
 *
 * What the state does not carry is written as ztunnel writes it when absent (`clusterId` "",
 * `networkMode` "Standard", `capacity` 1); fields of ztunnel's workload that the state gains
 * (workloadName, canonicalName, locality, ...) are read under ztunnel's names. Never a key.
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { MARKS, PORTS, PROXY_PORTS } from '../istio.js';
import type { PolicySet } from '../policy/authz.js';
import type { Authorization, RbacMatch } from '../policy/rbac.js';
import type { StateSnapshot } from '../state/store.js';
import { serviceKey, type Service, type Waypoint, type Workload } from '../state/types.js';
import type { PodConnections } from './connections.js';
import type { PodInfo } from './inputs.js';

type Json = string | number | boolean | null | Json[] | { [k: string]: Json | undefined };
type Obj = { [k: string]: Json | undefined };

/** Fields of ztunnel's workload that a state source may add, under ztunnel's names. */
interface WorkloadExtras {
  workloadName?: string;
  workloadType?: string;
  canonicalName?: string;
  canonicalRevision?: string;
  clusterId?: string;
  hostname?: string;
  networkMode?: string;
  nativeTunnel?: boolean;
  locality?: { region?: string; zone?: string; subzone?: string };
  authorizationPolicies?: string[];
  capacity?: number;
}
/** A gateway address as a state source may keep it: an address (with its network) or a hostname. */
type GatewayLike = Waypoint & { network?: string; hostname?: string; namespace?: string };
interface ServiceExtras {
  network?: string;
  canonical?: boolean;
  visibility?: string;
  ipFamilies?: string;
  loadBalancer?: Json;
}

/** Port maps (service port -> target port) with string keys, as serde_json writes map keys. */
function portMap(m: Record<number, number>): Obj {
  return Object.fromEntries(Object.entries(m).map(([k, v]) => [String(k), v]));
}

/** ztunnel's NetworkAddress as it prints: "network/ip" (a bare ip gets the given network). */
function networkAddress(addr: string, network = ''): string {
  return addr.includes('/') ? addr : `${network}/${addr}`;
}

/** GatewayAddress: {destination: "network/ip" or "namespace/hostname", hboneMtlsPort}. */
function gateway(g: GatewayLike): Obj {
  const destination = g.hostname ? `${g.namespace ?? ''}/${g.hostname}` : networkAddress(g.address, g.network);
  return { destination, hboneMtlsPort: g.hboneMtlsPort };
}

/** The non-empty strings among `fields` of `o`, as serde's `skip_serializing_if = "is_default"`. */
function nonEmpty(o: Record<string, unknown>, fields: readonly string[]): Obj {
  const out: Obj = {};
  for (const f of fields) if (typeof o[f] === 'string' && o[f] !== '') out[f] = o[f] as string;
  return out;
}

/** One workload (src/state/workload.rs `Workload`). `policies`: the selector policies that apply to it. */
export function dumpWorkload(w: Workload & WorkloadExtras, policies: readonly string[]): Obj {
  const loc = w.locality;
  const services = Object.keys(w.services).sort(byteOrder);
  return {
    workloadIps: [...w.workloadIps],
    waypoint: w.waypoint ? gateway(w.waypoint) : undefined,
    protocol: w.protocol,
    networkMode: w.networkMode ?? 'Standard',
    ...nonEmpty(w as unknown as Record<string, unknown>, ['uid']),
    name: w.name,
    namespace: w.namespace,
    ...nonEmpty(w as unknown as Record<string, unknown>, [
      'trustDomain', 'serviceAccount', 'network', 'workloadName', 'workloadType', 'canonicalName', 'canonicalRevision', 'hostname', 'node',
    ]),
    nativeTunnel: w.nativeTunnel ? true : undefined,
    authorizationPolicies: policies.length ? [...policies] : undefined,
    status: w.healthy ? 'Healthy' : 'Unhealthy',
    clusterId: w.clusterId ?? '',
    locality: loc && (loc.region || loc.zone || loc.subzone) ? { region: loc.region ?? '', zone: loc.zone ?? '', subzone: loc.subzone ?? '' } : undefined,
    services: services.length ? services : undefined,
    capacity: w.capacity ?? 1,
  };
}

/** One service (src/state/service.rs `Service`), its endpoints the workloads that claim it. */
export function dumpService(s: Service & ServiceExtras, members: readonly Workload[]): Obj {
  const key = serviceKey(s);
  const endpoints: Obj = {};
  for (const w of members) endpoints[w.uid] = { workloadUid: w.uid, port: portMap(w.services[key] ?? {}), status: w.healthy ? 'Healthy' : 'Unhealthy' };
  return {
    name: s.name,
    namespace: s.namespace,
    hostname: s.hostname,
    vips: s.vips.map((v) => networkAddress(v, s.network)),
    ports: portMap(s.ports),
    endpoints,
    subjectAltNames: [...s.subjectAltNames],
    waypoint: s.waypoint ? gateway(s.waypoint) : undefined,
    loadBalancer: s.loadBalancer ?? undefined,
    ipFamilies: s.ipFamilies,
    canonical: s.canonical ?? false,
    visibility: s.visibility ?? 'Public',
  };
}

/** One policy (src/rbac.rs `Authorization`); a match's empty lists are left out, as `RbacMatch` does. */
export function dumpPolicy(a: Authorization): Obj {
  const match = (m: RbacMatch): Obj => Object.fromEntries(Object.entries(m).filter(([, v]) => Array.isArray(v) && v.length > 0)) as Obj;
  return { name: a.name, namespace: a.namespace, scope: a.scope, action: a.action, rules: a.rules.map((r) => r.map((c) => c.map(match))), dryRun: a.dryRun };
}

/** A certificate as ztunnel's `CertDump`: the PEM base64-encoded, the serial in decimal, RFC 3339 seconds. */
export function dumpCert(pem: string): Obj {
  const x = new X509Certificate(pem);
  const b64 = x.raw.toString('base64').replace(/.{64}/g, '$&\n').replace(/\n?$/, '\n');
  return {
    pem: Buffer.from(`-----BEGIN CERTIFICATE-----\n${b64}-----END CERTIFICATE-----\n`).toString('base64'),
    serialNumber: BigInt(`0x${x.serialNumber}`).toString(10),
    validFrom: rfc3339(new Date(x.validFrom)),
    expirationTime: rfc3339(new Date(x.validTo)),
  };
}

function rfc3339(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

const pemBlocks = (pem: string): string[] => pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];

/**
 * The certificates held, per identity (src/admin.rs `dump_certs`): `certChain` the leaf and its
 * intermediates, `rootCerts` the trust roots, sorted by identity.
 */
export function dumpCerts(held: readonly { identity: string; chainPem: string }[], rootPem: string): Obj[] {
  const roots = pemBlocks(rootPem);
  const rootDer = new Set(roots.map((p) => new X509Certificate(p).raw.toString('base64')));
  return [...held]
    .sort((a, b) => byteOrder(a.identity, b.identity))
    .map((c) => ({
      identity: c.identity,
      state: 'Available',
      certChain: pemBlocks(c.chainPem).filter((p) => !rootDer.has(new X509Certificate(p).raw.toString('base64'))).map(dumpCert),
      rootCerts: roots.map(dumpCert),
    }));
}

/** What the config dump is made of (admin.ts gathers it from the running proxy). */
export interface ConfigDumpInput {
  snapshot: StateSnapshot;
  policies: PolicySet;
  certificates: Obj[];
  /** the pods served, with their open connections */
  pods: { info: PodInfo; connections: PodConnections }[];
  /** ztunnel's `Config` fields this proxy has (configSection) */
  config: Obj;
  version: Obj;
  /** the state comes from a local config file: shown again as `staticConfig`, as ztunnel does */
  localConfig: boolean;
}

/** The whole dump as an object (serialize with `serdeJson`). */
export function configDump(i: ConfigDumpInput): Obj {
  const { state, endpoints } = i.snapshot;
  const selected = (w: Workload & WorkloadExtras): string[] =>
    w.authorizationPolicies ??
    i.policies.forWorkload({ namespace: w.namespace, labels: w.labels }).policies.filter((p) => p.scope === 'WorkloadSelector').map((p) => `${p.namespace}/${p.name}`).sort(byteOrder);
  const workloads = [...state.workloads].sort((a, b) => byteOrder(a.uid, b.uid));
  const services = [...state.services].sort((a, b) => byteOrder(a.namespace, b.namespace) || byteOrder(a.hostname, b.hostname));
  const policies = i.policies.authorizations.sort((a, b) => byteOrder(`${a.namespace}/${a.name}`, `${b.namespace}/${b.name}`)).map(dumpPolicy);
  const workloadState: Obj = {};
  for (const p of i.pods) {
    workloadState[p.info.uid] = {
      state: 'Up',
      connections: p.connections as unknown as Json,
      info: { name: p.info.name, namespace: p.info.namespace, serviceAccount: p.info.serviceAccount },
    };
  }
  return {
    workloads: workloads.map((w) => dumpWorkload(w, selected(w))),
    services: services.map((s) => dumpService(s, endpoints.get(serviceKey(s)) ?? [])),
    policies,
    stagedServices: {},
    staticConfig: i.localConfig
      ? {
          // ztunnel's LocalConfig: a workload with its service memberships as port maps
          workloads: workloads.map((w) => ({ ...dumpWorkload(w, []), services: Object.fromEntries(Object.entries(w.services).map(([k, m]) => [k, portMap(m)])) })),
          policies,
          services: services.map((s) => dumpService(s, [])),
        }
      : { workloads: [], policies: [], services: [] },
    version: i.version,
    config: i.config,
    certificates: i.certificates,
    workloadState,
  };
}

/** What the config section reports of this proxy: its endpoints' bound addresses, the ZDS socket, the drain. */
export interface ProxySettings {
  adminAddr: string;
  statsAddr: string;
  readinessAddr: string;
  zds: string;
  drainSeconds: number;
}

/**
 * The fields of ztunnel's `Config` (src/config.rs) that have a meaning here, with its names and
 * serde forms (an `Address` as {"SocketAddr": "ip:port"}, a Duration as {secs, nanos}); those
 * about xDS, the CA client, DNS and HTTP/2 tuning are left out until this proxy has them.
 */
export function configSection(s: ProxySettings): Obj {
  const at = (port: number): string => `0.0.0.0:${port}`;
  return {
    proxy: true,
    dnsProxy: false,
    adminAddr: { SocketAddr: s.adminAddr },
    statsAddr: { SocketAddr: s.statsAddr },
    readinessAddr: { SocketAddr: s.readinessAddr },
    inboundAddr: at(PORTS.hbone),
    inboundPlaintextAddr: at(PORTS.inboundPlaintext),
    outboundAddr: at(PORTS.outbound),
    illegalPorts: [...PROXY_PORTS].sort((a, b) => a - b),
    network: '',
    localNode: process.env.NODE_NAME ?? null,
    proxyMode: 'Shared',
    caAddress: null,
    xdsAddress: null,
    selfTerminationDeadline: { secs: s.drainSeconds, nanos: 0 },
    inpodUds: s.zds,
    inpodPortReuse: true,
    packetMark: MARKS.proxy,
    proxyArgs: process.argv.slice(2).join(' '),
  };
}

/**
 * ztunnel's `BuildInfo` (src/version.rs) for this build: `rustVersion` holds the runtime's
 * version (Node.js here), `istioVersion` ISTIO_META_ISTIO_VERSION as ztunnel reads it.
 */
export function buildInfo(): Obj {
  let version = 'unknown';
  try {
    version = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    // not beside its package.json: the version is unknown
  }
  return {
    version,
    gitRevision: 'unknown',
    rustVersion: process.version,
    buildProfile: 'release',
    buildStatus: 'Clean',
    istioVersion: process.env.ISTIO_META_ISTIO_VERSION ?? 'unknown',
    cryptoProvider: 'openssl',
  };
}

/** UTF-8 byte order, as Rust compares strings (and BTreeMap orders keys). */
export function byteOrder(a: string, b: string): number {
  if (a === b) return 0;
  // UTF-16 code units order as UTF-8 bytes do, except from U+E000 against surrogate pairs
  if (SURROGATE_OR_ABOVE.test(a) || SURROGATE_OR_ABOVE.test(b)) return Buffer.compare(Buffer.from(a), Buffer.from(b));
  return a < b ? -1 : 1;
}
const SURROGATE_OR_ABOVE = /[\uD800-\uFFFF]/;

/**
 * JSON as serde_json's `to_string_pretty` prints a Value: two-space indent, `"key": value`,
 * `[]` and `{}` when empty, every object's keys in byte order; undefined fields left out.
 */
export function serdeJson(v: Json | undefined, indent = ''): string {
  if (v === null || typeof v !== 'object') return JSON.stringify(v ?? null);
  const inner = `${indent}  `;
  if (Array.isArray(v)) {
    return v.length === 0 ? '[]' : `[\n${v.map((x) => inner + serdeJson(x, inner)).join(',\n')}\n${indent}]`;
  }
  const keys = Object.keys(v).filter((k) => v[k] !== undefined).sort(byteOrder);
  return keys.length === 0 ? '{}' : `{\n${keys.map((k) => `${inner}${JSON.stringify(k)}: ${serdeJson(v[k], inner)}`).join(',\n')}\n${indent}}`;
}
