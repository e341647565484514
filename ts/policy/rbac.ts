/**
 * L4 authorization in ztunnel's own form and with ztunnel's own evaluation (pure).
 *
 * `Authorization` mirrors ztunnel's `rbac::Authorization` (src/rbac.rs), the form istiod sends
 * over xDS (`istio.security.Authorization`, proto/authorization.proto) and ztunnel's local config
 * carries, in the same camelCase serde shape: rules -> clauses -> matches. Every source of policy
 * (Istio AuthorizationPolicy objects translated by ./istio.ts today; xDS and ztunnel local config
 * later) ends here, so there is one evaluator.
 *
 * Semantics (rbac.rs `Authorization::matches`, state.rs `assert_rbac`):
 * - a policy matches if ANY rule matches; a rule if ALL its clauses match (a rule with no
 *   clauses matches every connection); a clause if ANY of its matches does (a clause with no
 *   matches matches; a match with no field set is skipped, so a clause made only of those never
 *   matches); a match if every field it sets matches (ANY value of a positive list, NO value of
 *   a negative one). A policy with no rules never matches.
 * - DENY policies first (any match denies), then ALLOW (when one applies, one must match).
 *   Dry-run policies are evaluated and reported, never enforced.
 * - Principals are compared with the peer's SPIFFE ID without "spiffe://"; namespaces with the
 *   peer's namespace; a plaintext peer (no identity) has neither, so only negative fields match.
 */
import { BlockList, isIP } from 'node:net';
import type { Identity } from '../identity/spiffe.js';
import { canonicalIp } from '../util/sockaddr.js';

export type RbacScope = 'Global' | 'Namespace' | 'WorkloadSelector';
export type RbacAction = 'Allow' | 'Deny';
/** ztunnel's StringMatch, externally tagged as serde writes it. */
export type StringMatch = { Exact: string } | { Prefix: string } | { Suffix: string } | { Presence: [] };
export interface ServiceAccountMatch {
  namespace: string;
  serviceAccount: string;
}

/** One match; unset and empty lists mean "not constrained". Addresses are "ip/len". */
export interface RbacMatch {
  namespaces?: StringMatch[];
  notNamespaces?: StringMatch[];
  serviceAccounts?: ServiceAccountMatch[];
  notServiceAccounts?: ServiceAccountMatch[];
  principals?: StringMatch[];
  notPrincipals?: StringMatch[];
  sourceIps?: string[];
  notSourceIps?: string[];
  destinationIps?: string[];
  notDestinationIps?: string[];
  destinationPorts?: number[];
  notDestinationPorts?: number[];
  /**
   * inpod's extension (not in ztunnel's form): the peer's trust domain, for the Istio API's
   * `source.trustDomains`, which istiod leaves out of what it sends ztunnel (see ./istio.ts).
   */
  trustDomains?: StringMatch[];
  notTrustDomains?: StringMatch[];
}

export interface Authorization {
  name: string;
  namespace: string;
  scope: RbacScope;
  action: RbacAction;
  /** rules (OR) -> clauses (AND) -> matches (OR) */
  rules: RbacMatch[][][];
  dryRun: boolean;
}

/** What the evaluator knows of a connection (ztunnel's `rbac::Connection`). */
export interface Connection {
  srcIp: string;
  dstIp: string;
  dstPort: number;
  /** the verified peer identity; absent for plaintext */
  srcIdentity?: Identity;
}

export interface RbacDecision {
  allow: boolean;
  /** the policy that decided ("namespace/name"), or why none did */
  reason: string;
  /** what dry-run policies would have done */
  dryRun: string[];
}

export function policyKey(p: Pick<Authorization, 'namespace' | 'name'>): string {
  return `${p.namespace}/${p.name}`;
}

export function stringMatches(m: StringMatch, v: string): boolean {
  if ('Exact' in m) return v === m.Exact;
  if ('Prefix' in m) return v.startsWith(m.Prefix);
  if ('Suffix' in m) return v.endsWith(m.Suffix);
  return v !== '';
}

/** A list's CIDRs, one BlockList per family (an address is only ever checked against its own). */
const nets = new WeakMap<readonly string[], { 4: BlockList; 6: BlockList }>();
/**
 * Is `ip` in one of `list`'s CIDRs? As ztunnel's IpNet::contains (the ipnet crate): a CIDR only
 * ever contains addresses of its own family, so `::/0` or `::ffff:0:0/96` never match an IPv4
 * client (node's BlockList alone would match them, mapping IPv4 into IPv6), nor `0.0.0.0/0` an
 * IPv6 one. `ip` is canonical (IPv4-mapped addresses arrive as IPv4).
 */
