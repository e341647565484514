/**
 * Which policies apply to a workload, and the decision for a connection to it.
 *
 * Policies arrive in ztunnel's form (./rbac.ts): translated from Istio AuthorizationPolicy
 * objects (./istio.ts), or already in it (ztunnel's local config, ./ztunnel.ts; xDS later).
 * Selection follows istiod and ztunnel (ztunnel src/state.rs `assert_rbac`, src/state/policy.rs;
 * istiod pilot/pkg/serviceregistry/ambient/workloads.go `buildWorkloadPolicies`):
 * - Global scope (root namespace, no selector): every workload;
 * - Namespace scope: the workloads of the policy's namespace;
 * - WorkloadSelector scope: workloads of the policy's namespace, or of any namespace when the
 *   policy is in the root namespace, whose labels include the selector's;
 * - and, whatever its scope, every policy a workload names in its authorizationPolicies (local
 *   config, xDS): state.rs `assert_rbac` chains them in.
 * A connection to a workload whose labels are unknown (not in the state yet) is refused when a
 * selector policy could apply to it: ztunnel never decides without the workload either.
 */
import type { Logger } from '../util/log.js';
import { decide, policyKey, type Authorization, type Connection, type RbacDecision } from './rbac.js';
import { ROOT_NAMESPACE, translatePolicy, type TranslatedPolicy } from './istio.js';

export { ROOT_NAMESPACE };

export interface CompiledPolicy {
  authorization: Authorization;
  /** WorkloadSelector scope from an Istio object: the labels a workload must carry */
  selector?: Record<string, string>;
}

export interface Target {
  namespace: string;
  /** the workload's labels; undefined when the workload is not in the state */
  labels?: Record<string, string>;
  /** policies the control plane attached to the workload by name ("ns/name"; xDS) */
  policyKeys?: readonly string[];
}

/** The policies that apply to one workload (PolicySet.forWorkload). */
export interface Selected {
  policies: Authorization[];
  /** enforced selector policies that might apply but cannot be checked (the workload's labels are unknown) */
  unresolved: string[];
}

export class PolicySet {
  readonly #global: CompiledPolicy[] = [];
  readonly #byNamespace = new Map<string, CompiledPolicy[]>();
  readonly #selecting: CompiledPolicy[] = [];
  readonly #byKey = new Map<string, CompiledPolicy>();

  constructor(policies: readonly CompiledPolicy[], readonly rootNamespace = ROOT_NAMESPACE) {
    for (const p of policies) {
      const a = p.authorization;
      this.#byKey.set(policyKey(a), p);
      if (a.scope === 'Global') this.#global.push(p);
      else if (a.scope === 'Namespace') this.#byNamespace.set(a.namespace, [...(this.#byNamespace.get(a.namespace) ?? []), p]);
      else this.#selecting.push(p);
    }
  }

  get size(): number {
    return this.#byKey.size;
  }

  /** Every policy of the set, in ztunnel's form (for the admin's /config_dump). */
  get authorizations(): Authorization[] {
    return [...this.#byKey.values()].map((p) => p.authorization);
  }

  /**
   * The policies that apply to `t`; `unresolved` names the enforced selector policies that might
   * apply but cannot be checked because the workload's labels are unknown.
   */
  forWorkload(t: Target): Selected {
    const out = [...this.#global, ...(this.#byNamespace.get(t.namespace) ?? [])].map((p) => p.authorization);
    const unresolved: string[] = [];
    for (const p of this.#selecting) {
      const a = p.authorization;
      if (!p.selector || (a.namespace !== t.namespace && a.namespace !== this.rootNamespace)) continue;
      if (t.labels === undefined) {
        if (!a.dryRun) unresolved.push(policyKey(a));
        continue;
      }
      const labels = t.labels;
      if (Object.entries(p.selector).every(([k, v]) => labels[k] === v)) out.push(a);
    }
    for (const k of t.policyKeys ?? []) {
      const p = this.#byKey.get(k);
      if (p && !out.includes(p.authorization)) out.push(p.authorization);
    }
    return { policies: out, unresolved };
  }

  /**
   * The decision for a connection to `t` (pure). `selected`: this set's forWorkload(t), when the
   * caller keeps it (it depends only on this set and `t`).
   */
  authorize(t: Target, c: Connection, selected: Selected = this.forWorkload(t)): RbacDecision {
    const { policies, unresolved } = selected;
    if (unresolved.length) return { allow: false, reason: `destination workload is not in the state: cannot tell whether ${unresolved.join(', ')} select it`, dryRun: [] };
    return decide(policies, c);
  }
}

/** The compiled form of translated policies: those enforced at the pod. */
export function compile(translated: readonly TranslatedPolicy[]): CompiledPolicy[] {
  return translated.flatMap((t) => (t.authorization ? [{ authorization: t.authorization, selector: t.selector }] : []));
}

/** Istio AuthorizationPolicy objects -> the set to decide with (pure; notes are dropped). */
export function policySet(objects: readonly unknown[], rootNamespace = ROOT_NAMESPACE): PolicySet {
  return new PolicySet(compile(objects.map((o) => translatePolicy(o, rootNamespace))), rootNamespace);
}

const NONE: readonly Authorization[] = Object.freeze([]);

/**
 * Translates the state's policy objects once per state snapshot (the arrays' identity) and each
 * object once, and reports each policy version's notes once through `log`, never per connection.
 * `authorizations` (already ztunnel's form) join the set as they are.
 */
export class PolicyCache {
  #src: readonly unknown[] | null = null;
  #srcAuthz: readonly Authorization[] = NONE;
  #set: PolicySet;
  readonly #memo = new WeakMap<object, TranslatedPolicy>();
  /** policy key -> the version whose notes were reported */
  #reported = new Map<string, string>();

  constructor(private readonly log: Logger, readonly rootNamespace = ROOT_NAMESPACE) {
    this.#set = new PolicySet([], rootNamespace);
  }

  get(objects: readonly unknown[], authorizations: readonly Authorization[] = NONE): PolicySet {
    if (objects === this.#src && authorizations === this.#srcAuthz) return this.#set;
    const translated = objects.map((o) => {
      if (typeof o !== 'object' || o === null) return translatePolicy(o, this.rootNamespace);
      let t = this.#memo.get(o);
      if (!t) this.#memo.set(o, (t = translatePolicy(o, this.rootNamespace)));
      return t;
    });
    const reported = new Map<string, string>();
    for (const t of translated) {
      reported.set(t.key, t.version);
      if (this.#reported.get(t.key) === t.version) continue;
      for (const n of t.notes) this.log[n.level]({ policy: t.key, field: n.field }, `authorization policy ${t.key}: ${n.field ? `${n.field}: ` : ''}${n.message}`);
    }
    this.#reported = reported;
    this.#src = objects;
    this.#srcAuthz = authorizations;
    this.#set = new PolicySet([...compile(translated), ...authorizations.map((authorization) => ({ authorization }))], this.rootNamespace);
    return this.#set;
  }
}
