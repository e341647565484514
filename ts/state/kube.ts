/**
 * Proxy state derived from the cluster (no config file): workloads from Pods (IPs, service
 * account, labels, node; HBONE for pods the agent enrolled; workload name, canonical service and
 * revision, cluster and the node's locality as istiod derives them, workloadmeta.ts), services
 * from Services (cluster IPs, ports) joined with EndpointSlices (membership, named target ports),
 * and Istio AuthorizationPolicy objects; waypoints of services and pods from `istio.io/use-waypoint`
 * labels on them and their Namespaces and from waypoint Gateways (waypoints.ts, as istiod).
 * Watched live with informers; each change rebuilds the snapshot.
 */
// types only at the top: the client (tens of MB) is loaded by KubeStateSource.start, so the
// manifest-directory and config-file modes never load it
import { isIP } from 'node:net';
import type * as k8s from '@kubernetes/client-node';
import { MeshError } from '../util/errors.js';
import { ipText } from '../util/sockaddr.js';
import { logger } from '../util/log.js';
import { ManifestDir, type ManifestObject } from '../util/manifestdir.js';
import type { Authorization } from '../policy/rbac.js';
import type { MeshState, Policy, Service, Workload } from './types.js';
import type { StateStore } from './store.js';
import { DEFAULT_CLUSTER_ID, nodeLocality, podWorkloadMeta } from './workloadmeta.js';
import {
  buildWaypoints, implicitPolicyKeys, implicitWaypointPolicy, waypointForService, waypointForWorkload,
  type GatewayClassObject, type GatewayObject, type Meta, type Waypoint,
} from './waypoints.js';

const REDIRECTION = 'ambient.istio.io/redirection';

interface Slice {
  metadata?: { namespace?: string; labels?: Record<string, string> };
  ports?: { name?: string; port?: number }[];
  endpoints?: { targetRef?: { kind?: string; uid?: string; name?: string } }[];
}

interface NodeObject {
  metadata?: { name?: string; labels?: Record<string, string> };
}

export interface KubeStateOptions {
  clusterDomain?: string;
  /** the cluster's ID, as istiod's (default "Kubernetes") */
  clusterId?: string;
  /** the cluster's nodes: a pod's locality is its node's topology labels */
  nodes?: NodeObject[];
  /** the cluster's namespaces: their `istio.io/use-waypoint` labels */
  namespaces?: { metadata?: Meta }[];
  /** gateway.networking.k8s.io Gateways and GatewayClasses: the waypoints */
  gateways?: GatewayObject[];
  gatewayClasses?: GatewayClassObject[];
  /**
   * istiod's PILOT_AUTO_ALLOW_WAYPOINT_POLICY (off by default, as there): every workload behind a
   * waypoint names an ALLOW policy for the waypoint's service accounts (waypoints.ts)
   */
  autoAllowWaypointPolicy?: boolean;
}

