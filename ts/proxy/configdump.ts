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
 * The state's workloads and services carry ztunnel's fields under its names (ts/state/types.ts):
 * what a source left absent is written as ztunnel writes its default (`clusterId` "",
 * `networkMode` "Standard", `capacity` 1). Endpoints and staged services are derived as
 * ztunnel's ServiceStore keeps them (serviceEndpoints). Never a key.
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { MARKS, PORTS, PROXY_PORTS } from '../istio.js';
import type { PolicySet } from '../policy/authz.js';
import type { Authorization, RbacMatch } from '../policy/rbac.js';
import type { StateSnapshot } from '../state/store.js';
import { serviceKey, type GatewayAddress, type NetworkAddress, type Service, type ServiceEndpoint, type Workload } from '../state/types.js';
import type { PodConnections } from './connections.js';
import type { PodInfo } from './inputs.js';
import { byteOrder, canonical, keyed, sortedBy, type Lazy } from '../util/serdejson.js';

/** A JSON object as built here: keys in byte order; undefined fields are left out when written. */
type Obj = { [k: string]: unknown };

/** A port map (service port -> target port), its keys strings as serde_json writes map keys. */
function portMap(m: Record<number, number>): Obj {
  return keyed(Object.entries(m));
}

/** ztunnel's NetworkAddress as it prints: "network/ip" ("/ip" on the default network). */
const networkAddress = (a: NetworkAddress): string => `${a.network}/${a.address}`;

/** GatewayAddress: {destination: "network/ip" or "namespace/hostname" (untagged), hboneMtlsPort}. */
function gateway(g: GatewayAddress): Obj {
  const destination = g.hostname ? `${g.hostname.namespace}/${g.hostname.hostname}` : networkAddress(g);
  return { destination, hboneMtlsPort: g.hboneMtlsPort };
}

/** serde's `skip_serializing_if = "is_default"` for a string: left out when empty. */
const str = (x: string | undefined): string | undefined => (x ? x : undefined);
const health = (healthy: boolean): 'Healthy' | 'Unhealthy' => (healthy ? 'Healthy' : 'Unhealthy');

/**
 * One workload (src/state/workload.rs `Workload`; keys in byte order). `policies`: the policy
 * keys attached to it; `services`: what to write under `services` (undefined: nothing; from xDS
 * ztunnel lists the "namespace/hostname" it belongs to, from a local config it has none, and
 * its LocalConfig writes the port maps).
 */
export function dumpWorkload(w: Workload, policies: readonly string[], services: unknown): Obj {
  const loc = w.locality;
  const tunnel = w.applicationTunnel;
  return {
    applicationTunnel: tunnel ? { port: tunnel.port ?? null, protocol: tunnel.protocol } : undefined,
    authorizationPolicies: policies.length ? [...policies] : undefined,
    canonicalName: str(w.canonicalName),
    canonicalRevision: str(w.canonicalRevision),
    capacity: w.capacity ?? 1,
    clusterId: w.clusterId ?? '',
    hostname: str(w.hostname),
    locality: loc && (loc.region || loc.zone || loc.subzone) ? { region: loc.region, subzone: loc.subzone, zone: loc.zone } : undefined,
    name: w.name,
    namespace: w.namespace,
    nativeTunnel: w.nativeTunnel ? true : undefined,
    network: str(w.network),
    networkGateway: w.networkGateway ? gateway(w.networkGateway) : undefined,
    networkMode: w.networkMode ?? 'Standard',
    node: str(w.node),
    protocol: w.protocol,
    serviceAccount: str(w.serviceAccount),
    services,
    status: health(w.healthy),
    trustDomain: str(w.trustDomain),
    uid: str(w.uid),
    waypoint: w.waypoint ? gateway(w.waypoint) : undefined,
    workloadIps: [...w.workloadIps],
    workloadName: str(w.workloadName),
    workloadType: str(w.workloadType),
  };
}

/** ztunnel's `Endpoint` (src/state/service.rs). */
const endpoint = (e: ServiceEndpoint): Obj => ({ port: portMap(e.port), status: e.status, workloadUid: e.workloadUid });

/** A workload's endpoint in the service `key`: its port map there, its health. */
const memberEndpoint = (w: Workload, key: string): ServiceEndpoint => ({ workloadUid: w.uid, port: w.services[key] ?? {}, status: health(w.healthy) });

/**
 * The service's endpoints as ztunnel's state holds them: those it was given (a local config's
 * `endpoints`), then each workload that claims it, over a given one of the same uid; a claiming
 * workload only when healthy unless the service's load balancer allows all (service.rs
 * `should_include_endpoint`, applied when staged endpoints join the service).
 */
