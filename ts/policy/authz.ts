/**
 * L4 authorization with Istio's AuthorizationPolicy semantics as ztunnel enforces them (pure).
 *
 * Scope: a policy in the root namespace without selector applies mesh-wide; one in the
 * workload's namespace without selector to the namespace; one with `selector.matchLabels` to
 * the workloads it selects. DENY policies are evaluated first (any match denies), then ALLOW
 * (if any ALLOW policy applies, the connection must match one of them). Dry-run policies are
 * evaluated and reported but not enforced. An L4 proxy cannot see L7 attributes: a rule that
 * uses them never grants (ALLOW) and always matches (DENY), so such a policy denies rather than
 * being silently ignored.
 */
import { isIPv4, BlockList } from 'node:net';

export const ROOT_NAMESPACE = 'istio-system';

export interface Source {
  principals?: string[];
  notPrincipals?: string[];
  namespaces?: string[];
  notNamespaces?: string[];
  ipBlocks?: string[];
  notIpBlocks?: string[];
  remoteIpBlocks?: string[];
  notRemoteIpBlocks?: string[];
  requestPrincipals?: string[];
  notRequestPrincipals?: string[];
}
export interface Operation {
  ports?: string[];
  notPorts?: string[];
  hosts?: string[];
  notHosts?: string[];
  methods?: string[];
  notMethods?: string[];
  paths?: string[];
  notPaths?: string[];
}
export interface Condition {
  key: string;
  values?: string[];
  notValues?: string[];
}
export interface Rule {
  from?: { source: Source }[];
  to?: { operation: Operation }[];
  when?: Condition[];
}
export interface AuthorizationPolicy {
  name: string;
  namespace: string;
  dryRun?: boolean;
  spec: {
    selector?: { matchLabels?: Record<string, string> };
    action?: 'ALLOW' | 'DENY' | 'AUDIT' | 'CUSTOM';
    rules?: Rule[];
  };
}

export interface ConnAttrs {
  /** source identity, absent for plaintext (15006) */
  principal?: string; // "cluster.local/ns/x/sa/y"
  sourceNamespace?: string;
  sourceIp: string;
  destinationIp: string;
  destinationPort: number;
}
export interface Target {
  namespace: string;
  labels: Record<string, string>;
}

export interface AuthzResult {
  allow: boolean;
  /** the policy that decided (namespace/name), or why nothing did */
  reason: string;
  /** dry-run policies that would have decided otherwise */
  dryRun: string[];
}

const L7_OPERATION: (keyof Operation)[] = ['hosts', 'notHosts', 'methods', 'notMethods', 'paths', 'notPaths'];
const L4_CONDITIONS = new Set(['source.ip', 'remote.ip', 'source.namespace', 'source.principal', 'destination.ip', 'destination.port']);

/** Istio string match: exact, "*", "prefix*" or "*suffix". */
function strMatch(pattern: string, v: string | undefined): boolean {
  if (v === undefined) return false;
  if (pattern === '*') return true;
  if (pattern.endsWith('*')) return v.startsWith(pattern.slice(0, -1));
  if (pattern.startsWith('*')) return v.endsWith(pattern.slice(1));
  return pattern === v;
}

function anyStr(patterns: string[] | undefined, v: string | undefined): boolean {
  return (patterns ?? []).some((p) => strMatch(p, v));
}

function inBlocks(blocks: string[] | undefined, ip: string): boolean {
  const bl = new BlockList();
  for (const b of blocks ?? []) {
    const [addr, len] = b.split('/');
    if (!addr || !isIPv4(addr)) continue;
    if (len === undefined) bl.addAddress(addr);
    else bl.addSubnet(addr, Number(len));
  }
  return bl.check(ip);
}

/** Each specified field must match (positive) and not match (negative). */
function fieldMatch<T>(pos: T[] | undefined, neg: T[] | undefined, test: (xs: T[] | undefined) => boolean): boolean {
  if (pos !== undefined && !test(pos)) return false;
  if (neg !== undefined && test(neg)) return false;
  return true;
}

function sourceMatch(s: Source, c: ConnAttrs): boolean {
  return (
    fieldMatch(s.principals, s.notPrincipals, (xs) => anyStr(xs, c.principal)) &&
    fieldMatch(s.namespaces, s.notNamespaces, (xs) => anyStr(xs, c.sourceNamespace)) &&
    fieldMatch(s.ipBlocks, s.notIpBlocks, (xs) => inBlocks(xs, c.sourceIp)) &&
    fieldMatch(s.remoteIpBlocks, s.notRemoteIpBlocks, (xs) => inBlocks(xs, c.sourceIp)) &&
    // request principals come from JWTs (L7): an L4 proxy never has one
    fieldMatch(s.requestPrincipals, s.notRequestPrincipals, () => false)
  );
}

