/**
 * Istio AuthorizationPolicy -> ztunnel's Authorization, as istiod translates it for ztunnel
 * (istio pilot/pkg/serviceregistry/ambient/authorization.go `convertAuthorizationPolicy`,
 * `handleRule`), with every field of the current API (security.istio.io/v1, the CRD schema in
 * istio manifests/charts/base/files/crd-all.gen.yaml) checked (pure).
 *
 * What istiod does, and so what this does:
 * - targetRef/targetRefs: meant for a waypoint; never sent to ztunnel, so not enforced here.
 * - action AUDIT and CUSTOM: not supported by ztunnel; not sent, so not enforced here.
 * - no selector: NAMESPACE scope, GLOBAL in the root namespace; a selector: WORKLOAD_SELECTOR,
 *   attached to workloads of the policy's namespace, or of every namespace from the root one.
 * - `istio.io/dry-run` (Go ParseBool; unparseable means enforced): evaluated, never enforced.
 * - HTTP attributes (hosts, methods, paths, their not-forms, requestPrincipals, remoteIpBlocks,
 *   and `when` keys other than source.ip/namespace/principal, destination.ip/port) are left out:
 *   an ALLOW rule that used one grants nothing; a DENY rule keeps the rest, and a part left
 *   empty never matches, so a DENY may be left with no effect (istiod warns the same).
 * - serviceAccounts "sa" means the policy's own namespace; "ns/sa" names one.
 *
 * Where this is stricter than istiod (which relies on its validating webhook, absent for local
 * manifests), so that a policy never fails open:
 * - a field this proxy does not know, or a value of the wrong shape (a port that is not a decimal
 *   string, an address that does not parse, an empty string), makes an ALLOW rule grant nothing
 *   and a DENY rule match every connection; outside the rules (spec, selector, action), it makes
 *   an ALLOW policy grant nothing and a DENY policy match every connection in its scope.
 * - trustDomains/notTrustDomains, which istiod silently leaves out of ztunnel's form (widening an
 *   ALLOW), are enforced as the API and Istio's other proxies define them (the peer's trust domain).
 * - a selector with no labels selects every workload in its scope (istiod attaches it nowhere
 *   when matchLabels is absent, everywhere when it is empty).
 */
import { isIP } from 'node:net';
import type { Authorization, RbacMatch, ServiceAccountMatch, StringMatch } from './rbac.js';
import { isEmptyMatch } from './rbac.js';

export const ROOT_NAMESPACE = 'istio-system';

export interface PolicyNote {
  level: 'info' | 'warn';
  /** the field it is about, as a path into the object ("spec.rules[0].from[0].source.x") */
  field?: string;
  message: string;
}

export interface TranslatedPolicy {
  /** "namespace/name" */
  key: string;
  /** absent when the policy is not enforced at the pod (see `skipped`) */
  authorization?: Authorization;
  /** WorkloadSelector scope: the labels a workload must carry */
  selector?: Record<string, string>;
  skipped?: string;
  notes: PolicyNote[];
  /** the fields this proxy could not read (unknown or malformed), and why; empty when all were read */
  problems: { field: string; why: string }[];
  /** what identifies this version of the policy, for reporting its notes once */
  version: string;
}

type Obj = Record<string, unknown>;
/** a value that does not parse, and why */
class Bad {
  constructor(readonly why: string) {}
}
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Istio's attribute names (pkg/config/security/security.go); only the first five reach ztunnel. */
const L4_WHEN = new Set(['source.ip', 'source.namespace', 'source.principal', 'destination.ip', 'destination.port']);
const L7_WHEN = new Set(['remote.ip', 'source.serviceAccount', 'source.trustDomain', 'request.auth.principal', 'request.auth.audiences', 'request.auth.presenter', 'connection.sni']);
const L7_WHEN_PREFIX = [/^request\.headers\[.+\]$/, /^request\.auth\.claims\[.+\]$/, /^experimental\.envoy\.filters\..+/];

const SOURCE_L4 = ['principals', 'notPrincipals', 'namespaces', 'notNamespaces', 'ipBlocks', 'notIpBlocks', 'serviceAccounts', 'notServiceAccounts', 'trustDomains', 'notTrustDomains'];
const SOURCE_L7 = ['requestPrincipals', 'notRequestPrincipals', 'remoteIpBlocks', 'notRemoteIpBlocks'];
const OPERATION_L7 = ['hosts', 'notHosts', 'methods', 'notMethods', 'paths', 'notPaths'];

