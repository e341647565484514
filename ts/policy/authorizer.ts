/**
 * The proxy's authorizer: an inbound connection decided against the AuthorizationPolicies of the
 * current state, with the attributes ztunnel gives its evaluator (src/state.rs assert_rbac): the
 * peer's verified identity (none for plaintext), source IP, destination IP and port, and the
 * destination workload's namespace, labels and named policies (authorizationPolicies) from the
 * state. Dry-run policies are logged, never enforced.
 */
import type { Logger } from '../util/log.js';
import type { StateStore } from '../state/store.js';
import type { Workload } from '../state/types.js';
import type { Authorizer, ConnContext, Decision } from '../proxy/hooks.js';
import { parseSpiffe } from '../identity/spiffe.js';
import { PolicyCache, type PolicySet, type Selected } from './authz.js';

export class PolicyAuthorizer implements Authorizer {
  /** the state's policies, translated once per snapshot; their warnings logged once per version */
  readonly #policies: PolicyCache;

  /**
   * The policies that apply to each destination workload object, as the policy set `#selectedBy`
   * selects them: decided once per set and workload, not per connection. Another set (any change
   * of the state's policies makes one, PolicyCache) starts it empty; a workload whose namespace,
   * labels or policy names change is another object (the state is never mutated in place). So a
   * connection is never decided by an older selection; the decision itself (rbac.ts decide) is
   * made for every connection.
   */
  #selected = new WeakMap<Workload, Selected>();
  #selectedBy: PolicySet | undefined;

  constructor(private readonly state: StateStore, private readonly log: Logger) {
    this.#policies = new PolicyCache(log.child({ component: 'authz' }));
  }

  /** The policies of the current state as enforced: Istio's translated (once per snapshot) and the local config's. */
  current(): PolicySet {
    const { state } = this.state.snapshot;
    return this.#policies.get(state.policies, state.authorizations);
  }

  /**
   * The destination pod's policies decide. Unknown labels refuse a connection that a selector
   * policy might cover (authz.ts).
   */
  authorize(ctx: ConnContext): Decision {
    const snap = this.state.snapshot;
    const set = this.#policies.get(snap.state.policies, snap.state.authorizations);
    if (set !== this.#selectedBy) {
      this.#selectedBy = set;
      this.#selected = new WeakMap();
    }
    const dstW = snap.byIp.get(ctx.dst.ip);
    const target = { namespace: dstW?.namespace ?? ctx.pod.namespace, labels: dstW?.labels, policyKeys: dstW?.authorizationPolicies };
    let selected = dstW && this.#selected.get(dstW);
    if (!selected) {
      selected = set.forWorkload(target);
      if (dstW) this.#selected.set(dstW, selected);
    }
    const peer = ctx.src.identity ? parseSpiffe(ctx.src.identity) : null;
    const r = set.authorize(target, { srcIp: ctx.src.ip, dstIp: ctx.dst.ip, dstPort: ctx.dst.port, srcIdentity: peer ?? undefined }, selected);
    for (const d of r.dryRun) this.log.info({ dryRun: d, src: ctx.src, dst: ctx.dst }, 'dry-run policy');
    return { allow: r.allow, reason: r.reason };
  }
}