/** Pure: builds the mesh state from the cluster's objects. */
export function buildKubeState(
  pods: k8s.V1Pod[],
  services: k8s.V1Service[],
  slices: Slice[],
  policies: Record<string, unknown>[],
  trustDomain: string,
  opts: KubeStateOptions = {},
): MeshState {
  const clusterDomain = opts.clusterDomain ?? 'cluster.local';
  const localities = new Map((opts.nodes ?? []).map((n) => [n.metadata?.name ?? '', nodeLocality(n.metadata?.labels)]));
  const svcOut: Service[] = [];
  const byUid = new Map<string, Workload>();
  const workloads: Workload[] = [];
  const namespaces = new Map((opts.namespaces ?? []).map((n) => [n.metadata?.name ?? '', n.metadata?.labels ?? {}]));
  const waypoints = buildWaypoints({
    gateways: opts.gateways ?? [], gatewayClasses: opts.gatewayClasses ?? [], pods: pods as never, clusterDomain,
    serviceNames: new Set(services.map((s) => `${s.metadata?.namespace ?? 'default'}/${s.metadata?.name ?? ''}`)),
  });
  const podWaypoint = new Map<Workload, Waypoint | undefined>();
  const serviceWaypoint = new Map<string, Waypoint | undefined>();
  for (const p of pods) {
    // a dual-stack pod has one of each family in podIPs (podIP is the first); as istiod's
    // ambient index, every one is the workload's, written as ztunnel writes them
    const ips = addresses((p.status?.podIPs ?? []).map((x) => x.ip));
    if (!ips.length && p.status?.podIP) ips.push(...addresses([p.status.podIP]));
    if (!ips.length || p.spec?.hostNetwork || !p.metadata?.uid) continue;
    const w: Workload = {
      uid: p.metadata.uid,
      name: p.metadata.name ?? '',
      namespace: p.metadata.namespace ?? 'default',
      serviceAccount: p.spec?.serviceAccountName ?? 'default',
      trustDomain,
      workloadIps: ips,
      protocol: p.metadata.annotations?.[REDIRECTION] === 'enabled' ? 'HBONE' : 'TCP',
      node: p.spec?.nodeName ?? '',
      network: '',
      services: {},
      labels: { ...(p.metadata.labels ?? {}) },
      healthy: p.status?.phase !== 'Failed' && p.status?.phase !== 'Succeeded' && !p.metadata.deletionTimestamp,
      ...podWorkloadMeta(p.metadata),
      clusterId: opts.clusterId ?? DEFAULT_CLUSTER_ID,
    };
    const locality = localities.get(w.node);
    if (locality) w.locality = locality;
    const wp = waypointForWorkload(p.metadata as Meta, namespaces, waypoints);
    if (wp) w.waypoint = { ...wp.address };
    podWaypoint.set(w, wp);
    workloads.push(w);
    byUid.set(w.uid, w);
  }
  for (const s of services) {
    const ns = s.metadata?.namespace ?? 'default';
    const name = s.metadata?.name ?? '';
    const hostname = `${name}.${ns}.svc.${clusterDomain}`;
    // a dual-stack Service has a cluster IP per family (clusterIPs), each a VIP (istiod's ambient index)
    const vips = addresses(s.spec?.clusterIPs ?? [s.spec?.clusterIP]);
    const ports: Record<number, number> = {};
    for (const sp of s.spec?.ports ?? []) {
      if (sp.protocol && sp.protocol !== 'TCP') continue;
      ports[sp.port] = typeof sp.targetPort === 'number' ? sp.targetPort : sp.targetPort === undefined ? sp.port : 0; // named: from slices
    }
    const wp = waypointForService(s.metadata as Meta ?? {}, namespaces, waypoints);
    const ipFamilies = serviceIpFamilies(s.spec?.ipFamilies);
    svcOut.push({
      name, namespace: ns, hostname, vips: vips.map((address) => ({ network: '', address })), ports, subjectAltNames: [],
      ...(wp ? { waypoint: { ...wp.address } } : {}), ...(ipFamilies ? { ipFamilies } : {}),
    });
    const key = `${ns}/${hostname}`;
    serviceWaypoint.set(key, wp);
    for (const slice of slices) {
      if (slice.metadata?.namespace !== ns || slice.metadata?.labels?.['kubernetes.io/service-name'] !== name) continue;
      for (const ep of slice.endpoints ?? []) {
        const w = ep.targetRef?.kind === 'Pod' && ep.targetRef.uid ? byUid.get(ep.targetRef.uid) : undefined;
        if (!w) continue;
        const map: Record<number, number> = {};
        for (const sp of s.spec?.ports ?? []) {
          const named = typeof sp.targetPort === 'string' ? slice.ports?.find((p) => p.name === (sp.name ?? ''))?.port : undefined;
          map[sp.port] = named ?? (typeof sp.targetPort === 'number' ? sp.targetPort : sp.port);
        }
        w.services[key] = map;
      }
    }
  }
  const state: MeshState = { workloads, services: svcOut, policies: policies.map((p) => p as unknown as Policy) };
  if (opts.autoAllowWaypointPolicy) {
    state.authorizations = [...waypoints.values()].map((w) => implicitWaypointPolicy(w, trustDomain)).filter((a): a is Authorization => a !== undefined);
    for (const w of workloads) {
      const keys = implicitPolicyKeys(podWaypoint.get(w), Object.keys(w.services).map((k) => serviceWaypoint.get(k)));
      if (keys.length) w.authorizationPolicies = keys;
    }
  }
  return state;
}