export function serviceEndpoints(s: Service, members: readonly Workload[]): Map<string, ServiceEndpoint> {
  const out = new Map<string, ServiceEndpoint>(Object.entries(s.endpoints ?? {}));
  const allowAll = s.loadBalancer?.healthPolicy === 'AllowAll';
  for (const w of members) if (w.healthy || allowAll) out.set(w.uid, memberEndpoint(w, serviceKey(s)));
  return out;
}

/** One service (src/state/service.rs `Service`; keys in byte order) with `endpoints`. */
export function dumpService(s: Service, endpoints: ReadonlyMap<string, ServiceEndpoint>): Obj {
  return {
    canonical: s.canonical ?? false,
    cidrVips: s.cidrVips?.length ? s.cidrVips.map((c) => ({ cidr: c.cidr, network: c.network })) : undefined,
    endpoints: keyed([...endpoints].map(([uid, e]) => [uid, endpoint(e)])),
    hostname: s.hostname,
    ipFamilies: s.ipFamilies,
    loadBalancer: s.loadBalancer === undefined ? undefined : canonical(s.loadBalancer),
    name: s.name,
    namespace: s.namespace,
    ports: portMap(s.ports),
    subjectAltNames: [...s.subjectAltNames],
    vips: s.vips.map(networkAddress),
    visibility: s.visibility ?? 'Public',
    waypoint: s.waypoint ? gateway(s.waypoint) : undefined,
    weightedWaypoints: s.weightedWaypoints?.length ? s.weightedWaypoints.map((x) => ({ destination: gateway(x.destination), weight: x.weight })) : undefined,
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
  const snap = i.snapshot;
  const { state } = snap;
  // what istiod sends in a workload's authorizationPolicies: the keys the source gave (a local
  // config's, the implicit waypoint policy's), then the selector policies its labels match
  const selected = (w: Workload): string[] => {
    const given = w.authorizationPolicies ?? [];
    const matched = i.policies.forWorkload({ namespace: w.namespace, labels: w.labels }).policies
      .filter((p) => p.scope === 'WorkloadSelector').map((p) => `${p.namespace}/${p.name}`).filter((k) => !given.includes(k));
    return [...given, ...matched.sort(byteOrder)];
  };
  // state.rs ProxyState's serializer: workloads by uid, services by hostname (then as stored), policies by key
  const workloads = sortedBy(state.workloads, (w) => w.uid);
  const services = sortedBy(state.services, (s) => s.hostname);
  const policies = sortedBy(i.policies.authorizations, (a) => `${a.namespace}/${a.name}`).map(dumpPolicy);
  // workloads' endpoints for services the state does not have: ztunnel keeps them staged
  const staged = keyed([...snap.endpoints].filter(([key]) => !snap.byServiceKey.has(key)).map(([key, members]) => [
    key, keyed(members.map((w) => [w.uid, endpoint(memberEndpoint(w, key))])),
  ]));
  const workloadState = keyed(i.pods.map((p) => [p.info.uid, canonical({
    connections: p.connections,
    info: { name: p.info.name, namespace: p.info.namespace, serviceAccount: p.info.serviceAccount },
    state: 'Up',
  })]));
  // from xDS a workload lists the services it is in; from a local config it has none (they are its LocalWorkload's)
  const memberOf = (w: Workload): string[] | undefined => {
    if (i.localConfig) return undefined;
    const keys = Object.keys(w.services).sort(byteOrder);
    return keys.length ? keys : undefined;
  };
  // admin.rs re-reads the local config file into its LocalConfig: as written (in order), a
  // workload's services as port maps, a service's endpoints those the file gives
  const staticConfig = i.localConfig
    ? {
        policies: (state.authorizations ?? []).map(dumpPolicy),
        services: state.services.map((s): Lazy => () => dumpService(s, new Map(Object.entries(s.endpoints ?? {})))),
        workloads: state.workloads.map((w): Lazy => () => dumpWorkload(w, w.authorizationPolicies ?? [], keyed(Object.entries(w.services).map(([k, m]) => [k, portMap(m)])))),
      }
    : { policies: [], services: [], workloads: [] };
  // the top-level keys in byte order, as everywhere
  return {
    certificates: i.certificates,
    config: canonical(i.config),
    policies,
    services: services.map((s): Lazy => () => dumpService(s, serviceEndpoints(s, snap.endpoints.get(serviceKey(s)) ?? []))),
    stagedServices: staged,
    staticConfig,
    version: canonical(i.version),
    workloadState,
    workloads: workloads.map((w): Lazy => () => dumpWorkload(w, selected(w), memberOf(w))),
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
  // the pod listeners are dual-stack, as ztunnel's on `[::]` (sockets.ts podListenerFd)
  const at = (port: number): string => `[::]:${port}`;
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