/** Collects what a part of the policy is made of: its matches, the HTTP attributes left out, the problems. */
class Walk {
  readonly l7 = new Set<string>();
  /** how many times an HTTP attribute was found (per rule: compare before and after) */
  l7Hits = 0;
  readonly problems: { field: string; why: string }[] = [];
  http(name: string): void {
    this.l7.add(name);
    this.l7Hits++;
  }
  problem(field: string, why: string): undefined {
    this.problems.push({ field, why });
    return undefined;
  }
  /** the keys of `o` that are not in `known` are problems */
  keys(path: string, o: Obj, known: readonly string[]): void {
    for (const k of Object.keys(o)) if (!known.includes(k)) this.problem(path ? `${path}.${k}` : k, 'not a field of AuthorizationPolicy this proxy knows');
  }
  /** a list of non-empty strings, or undefined (absent, null or empty: not set) */
  strings(path: string, v: unknown): string[] | undefined {
    if (v === undefined || v === null) return undefined;
    if (!Array.isArray(v)) return this.problem(path, 'expected a list of strings');
    for (const [i, x] of v.entries()) if (typeof x !== 'string' || x === '') return this.problem(`${path}[${i}]`, `expected a non-empty string, got ${JSON.stringify(x)}`);
    return v.length ? (v as string[]) : undefined;
  }
  typed<T>(path: string, v: unknown, parse: (s: string) => T | Bad): T[] | undefined {
    return this.parsed(path, this.strings(path, v), parse);
  }
  /** each string parsed; one that does not parse is a problem */
  parsed<T>(path: string, xs: string[] | undefined, parse: (s: string) => T | Bad): T[] | undefined {
    if (!xs) return undefined;
    const out: T[] = [];
    for (const [i, s] of xs.entries()) {
      const r = parse(s);
      if (r instanceof Bad) return this.problem(`${path}[${i}]`, r.why);
      out.push(r);
    }
    return out;
  }
}

/** istiod `stringToMatch`: "*" presence, "*x" suffix, "x*" prefix, else exact. */
function stringMatch(v: string): StringMatch {
  if (v === '*') return { Presence: [] };
  if (v.startsWith('*')) return { Suffix: v.slice(1) };
  if (v.endsWith('*')) return { Prefix: v.slice(0, -1) };
  return { Exact: v };
}

/** istiod `stringToPort` (ParseUint base 10, at most 65535), refusing what it would drop. */
function port(s: string): number | Bad {
  return /^[0-9]+$/.test(s) && Number(s) <= 65535 ? Number(s) : new Bad(`expected a port number as a decimal string, got ${JSON.stringify(s)}`);
}

/** istiod `stringToIP` (an address, or a prefix) as "ip/len", refusing what it would drop. */
function address(s: string): string | Bad {
  const [ip, len, extra] = s.split('/');
  const fam = isIP(ip ?? '');
  const max = fam === 4 ? 32 : 128;
  if (fam === 0 || extra !== undefined || (len !== undefined && !(/^(0|[1-9][0-9]{0,2})$/.test(len) && Number(len) <= max))) {
    return new Bad(`expected an IP address or CIDR prefix, got ${JSON.stringify(s)}`);
  }
  return `${ip}/${len ?? max}`;
}

/** istiod `stringToServiceAccountMatch`, with the webhook's CheckServiceAccount rules. */
function serviceAccount(ns: string): (s: string) => ServiceAccountMatch | Bad {
  return (s) => {
    const parts = s.split('/');
    if (s.includes('*') || parts.length > 2 || parts.some((x) => x === '') || s.length > 320) {
      return new Bad(`expected "serviceAccount" or "namespace/serviceAccount" (no wildcards), got ${JSON.stringify(s)}`);
    }
    return parts.length === 2 ? { namespace: parts[0]!, serviceAccount: parts[1]! } : { namespace: ns, serviceAccount: s };
  };
}

/** the webhook's CheckTrustDomainValues: one wildcard at most, at the start or end; no "/" */
function trustDomain(s: string): StringMatch | Bad {
  const stars = s.split('*').length - 1;
  if (s.includes('/') || stars > 1 || (stars === 1 && !s.startsWith('*') && !s.endsWith('*'))) return new Bad(`expected a trust domain, "*", "prefix*" or "*suffix", got ${JSON.stringify(s)}`);
  return stringMatch(s);
}

