/**
 * The proxy's state as istiod sends it over WDS: Address resources (workloads and services,
 * keyed by their xDS name: a workload's uid, a service's "namespace/hostname") and Authorization
 * resources (keyed by name, "namespace/name"), fed into the StateStore the way the Kubernetes
 * and local-config sources feed it (a whole MeshState per change; ts/state/store.ts).
 *
 * Contracts:
 *   - a response is applied whole or not at all: every resource of it is decoded and converted
 *     (./convert.ts) before anything changes; one that cannot be (a decode error, a resource
 *     of another type, a field refused) refuses the whole response, the state stays as it was,
 *     and the rejections name each refused resource and why (the client NACKs with them).
 *     This is stricter than ztunnel, which applies the good resources of a response and NACKs
 *     the bad ones (src/xds/client.rs handle_single_resource): inpod never holds half of a push.
 *   - nothing is published before every subscribed type has been applied once: workloads are
 *     never served without the policies istiod sent with them (ztunnel holds its readiness
 *     until then; a ZDS-driven inpod proxy would serve pods meanwhile).
 *   - updates are applied before removals, as ztunnel's handler does.
 *   - after a reconnect, what istiod sends is applied to the state kept from the last stream.
 */
import type { Logger } from '../util/log.js';
import type { StateStore } from '../state/store.js';
import type { Authorization } from '../policy/rbac.js';
import type { MeshState } from '../state/types.js';
import type protobuf from 'protobufjs';
import { MeshError } from '../util/errors.js';
import { ADDRESS_TYPE, AUTHORIZATION_TYPE, T, decodePlain, type Resource } from './proto.js';
import { addressFromXds, authorizationFromXds, type AddressValue, type XAddress, type XAuthorization } from './convert.js';

/** A resource that was not applied, and why (the NACK's error_detail lists them). */
export interface Rejection {
  name: string;
  reason: string;
}

/** Applies one type's responses, whole or not at all; returns the rejections (none: applied). */
export interface TypeHandler {
  apply(resources: readonly Resource[], removed: readonly string[]): Rejection[];
  /** never looked up on demand, always subscribed whole (ztunnel's Handler::no_on_demand: policies) */
  noOnDemand?: boolean;
}

/** Decodes and converts every resource; the new map only if all of them could be. */
function prepare<V>(
  typeUrl: string,
  current: ReadonlyMap<string, V>,
  resources: readonly Resource[],
  removed: readonly string[],
  read: (bytes: Uint8Array) => V,
): { next: Map<string, V> } | { rejections: Rejection[] } {
  const next = new Map(current);
  const rejections: Rejection[] = [];
  for (const r of resources) {
    try {
      if (!r.resource) throw new MeshError('INPOD_ERR_XDS_RESOURCE', 'XDS payload without resource');
      if (r.resource.type_url !== typeUrl) throw new MeshError('INPOD_ERR_XDS_RESOURCE', `holds a ${r.resource.type_url || 'resource of no type'}, in a response of ${typeUrl}`);
      next.set(r.name, read(r.resource.value));
    } catch (e) {
      rejections.push({ name: r.name, reason: (e as Error).message });
    }
  }
  if (rejections.length) return { rejections };
  for (const name of removed) next.delete(name);
  return { next };
}

/** Decodes a resource's bytes as `type`, then converts it; either failure refuses the resource. */
function reader<X, V>(type: protobuf.Type, convert: (x: X) => V): (bytes: Uint8Array) => V {
  return (bytes) => {
    let x: X;
    try {
      x = decodePlain<X>(type, bytes);
    } catch (e) {
      throw new MeshError('INPOD_ERR_XDS_RESOURCE', `decode: ${(e as Error).message}`, { cause: e });
    }
    return convert(x);
  };
}
const readAddress = reader<XAddress, AddressValue>(T.address, addressFromXds);
const readAuthorization = reader<XAuthorization, Authorization>(T.authorization, (a) => authorizationFromXds(a));

/** xDS brings ztunnel-format Authorizations only; no Kubernetes AuthorizationPolicy objects. */
const NO_POLICIES: never[] = [];

export class WdsState {
  #addresses = new Map<string, AddressValue>();
  #authorizations = new Map<string, Authorization>();
  /** the published list of #authorizations, rebuilt only when that map is replaced */
  #authList?: { from: Map<string, Authorization>; list: Authorization[] };
  readonly #applied = new Set<string>();
  /** the types whose first response publishing waits for */
  readonly #types: string[];

  /**
   * `onDemand`: addresses are looked up one by one (XdsClient.demand), so only the policies are
   * waited for before the first publish (ztunnel's types_to_expect leaves on-demand types out).
   */
  constructor(
    private readonly store: StateStore,
    private readonly log: Logger,
    opts: { onDemand?: boolean } = {},
  ) {
    this.#types = opts.onDemand ? [AUTHORIZATION_TYPE] : [ADDRESS_TYPE, AUTHORIZATION_TYPE];
  }

  /** The handlers to subscribe, by type URL. */
  handlers(): Map<string, TypeHandler> {
    return new Map<string, TypeHandler>([
      [ADDRESS_TYPE, { apply: (res, rm) => this.#apply(ADDRESS_TYPE, res, rm) }],
      [AUTHORIZATION_TYPE, { apply: (res, rm) => this.#apply(AUTHORIZATION_TYPE, res, rm), noOnDemand: true }],
    ]);
  }

  /** Every type waited for has been applied once, and the state is in the store. */
  get published(): boolean {
    return this.#types.every((t) => this.#applied.has(t));
  }

  #apply(typeUrl: string, resources: readonly Resource[], removed: readonly string[]): Rejection[] {
    if (typeUrl === ADDRESS_TYPE) {
      const r = prepare(typeUrl, this.#addresses, resources, removed, readAddress);
      if ('rejections' in r) return this.#refuse(typeUrl, r.rejections);
      this.#addresses = r.next;
    } else {
      const r = prepare(typeUrl, this.#authorizations, resources, removed, readAuthorization);
      if ('rejections' in r) return this.#refuse(typeUrl, r.rejections);
      this.#authorizations = r.next;
    }
    this.#applied.add(typeUrl);
    if (this.published) this.store.set(this.state());
    else this.log.info({ typeUrl, waitingFor: this.#types.filter((t) => !this.#applied.has(t)) }, 'xds type received; state held until every type has arrived');
    return [];
  }

  #refuse(typeUrl: string, rejections: Rejection[]): Rejection[] {
    const e = new MeshError('INPOD_ERR_XDS_RESOURCE', `istiod sent ${rejections.length} ${typeUrl} resource(s) the proxy cannot apply; the whole response is refused (NACK) and the last good state kept: ${rejections.map((r) => `${r.name}: ${r.reason}`).join('; ')}`);
    this.store.refuse(e);
    return rejections;
  }

  /** The state as it stands (what the store holds once published). */
  state(): MeshState {
    const workloads = [];
    const services = [];
    for (const a of this.#addresses.values()) {
      if (a.kind === 'workload') workloads.push(a.workload);
      else services.push(a.service);
    }
    // the same policy arrays while no Authorization changed: an address-only push must not make
    // every open connection be decided again (PolicyWatcher keys on their identity)
    if (this.#authList?.from !== this.#authorizations) this.#authList = { from: this.#authorizations, list: [...this.#authorizations.values()] };
    return { workloads, services, policies: NO_POLICIES, authorizations: this.#authList.list };
  }
}
