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
 *   maps: every object here is built with its keys in byte order (literals written so, maps
 *   through `keyed`, values made elsewhere through `canonical`), for ts/util/serdejson.ts.
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
import { byteOrder, canonical, keyed, sortedBy, type Lazy } from '../util/serdejson.js';

/** A JSON object as built here: keys in byte order; undefined fields are left out when written. */
type Obj = { [k: string]: unknown };

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
  loadBalancer?: unknown;
}

/** A port map (service port -> target port), its keys strings as serde_json writes map keys. */
function portMap(m: Record<number, number>): Obj {
  return keyed(Object.entries(m));
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

/** serde's `skip_serializing_if = "is_default"` for a string: left out when empty. */
const str = (x: string | undefined): string | undefined => (x ? x : undefined);
const health = (w: Workload): string => (w.healthy ? 'Healthy' : 'Unhealthy');

/**
 * One workload (src/state/workload.rs `Workload`; keys in byte order). `policies`: the selector
 * policies that apply to it; `services`: what to write for its services (default: the list of
 * "namespace/hostname" it belongs to, ztunnel's `services: Vec<NamespacedHostname>`).
 */
export function dumpWorkload(w: Workload & WorkloadExtras, policies: readonly string[], services?: unknown): Obj {
  const loc = w.locality;
  const memberOf = Object.keys(w.services).sort(byteOrder);
  return {
    authorizationPolicies: policies.length ? [...policies] : undefined,
    canonicalName: str(w.canonicalName),
    canonicalRevision: str(w.canonicalRevision),
    capacity: w.capacity ?? 1,
    clusterId: w.clusterId ?? '',
    hostname: str(w.hostname),
    locality: loc && (loc.region || loc.zone || loc.subzone) ? { region: loc.region ?? '', subzone: loc.subzone ?? '', zone: loc.zone ?? '' } : undefined,
    name: w.name,
    namespace: w.namespace,
    nativeTunnel: w.nativeTunnel ? true : undefined,
    network: str(w.network),
    networkMode: w.networkMode ?? 'Standard',
    node: str(w.node),
    protocol: w.protocol,
    serviceAccount: str(w.serviceAccount),
    services: services ?? (memberOf.length ? memberOf : undefined),
    status: health(w),
    trustDomain: str(w.trustDomain),
    uid: str(w.uid),
    waypoint: w.waypoint ? gateway(w.waypoint) : undefined,
    workloadIps: [...w.workloadIps],
    workloadName: str(w.workloadName),
    workloadType: str(w.workloadType),
  };
}

/** One service (src/state/service.rs `Service`; keys in byte order), its endpoints the workloads that claim it. */
export function dumpService(s: Service & ServiceExtras, members: readonly Workload[]): Obj {
  const key = serviceKey(s);
  return {
    canonical: s.canonical ?? false,
    endpoints: keyed(members.map((w) => [w.uid, { port: portMap(w.services[key] ?? {}), status: health(w), workloadUid: w.uid }])),
    hostname: s.hostname,
    ipFamilies: s.ipFamilies,
    loadBalancer: s.loadBalancer === undefined ? undefined : canonical(s.loadBalancer),
    name: s.name,
    namespace: s.namespace,
    ports: portMap(s.ports),
    subjectAltNames: [...s.subjectAltNames],
    vips: s.vips.map((v) => networkAddress(v, s.network)),
    visibility: s.visibility ?? 'Public',
    waypoint: s.waypoint ? gateway(s.waypoint) : undefined,
  };
}

/**
 * One policy (src/rbac.rs `Authorization`); a match's empty lists are left out, as `RbacMatch`
 * does. inpod's `trustDomains`/`notTrustDomains` (ts/policy/rbac.ts) are written when set: they
 * are enforced, so the dump shows them.
 */
export function dumpPolicy(a: Authorization): Obj {
  const match = (m: RbacMatch): Obj => Object.fromEntries(Object.entries(m).filter(([, v]) => Array.isArray(v) && v.length > 0)) as Obj;
  return canonical({ action: a.action, dryRun: a.dryRun, name: a.name, namespace: a.namespace, rules: a.rules.map((r) => r.map((c) => c.map(match))), scope: a.scope }) as Obj;
}

/** A certificate as ztunnel's `CertDump`: the PEM base64-encoded, the serial in decimal, RFC 3339 seconds. */
export function dumpCert(pem: string): Obj {
  const x = new X509Certificate(pem);
  const b64 = x.raw.toString('base64').replace(/.{64}/g, '$&\n').replace(/\n?$/, '\n');
  return {
    expirationTime: rfc3339(new Date(x.validTo)),
    pem: Buffer.from(`-----BEGIN CERTIFICATE-----\n${b64}-----END CERTIFICATE-----\n`).toString('base64'),
    serialNumber: BigInt(`0x${x.serialNumber}`).toString(10),
    validFrom: rfc3339(new Date(x.validFrom)),
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
      certChain: pemBlocks(c.chainPem).filter((p) => !rootDer.has(new X509Certificate(p).raw.toString('base64'))).map(dumpCert),
      identity: c.identity,
      rootCerts: roots.map(dumpCert),
      state: 'Available',
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

/**
 * The whole dump as an object, to write with ts/util/serdejson.ts: each workload and
 * service is built only as it is written (Lazy), so a large state is never held twice.
 */
export function configDump(i: ConfigDumpInput): Obj {
  const { state, endpoints } = i.snapshot;
  const selected = (w: Workload & WorkloadExtras): string[] =>
    w.authorizationPolicies ??
    i.policies.forWorkload({ namespace: w.namespace, labels: w.labels }).policies.filter((p) => p.scope === 'WorkloadSelector').map((p) => `${p.namespace}/${p.name}`).sort(byteOrder);
  const workloads = sortedBy(state.workloads, (w) => w.uid);
  const services = sortedBy(state.services, (s) => `${s.namespace}/${s.hostname}`);
  const policies = i.policies.authorizations.sort((a, b) => byteOrder(`${a.namespace}/${a.name}`, `${b.namespace}/${b.name}`)).map(dumpPolicy);
  const workloadState = keyed(i.pods.map((p) => [p.info.uid, canonical({
    connections: p.connections,
    info: { name: p.info.name, namespace: p.info.namespace, serviceAccount: p.info.serviceAccount },
    state: 'Up',
  })]));
  // ztunnel's LocalConfig: a workload with its service memberships as port maps
  const local = (w: Workload): Obj => dumpWorkload(w, [], keyed(Object.entries(w.services).map(([k, m]) => [k, portMap(m)])));
  // the top-level keys in byte order, as everywhere
  return {
    certificates: i.certificates,
    config: canonical(i.config),
    policies,
    services: services.map((s): Lazy => () => dumpService(s, endpoints.get(serviceKey(s)) ?? [])),
    stagedServices: {},
    staticConfig: i.localConfig
      ? { policies, services: services.map((s): Lazy => () => dumpService(s, [])), workloads: workloads.map((w): Lazy => () => local(w)) }
      : { policies: [], services: [], workloads: [] },
    version: canonical(i.version),
    workloadState,
    workloads: workloads.map((w): Lazy => () => dumpWorkload(w, selected(w))),
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