function usesL7(r: Rule): boolean {
  return (r.to ?? []).some((t) => L7_OPERATION.some((k) => t.operation[k] !== undefined)) || (r.when ?? []).some((w) => !L4_CONDITIONS.has(w.key));
}

function operationMatch(o: Operation, c: ConnAttrs): boolean {
  return fieldMatch(o.ports, o.notPorts, (xs) => (xs ?? []).includes(String(c.destinationPort)));
}

function conditionMatch(w: Condition, c: ConnAttrs): boolean {
  const test = (xs: string[] | undefined): boolean => {
    switch (w.key) {
      case 'source.ip':
      case 'remote.ip':
        return inBlocks(xs, c.sourceIp);
      case 'destination.ip':
        return inBlocks(xs, c.destinationIp);
      case 'destination.port':
        return (xs ?? []).includes(String(c.destinationPort));
      case 'source.namespace':
        return anyStr(xs, c.sourceNamespace);
      case 'source.principal':
        return anyStr(xs, c.principal);
      default:
        return false;
    }
  };
  return fieldMatch(w.values, w.notValues, test);
}

/** Does the rule match, as seen by an L4 proxy evaluating an `action` policy? */
function ruleMatch(r: Rule, c: ConnAttrs, action: 'ALLOW' | 'DENY'): boolean {
  if (usesL7(r)) return action === 'DENY';
  const from = !r.from?.length || r.from.some((f) => sourceMatch(f.source ?? {}, c));
  const to = !r.to?.length || r.to.some((t) => operationMatch(t.operation ?? {}, c));
  const when = (r.when ?? []).every((w) => conditionMatch(w, c));
  return from && to && when;
}

function policyMatch(p: AuthorizationPolicy, c: ConnAttrs, action: 'ALLOW' | 'DENY'): boolean {
  const rules = p.spec.rules;
  // ALLOW with no rules allows nothing; DENY with no rules denies nothing (Istio)
  if (!rules || rules.length === 0) return false;
  return rules.some((r) => ruleMatch(r, c, action));
}

export function applies(p: AuthorizationPolicy, t: Target, rootNamespace = ROOT_NAMESPACE): boolean {
  const sel = p.spec.selector?.matchLabels;
  if (p.namespace === rootNamespace && !sel) return true;
  if (p.namespace !== t.namespace) return false;
  if (!sel) return true;
  return Object.entries(sel).every(([k, v]) => t.labels[k] === v);
}

/** The decision for one connection to `target` (pure; DENY first, then ALLOW). */
export function authorize(policies: AuthorizationPolicy[], target: Target, c: ConnAttrs, rootNamespace = ROOT_NAMESPACE): AuthzResult {
  const dryRun: string[] = [];
  const relevant = policies.filter((p) => applies(p, target, rootNamespace));
  const id = (p: AuthorizationPolicy): string => `${p.namespace}/${p.name}`;
  for (const p of relevant.filter((x) => x.spec.action === 'DENY')) {
    if (!policyMatch(p, c, 'DENY')) continue;
    if (p.dryRun) dryRun.push(`${id(p)} would deny`);
    else return { allow: false, reason: `denied by ${id(p)}`, dryRun };
  }
  const allows = relevant.filter((x) => (x.spec.action ?? 'ALLOW') === 'ALLOW');
  const enforced = allows.filter((p) => !p.dryRun);
  for (const p of allows.filter((x) => x.dryRun)) if (!policyMatch(p, c, 'ALLOW')) dryRun.push(`${id(p)} would not allow`);
  if (enforced.length === 0) return { allow: true, reason: 'no ALLOW policy applies', dryRun };
  const match = enforced.find((p) => policyMatch(p, c, 'ALLOW'));
  if (match) return { allow: true, reason: `allowed by ${id(match)}`, dryRun };
  return { allow: false, reason: `no ALLOW policy matched (${enforced.map(id).join(', ')})`, dryRun };
}

/** Accepts the Kubernetes object shape (metadata/spec) or the local-config shape (name/namespace/spec). */
export function normalizePolicy(o: Record<string, unknown>): AuthorizationPolicy {
  const meta = (o.metadata ?? {}) as { name?: string; namespace?: string; annotations?: Record<string, string> };
  return {
    name: String(meta.name ?? o.name ?? ''),
    namespace: String(meta.namespace ?? o.namespace ?? ''),
    dryRun: meta.annotations?.['istio.io/dry-run'] === 'true' || o.dryRun === true,
    spec: (o.spec ?? {}) as AuthorizationPolicy['spec'],
  };
}