function inNets(list: readonly string[], ip: string): boolean {
  let bl = nets.get(list);
  if (!bl) {
    bl = { 4: new BlockList(), 6: new BlockList() };
    for (const n of list) {
      const slash = n.indexOf('/');
      const addr = slash < 0 ? n : n.slice(0, slash);
      const fam = isIP(addr);
      const max = fam === 4 ? 32 : 128;
      const len = slash < 0 ? max : Number(n.slice(slash + 1));
      // translation refuses these; in a form from elsewhere they are dropped, as ztunnel drops them
      if (fam === 0 || !Number.isInteger(len) || len < 0 || len > max) continue;
      bl[fam === 4 ? 4 : 6].addSubnet(addr, len, fam === 4 ? 'ipv4' : 'ipv6');
    }
    nets.set(list, bl);
  }
  const fam = isIP(ip);
  if (fam === 4) return bl[4].check(ip, 'ipv4');
  return fam === 6 && bl[6].check(ip, 'ipv6');
}

/** positive: any value matches (or none declared); negative: no value matches (or none declared) */
function field<T>(pos: readonly T[] | undefined, neg: readonly T[] | undefined, test: (x: T) => boolean): boolean {
  return fieldAny(pos, neg, (xs) => xs.some(test));
}

/** `field` with a test of the whole list (address lists are matched as one set) */
function fieldAny<T>(pos: readonly T[] | undefined, neg: readonly T[] | undefined, any: (xs: readonly T[]) => boolean): boolean {
  if (pos?.length && !any(pos)) return false;
  if (neg?.length && any(neg)) return false;
  return true;
}

const FIELDS: (keyof RbacMatch)[] = [
  'namespaces', 'notNamespaces', 'serviceAccounts', 'notServiceAccounts', 'principals', 'notPrincipals', 'sourceIps', 'notSourceIps',
  'destinationIps', 'notDestinationIps', 'destinationPorts', 'notDestinationPorts', 'trustDomains', 'notTrustDomains',
];

/** A match with no field set: ztunnel skips it (it matches nothing, rather than everything). */
export function isEmptyMatch(m: RbacMatch): boolean {
  return FIELDS.every((k) => !m[k]?.length);
}

function matchOne(m: RbacMatch, c: Connection): boolean {
  const id = c.srcIdentity;
  const principal = id ? `${id.trustDomain}/ns/${id.namespace}/sa/${id.serviceAccount}` : '';
  const src = canonicalIp(c.srcIp);
  const dst = canonicalIp(c.dstIp);
  return (
    fieldAny(m.destinationIps, m.notDestinationIps, (xs) => inNets(xs, dst)) &&
    fieldAny(m.sourceIps, m.notSourceIps, (xs) => inNets(xs, src)) &&
    field(m.destinationPorts, m.notDestinationPorts, (p) => p === c.dstPort) &&
    field(m.serviceAccounts, m.notServiceAccounts, (s) => !!id && s.namespace === id.namespace && s.serviceAccount === id.serviceAccount) &&
    // ztunnel matches principals only against a SPIFFE identity; a plaintext peer has none
    field(m.principals, m.notPrincipals, (s) => !!id && stringMatches(s, principal)) &&
    field(m.namespaces, m.notNamespaces, (s) => stringMatches(s, id?.namespace ?? '')) &&
    field(m.trustDomains, m.notTrustDomains, (s) => !!id && stringMatches(s, id.trustDomain))
  );
}

/** Does the policy's rule set match the connection (rbac.rs `Authorization::matches`)? */
export function matches(p: Pick<Authorization, 'rules'>, c: Connection): boolean {
  return p.rules.some((rule) =>
    rule.every((clause) => clause.length === 0 || clause.some((m) => !isEmptyMatch(m) && matchOne(m, c))),
  );
}

/**
 * The decision for one connection, given the policies that apply to its destination workload
 * (state.rs `assert_rbac`): enforced DENY first, then ALLOW; dry-run policies only reported.
 */
export function decide(policies: readonly Authorization[], c: Connection): RbacDecision {
  const dryRun: string[] = [];
  const deny = policies.filter((p) => p.action === 'Deny');
  const allow = policies.filter((p) => p.action === 'Allow');
  for (const p of deny) if (p.dryRun && matches(p, c)) dryRun.push(`${policyKey(p)} would deny`);
  const denied = deny.find((p) => !p.dryRun && matches(p, c));
  if (denied) return { allow: false, reason: `denied by ${policyKey(denied)}`, dryRun };
  const enforced = allow.filter((p) => !p.dryRun);
  const trial = allow.filter((p) => p.dryRun);
  const trialMatch = trial.filter((p) => matches(p, c));
  for (const p of trialMatch) dryRun.push(`${policyKey(p)} would allow`);
  if (enforced.length === 0) {
    if (trial.length > 0 && trialMatch.length === 0) dryRun.push(`no dry-run ALLOW policy would allow (${trial.map(policyKey).join(', ')})`);
    return { allow: true, reason: 'no ALLOW policy applies', dryRun };
  }
  const allowed = enforced.find((p) => matches(p, c));
  if (allowed) return { allow: true, reason: `allowed by ${policyKey(allowed)}`, dryRun };
  return { allow: false, reason: `no ALLOW policy matched (${enforced.map(policyKey).join(', ')})`, dryRun };
}
