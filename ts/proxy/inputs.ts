/**
 * What every listener of one served pod reads (ztunnel's ProxyInputs, src/proxy.rs, which inpod
 * mode makes once per pod), and the check every captured connection passes before anything else:
 * where it was going, and that this is not the proxy itself.
 */
import type net from 'node:net';
import type { Fd } from '../native/index.js';
import type { CertManager } from '../identity/manager.js';
import type { Identity } from '../identity/spiffe.js';
import type { StateSnapshot, StateStore } from '../state/store.js';
import type { Workload } from '../state/types.js';
import type { Logger } from '../util/log.js';
import { MeshError } from '../util/errors.js';
import { localOf, peerOf, socketAddr } from '../util/sockaddr.js';
import type { FastPath } from './fastpath/index.js';
import type { HboneLimits } from './hbone/limits.js';
import type { NativeHbone } from './hbone/native.js';
import type { Authorizer, ConnContext, ConnObserver } from './hooks.js';
import type { HbonePool } from './pool.js';
import type { PolicyWatcher } from './policy-watch.js';
import { isSelfCall, type Addr, type OwnAddresses } from './route.js';
import { isOwnUpstream, nodeAddresses, originalDestination } from './sockets.js';

export interface PodInfo {
  uid: string;
  name: string;
  namespace: string;
  serviceAccount: string;
}

/** What the proxy shares between the pods it serves (ztunnel.ts makes it once). */
export interface ProxyDeps {
  state: StateStore;
  certs: CertManager;
  pool: HbonePool;
  authorizer: Authorizer;
  /** holds the connections admitted to apps, closing those a policy update denies (ztunnel's PolicyWatcher) */
  policyWatch?: PolicyWatcher;
  observer: ConnObserver;
  log: Logger;
  trustDomain: string;
  /** splices passthrough and plaintext-inbound connections in the kernel (or relays in userspace) */
  fastPath: FastPath;
  /**
   * The pod at `ip` when this proxy serves it and same-node delivery is on: then a connection to
   * it skips HBONE (same-node.ts).
   */
  localPod?: (ip: string) => PodInputs | undefined;
  /** the HBONE server's per-peer limits (defaults: hbone/limits.ts) */
  hboneLimits?: Partial<HboneLimits>;
  /** the native HBONE byte path (`--byte-path native`); absent: Node's tls and http2 move the bytes */
  native?: NativeHbone;
}

/** One served pod (one sandbox): the shared parts, and its own. */
export interface PodInputs extends ProxyDeps {
  info: PodInfo;
  identity: Identity;
  /** `identity` as a SPIFFE URI */
  uri: string;
  /** the pod's network namespace: every socket of its listeners and upstreams is made inside it */
  netns: Fd;
  /** this sandbox's key in the HBONE pool (its connections are retired when it stops) */
  poolOwner: string;
  /** the proxy's logger with the pod's fields */
  log: Logger;
}

/** The pod as connection records name it. */
export function podRef(pi: PodInputs): ConnContext['pod'] {
  return { uid: pi.info.uid, name: pi.info.name, namespace: pi.info.namespace };
}

/**
 * This pod's workload in the state: by the pod's UID (the Kubernetes state's key), else the one
 * at `ip`, an address of this pod's own (the connection's local address inbound, its source
 * outbound). istiod keys workloads "<cluster>//Pod/<ns>/<name>", not by the UID ZDS hands over,
 * so in Istio mode only the address finds it, as ztunnel finds a pod's workload
 * (src/state.rs fetch_workload_by_address; telemetry/labels.ts describe() does the same).
 */
export function ownWorkload(pi: PodInputs, ip: string): Workload | undefined {
  const v = ownView(pi);
  return v.self ?? v.snap.byIp.get(ip);
}

/** A pod's own addresses as one state snapshot and one reading of the node's addresses give them. */
interface OwnView {
  snap: StateSnapshot;
  nodeIps: ReadonlySet<string>;
  /** the pod's workload by uid in `snap` */
  self?: Workload;
  /** its IPs and the node's (no client's) */
  own: OwnAddresses;
}

/** per pod: derived again when the state's snapshot or the node's addresses are another */
const ownViews = new WeakMap<PodInputs, OwnView>();

function ownView(pi: PodInputs): OwnView {
  const snap = pi.state.snapshot;
  const nodeIps = nodeAddresses();
  let v = ownViews.get(pi);
  if (v?.snap !== snap || v.nodeIps !== nodeIps) {
    const self = snap.byUid.get(pi.info.uid);
    v = { snap, nodeIps, self, own: { podIps: self?.workloadIps ?? [], nodeIps } };
    ownViews.set(pi, v);
  }
  return v;
}

/**
 * The proxy's own addresses as seen from this pod (its IPs, the client's when given, the node's).
 * Made once per state snapshot (a state update is a new snapshot), not per connection.
 */
export function ownAddresses(pi: PodInputs, clientIp?: string): OwnAddresses {
  const v = ownView(pi);
  if (clientIp === undefined || v.own.podIps.includes(clientIp)) return v.own;
  const w = v.self ?? v.snap.byIp.get(clientIp);
  return { podIps: [...(w?.workloadIps ?? []), clientIp], nodeIps: v.nodeIps };
}

/**
 * Where a captured connection (15001, 15006) was going (`dst`) and where it comes from (`src`, its
 * peer, canonical), or null when it must be refused: it has
 * no recorded original destination, or that destination is the proxy itself (a loop, or a pod
 * reaching the proxy's own ports through it). A refusal resets the client and is logged with its
 * code (INPOD_ERR_ORIGINAL_DST, INPOD_ERR_SELF_CALL) as the access log's "connection failed"
 * (ztunnel's log_early_deny), never a fallback; it is not reported as a connection.
 */
export function capturedDestination(pi: PodInputs, down: net.Socket, direction: 'inbound' | 'outbound'): { src: Addr; dst: Addr } | null {
  const from = peerOf(down);
  let dst: Addr;
  try {
    dst = originalDestination(down, from);
  } catch (e) {
    // the listener's own address stands for the destination nobody recorded
    pi.observer.refused({ direction, src: from, dst: localOf(down), error: e as Error });
    down.resetAndDestroy();
    return null;
  }
  if (isSelfCall(direction, dst, ownAddresses(pi, from.ip)) || (direction === 'inbound' && isOwnUpstream(from.ip, from.port))) {
    pi.observer.refused({ direction, src: from, dst, error: new MeshError('INPOD_ERR_SELF_CALL',
      `connection refused: ${socketAddr(dst)} would loop back into the proxy (its own port, or its own upstream captured again)`) });
    down.resetAndDestroy();
    return null;
  }
  return { src: from, dst };
}