/** Sets each non-empty list on the match (an empty list means "not set", as in protobuf). */
function put(m: RbacMatch, fields: Partial<RbacMatch>): RbacMatch {
  for (const [k, v] of Object.entries(fields)) if (Array.isArray(v) && v.length) (m as Record<string, unknown>)[k] = v;
  return m;
}

/** A non-empty list of mappings, each with exactly the one key `inner` holding a mapping. */
function entries(w: Walk, path: string, v: unknown, inner: string): [string, Obj][] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v) || v.length === 0) return w.problem(path, `expected a non-empty list of {${inner}: ...}`) ?? [];
  const out: [string, Obj][] = [];
  v.forEach((e, i) => {
    const p = `${path}[${i}]`;
    if (!isObj(e)) return w.problem(p, `expected {${inner}: ...}`);
    w.keys(p, e, [inner]);
    const x = e[inner];
    if (!isObj(x) || Object.keys(x).length === 0) return w.problem(`${p}.${inner}`, 'expected a mapping with at least one field');
    out.push([`${p}.${inner}`, x]);
  });
  return out;
}

/** istiod `handleRule`: the clauses of one rule (to, from, then one per `when`). */
function rule(w: Walk, path: string, r: unknown, ns: string): RbacMatch[][] {
  if (!isObj(r)) return w.problem(path, 'expected a mapping') ?? [];
  w.keys(path, r, ['from', 'to', 'when']);
  const clauses: RbacMatch[][] = [];
  const to = entries(w, `${path}.to`, r.to, 'operation').map(([p, op]) => {
    w.keys(p, op, ['ports', 'notPorts', ...OPERATION_L7]);
    for (const k of OPERATION_L7) if (w.strings(`${p}.${k}`, op[k])) w.http(k);
    return put({}, { destinationPorts: w.typed(`${p}.ports`, op.ports, port), notDestinationPorts: w.typed(`${p}.notPorts`, op.notPorts, port) });
  });
  if (to.length) clauses.push(to);
  const from = entries(w, `${path}.from`, r.from, 'source').map(([p, s]) => {
    w.keys(p, s, [...SOURCE_L4, ...SOURCE_L7]);
    for (const k of SOURCE_L7) if (w.strings(`${p}.${k}`, s[k])) w.http(k);
    const str = (k: string): StringMatch[] | undefined => w.strings(`${p}.${k}`, s[k])?.map(stringMatch);
    return put({}, {
      sourceIps: w.typed(`${p}.ipBlocks`, s.ipBlocks, address),
      notSourceIps: w.typed(`${p}.notIpBlocks`, s.notIpBlocks, address),
      namespaces: str('namespaces'),
      notNamespaces: str('notNamespaces'),
      serviceAccounts: w.typed(`${p}.serviceAccounts`, s.serviceAccounts, serviceAccount(ns)),
      notServiceAccounts: w.typed(`${p}.notServiceAccounts`, s.notServiceAccounts, serviceAccount(ns)),
      principals: str('principals'),
      notPrincipals: str('notPrincipals'),
      trustDomains: w.typed(`${p}.trustDomains`, s.trustDomains, trustDomain),
      notTrustDomains: w.typed(`${p}.notTrustDomains`, s.notTrustDomains, trustDomain),
    });
  });
  if (from.length) clauses.push(from);
  if (r.when !== undefined && r.when !== null && !Array.isArray(r.when)) w.problem(`${path}.when`, 'expected a list of {key, values, notValues}');
  for (const [i, c] of (Array.isArray(r.when) ? r.when : []).entries()) {
    const p = `${path}.when[${i}]`;
    if (!isObj(c)) {
      w.problem(p, 'expected {key, values, notValues}');
      continue;
    }
    w.keys(p, c, ['key', 'values', 'notValues']);
    const key = c.key;
    const values = w.strings(`${p}.values`, c.values);
    const notValues = w.strings(`${p}.notValues`, c.notValues);
    if (typeof key !== 'string' || key === '') {
      w.problem(`${p}.key`, 'expected an attribute name');
      continue;
    }
    if (!values && !notValues) w.problem(p, `expected values or notValues for ${key}`);
    const m: RbacMatch = {};
    if (L4_WHEN.has(key)) {
      const get = <T>(parse: (s: string) => T | Bad): [T[] | undefined, T[] | undefined] => [w.parsed(`${p}.values`, values, parse), w.parsed(`${p}.notValues`, notValues, parse)];
      if (key === 'source.ip') [m.sourceIps, m.notSourceIps] = get(address);
      else if (key === 'destination.ip') [m.destinationIps, m.notDestinationIps] = get(address);
      else if (key === 'destination.port') [m.destinationPorts, m.notDestinationPorts] = get(port);
      else if (key === 'source.namespace') [m.namespaces, m.notNamespaces] = [values?.map(stringMatch), notValues?.map(stringMatch)];
      else [m.principals, m.notPrincipals] = [values?.map(stringMatch), notValues?.map(stringMatch)];
    } else if (L7_WHEN.has(key) || L7_WHEN_PREFIX.some((re) => re.test(key))) {
      w.http(key);
    } else {
      w.problem(`${p}.key`, `${JSON.stringify(key)} is not an attribute this proxy knows`);
    }
    clauses.push([put({}, m)]);
  }
  return clauses;
}