/** The addresses among `xs` ("None" of a headless Service, empty and malformed ones dropped), as ztunnel writes them. */
function addresses(xs: readonly (string | undefined)[]): string[] {
  return xs.filter((x): x is string => typeof x === 'string' && isIP(x) !== 0).map(ipText);
}

/**
 * A Service's spec.ipFamilies as istiod sends it to ztunnel (pilot/pkg/serviceregistry/ambient/
 * services.go): two families Dual, one IPv4 (anything else IPv6, as istiod), otherwise unset
 * (AUTOMATIC: ztunnel then prefers the family the client used).
 */
export function serviceIpFamilies(f: readonly string[] | undefined): Service['ipFamilies'] {
  if (f?.length === 2) return 'Dual';
  if (f?.length === 1) return f[0] === 'IPv4' ? 'IPv4' : 'IPv6';
  return undefined;
}

/** Keeps `store` equal to what the cluster says, until stopped. */
export class KubeStateSource {
  readonly #log = logger('kube-state');
  readonly #informers: k8s.ListWatch<k8s.KubernetesObject>[] = [];
  #timer?: NodeJS.Timeout;
  #stopped = false;

  constructor(
    private readonly kc: k8s.KubeConfig,
    private readonly store: StateStore,
    private readonly trustDomain: string,
    private readonly opts: Pick<KubeStateOptions, 'autoAllowWaypointPolicy'> = {},
  ) {}

  async start(): Promise<void> {
    const client = await import('@kubernetes/client-node');
    const core = this.kc.makeApiClient(client.CoreV1Api);
    const disc = this.kc.makeApiClient(client.DiscoveryV1Api);
    const custom = this.kc.makeApiClient(client.CustomObjectsApi);
    const watch = new client.Watch(this.kc);
    const mk = (path: string, list: () => Promise<k8s.KubernetesListObject<k8s.KubernetesObject>>): k8s.ListWatch<k8s.KubernetesObject> => {
      const lw = new client.ListWatch<k8s.KubernetesObject>(path, watch, list, false);
      for (const ev of ['add', 'update', 'delete'] as const) lw.on(ev, () => this.#rebuild());
      lw.on('error', (e: unknown) => {
        if (this.#stopped) return;
        this.#log.warn({ path, err: String((e as Error)?.message ?? e) }, 'watch failed; restarting in 1 s');
        setTimeout(() => void lw.start().catch(() => {}), 1000);
      });
      this.#informers.push(lw);
      return lw;
    };
    const lists = [
      mk('/api/v1/pods', () => core.listPodForAllNamespaces() as never),
      mk('/api/v1/services', () => core.listServiceForAllNamespaces() as never),
      mk('/apis/discovery.k8s.io/v1/endpointslices', () => disc.listEndpointSliceForAllNamespaces() as never),
      mk('/apis/security.istio.io/v1/authorizationpolicies', async () =>
        (await custom.listClusterCustomObject({ group: 'security.istio.io', version: 'v1', plural: 'authorizationpolicies' })) as never),
      mk('/api/v1/nodes', () => core.listNode() as never),
      mk('/api/v1/namespaces', () => core.listNamespace() as never),
      mk('/apis/gateway.networking.k8s.io/v1/gateways', async () =>
        (await custom.listClusterCustomObject({ group: 'gateway.networking.k8s.io', version: 'v1', plural: 'gateways' })) as never),
      mk('/apis/gateway.networking.k8s.io/v1/gatewayclasses', async () =>
        (await custom.listClusterCustomObject({ group: 'gateway.networking.k8s.io', version: 'v1', plural: 'gatewayclasses' })) as never),
    ];
    await Promise.all(lists.map((l) => l.start().catch(() => {})));
    this.#rebuildNow();
  }

  #rebuild(): void {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#rebuildNow(), 20);
  }

  #rebuildNow(): void {
    const [pods, svcs, slices, pols, nodes, namespaces, gateways, gatewayClasses] = this.#informers.map((i) => i.list());
    this.store.set(buildKubeState(pods as k8s.V1Pod[], svcs as k8s.V1Service[], slices as Slice[], pols as unknown as Record<string, unknown>[], this.trustDomain, {
      ...this.opts, nodes: nodes as NodeObject[], namespaces: namespaces as never, gateways: gateways as GatewayObject[], gatewayClasses: gatewayClasses as GatewayClassObject[],
    }));
  }

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
    for (const i of this.#informers) void i.stop();
  }
}

