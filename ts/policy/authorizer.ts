/**
 * The proxy's authorizer: an inbound connection decided against the AuthorizationPolicies of the
 * current state, with the attributes ztunnel gives its evaluator (src/state.rs assert_rbac): the
 * peer's verified identity (none for plaintext), source IP, destination IP and port, and the
 * destination workload's namespace, labels and named policies (authorizationPolicies) from the
 * state. Dry-run policies are logged, never enforced.
 */
import type { Logger } from '../util/log.js';
import type { StateStore } from '../state/store.js';
import type { Authorizer, ConnContext, Decision } from '../proxy/hooks.js';
import { parseSpiffe } from '../identity/spiffe.js';
import { PolicyCache } from './authz.js';

export class PolicyAuthorizer implements Authorizer {
  /** the state's policies, translated once per snapshot; their warnings logged once per version */
  readonly #policies: PolicyCache;

  constructor(private readonly state: StateStore, private readonly log: Logger) {
    this.#policies = new PolicyCache(log.child({ component: 'authz' }));
  }

  /**
   * The destination pod's policies decide. Unknown labels refuse a connection that a selector
   * policy might cover (authz.ts).
   */
  authorize(ctx: ConnContext): Decision {
    const snap = this.state.snapshot;
    const dstW = snap.byIp.get(ctx.dst.ip);
    const peer = ctx.src.identity ? parseSpiffe(ctx.src.identity) : null;
    const r = this.#policies.get(snap.state.policies, snap.state.authorizations).authorize(
      { namespace: dstW?.namespace ?? ctx.pod.namespace, labels: dstW?.labels, policyKeys: dstW?.authorizationPolicies },
      { srcIp: ctx.src.ip, dstIp: ctx.dst.ip, dstPort: ctx.dst.port, srcIdentity: peer ?? undefined },
    );
    for (const d of r.dryRun) this.log.info({ dryRun: d, src: ctx.src, dst: ctx.dst }, 'dry-run policy');
    return { allow: r.allow, reason: r.reason };
  }
}