/** istiod `hasEffectiveRules`: some rule can match once the empty matches are skipped. */
function hasEffectiveRules(rules: RbacMatch[][][]): boolean {
  return rules.some((r) => r.every((clause) => clause.length === 0 || clause.some((m) => !isEmptyMatch(m))));
}

/** Go strconv.ParseBool, as istiod reads the dry-run annotation. */
function parseBool(v: string): boolean | undefined {
  if (['1', 't', 'T', 'TRUE', 'true', 'True'].includes(v)) return true;
  if (['0', 'f', 'F', 'FALSE', 'false', 'False'].includes(v)) return false;
  return undefined;
}

/**
 * Translates one policy object (the Kubernetes shape `{metadata, spec}` or the flat local-config
 * shape `{name, namespace, spec, dryRun}`). Never throws: problems are reported in the result
 * and make the policy fail closed as described above.
 */
export function translatePolicy(o: unknown, rootNamespace = ROOT_NAMESPACE): TranslatedPolicy {
  const notes: PolicyNote[] = [];
  const w = new Walk();
  const raw = isObj(o) ? o : {};
  const meta = isObj(raw.metadata) ? raw.metadata : raw;
  const name = typeof meta.name === 'string' ? meta.name : '';
  const namespace = typeof meta.namespace === 'string' ? meta.namespace : '';
  const key = `${namespace}/${name}`;
  const annotations = isObj(meta.annotations) ? meta.annotations : {};
  const spec = raw.spec === undefined || raw.spec === null ? {} : raw.spec;
  const version = JSON.stringify([spec, annotations['istio.io/dry-run'] ?? null, raw.dryRun ?? null]);
  const done = (t: Partial<TranslatedPolicy>): TranslatedPolicy => ({ key, notes, problems: w.problems, version, ...t });
  if (!isObj(o) || !name || !namespace) return done({ skipped: 'not an AuthorizationPolicy with a name and namespace', notes: [{ level: 'warn', message: 'ignored: expected an object with metadata.name and metadata.namespace' }] });

  w.keys('', raw, raw.metadata === undefined ? ['name', 'namespace', 'spec', 'dryRun', 'apiVersion', 'kind'] : ['apiVersion', 'kind', 'metadata', 'spec', 'status']);
  let dryRun = false;
  const ann = annotations['istio.io/dry-run'];
  if (typeof ann === 'string' && ann !== '') {
    const b = parseBool(ann);
    if (b === undefined) notes.push({ level: 'warn', field: 'metadata.annotations["istio.io/dry-run"]', message: `${JSON.stringify(ann)} is not a boolean: the policy is enforced (as istiod does)` });
    dryRun = b ?? false;
  }
  if (raw.metadata === undefined && raw.dryRun !== undefined) {
    if (typeof raw.dryRun === 'boolean') dryRun = raw.dryRun;
    else notes.push({ level: 'warn', field: 'dryRun', message: `${JSON.stringify(raw.dryRun)} is not true or false: the policy is enforced` });
  }
  if (!isObj(spec)) w.problem('spec', 'expected a mapping');
  const s = isObj(spec) ? spec : {};
  w.keys('spec', s, ['selector', 'targetRef', 'targetRefs', 'action', 'provider', 'rules']);

  const targetRefs = Array.isArray(s.targetRefs) && s.targetRefs.length > 0;
  if (targetRefs || (s.targetRef !== undefined && s.targetRef !== null)) {
    notes.push({ level: 'info', field: targetRefs ? 'spec.targetRefs' : 'spec.targetRef', message: 'not enforced at the pod: the policy targets a waypoint or gateway' });
    return done({ skipped: 'has a targetRef: it is for a waypoint, and istiod does not send it to ztunnel' });
  }
  const act = s.action ?? 'ALLOW';
  if (act === 'AUDIT' || act === 'CUSTOM') {
    notes.push({ level: 'warn', field: 'spec.action', message: `not enforced at the pod: ztunnel does not support the ${act} action (istiod does not send it); use a waypoint` });
    return done({ skipped: `action ${act} is not supported by ztunnel` });
  }
  if (act !== 'ALLOW' && act !== 'DENY' && act !== '') w.problem('spec.action', `expected ALLOW, DENY, AUDIT or CUSTOM, got ${JSON.stringify(act)}`);
  const action = act === 'ALLOW' || act === '' ? 'Allow' : 'Deny';

  let selector: Record<string, string> | undefined;
  if (s.selector !== undefined && s.selector !== null) {
    selector = {};
    if (!isObj(s.selector)) w.problem('spec.selector', 'expected {matchLabels: {...}}');
    else {
      w.keys('spec.selector', s.selector, ['matchLabels']);
      const ml = s.selector.matchLabels ?? {};
      if (!isObj(ml)) w.problem('spec.selector.matchLabels', 'expected a mapping of label to value');
      else for (const [k, v] of Object.entries(ml)) {
        if (['string', 'number', 'boolean'].includes(typeof v)) selector[k] = String(v);
        else w.problem(`spec.selector.matchLabels.${k}`, 'expected a label value');
      }
    }
    if (Object.keys(selector).length === 0) notes.push({ level: 'warn', field: 'spec.selector', message: `a selector without labels selects every workload ${namespace === rootNamespace ? 'in the mesh' : `in namespace ${namespace}`}` });
  }
  const scope = selector ? 'WorkloadSelector' : namespace === rootNamespace ? 'Global' : 'Namespace';
  if (s.rules !== undefined && s.rules !== null && !Array.isArray(s.rules)) w.problem('spec.rules', 'expected a list of rules');

  // a problem outside the rules makes the whole policy fail closed
  const policyWide = w.problems.length > 0;
  const rules: RbacMatch[][][] = policyWide && action === 'Deny' ? [[]] : [];
  for (const [i, r] of (Array.isArray(s.rules) && !policyWide ? s.rules : []).entries()) {
    const [problems, l7] = [w.problems.length, w.l7Hits];
    const clauses = rule(w, `spec.rules[${i}]`, r, namespace);
    // a rule this proxy cannot fully read never grants, and always denies
    if (w.problems.length > problems) {
      if (action === 'Deny') rules.push([]);
      continue;
    }
    // istiod: "L7 policies never match for ALLOW"; a DENY keeps its (possibly empty) matches
    if (action === 'Allow' && w.l7Hits > l7) continue;
    rules.push(clauses);
  }

  const effect = policyWide
    ? action === 'Deny' ? 'this DENY policy matches every connection in its scope' : 'this ALLOW policy grants nothing'
    : action === 'Deny' ? 'this DENY rule matches every connection' : 'this ALLOW rule grants nothing';
  for (const p of w.problems) notes.push({ level: 'warn', field: p.field, message: `${p.why}: ${effect}` });
  if (w.l7.size > 0) {
    const found = [...w.l7].sort().join(', ');
    const consequence = action === 'Deny' && !hasEffectiveRules(rules)
      ? 'after leaving them out this DENY policy has nothing ztunnel can enforce and has no effect; use a waypoint and a targetRef'
      : action === 'Deny'
        ? 'this DENY policy is enforced without them, which is more restrictive than written'
        : 'ALLOW rules that use them are left out and grant nothing, which is more restrictive than written';
    notes.push({ level: 'warn', message: `ztunnel does not enforce HTTP attributes (found: ${found}): ${consequence}` });
  }
  const authorization: Authorization = { name, namespace, scope, action, rules, dryRun };
  return done({ authorization, selector });
}