/**
 * The same state from a directory of Kubernetes YAML (Pods with status.podIP, Services,
 * EndpointSlices, AuthorizationPolicies, Nodes, Namespaces, Gateways, GatewayClasses), re-read on every change: one host without a cluster.
 * A file that cannot be read keeps what it held before and is named in a warning (and in the
 * store's lastError); objects that do not make a state (a podIPs that is not a list, ...) leave
 * the last good state in place.
 */
export class ManifestStateSource {
  #watcher?: import('node:fs').FSWatcher;
  #timer?: NodeJS.Timeout;
  readonly #log = logger('manifest-state');
  readonly #files: ManifestDir;

  constructor(private readonly dir: string, private readonly store: StateStore, private readonly trustDomain: string) {
    this.#files = new ManifestDir(dir);
  }

  async start(): Promise<void> {
    const { watch } = await import('node:fs');
    this.store.describeSource(this.dir);
    this.#load();
    this.#watcher = watch(this.dir, () => {
      clearTimeout(this.#timer);
      this.#timer = setTimeout(() => this.#load(), 50);
    });
  }

  #load(): void {
    const { objects, problems } = this.#files.read();
    for (const p of problems) {
      if (!p.repeated) this.#log.warn({ file: p.file, err: p.error }, p.keptPrevious ? 'manifest unreadable; keeping what it held before' : 'manifest unreadable; skipped');
    }
    const of = (kind: string): unknown[] => objects.filter((d: ManifestObject) => d.kind === kind);
    let state: MeshState;
    try {
      state = buildKubeState(of('Pod') as k8s.V1Pod[], of('Service') as k8s.V1Service[], of('EndpointSlice') as Slice[], of('AuthorizationPolicy') as Record<string, unknown>[], this.trustDomain, {
        nodes: of('Node') as NodeObject[], namespaces: of('Namespace') as never, gateways: of('Gateway') as GatewayObject[], gatewayClasses: of('GatewayClass') as GatewayClassObject[],
      });
    } catch (e) {
      const err = new MeshError('INPOD_ERR_CONFIG', `${this.dir}: the manifests do not make a state (${(e as Error).message}); keeping the last good state`, { cause: e });
      this.#log.warn({ dir: this.dir, err: err.message }, 'manifests refused');
      this.store.refuse(err);
      return;
    }
    // files that could not be read did not stop the update; they stay visible in health()
    this.store.set(state, problems.map((p) => `${p.error}${p.keptPrevious ? '; keeping what the file held before' : '; the file is skipped'}`));
  }

  stop(): void {
    this.#watcher?.close();
    clearTimeout(this.#timer);
  }
}
