/**
 * Selection and decision for Istio AuthorizationPolicy objects (the flat local-config shape
 * here): translated as istiod does (./istio.test.ts), evaluated as ztunnel does (./rbac.test.ts).
 */
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { PolicyCache, PolicySet, policySet, type Target } from '../../ts/policy/authz.js';
import type { Connection } from '../../ts/policy/rbac.js';

interface Pol { name: string; namespace: string; dryRun?: boolean; spec: Spec }
interface Spec { selector?: { matchLabels?: Record<string, string> }; action?: string; rules?: Record<string, unknown>[] }
interface Attrs { principal?: string; sourceIp?: string; destinationPort?: number }
type Rules = Spec['rules'];

const target: Target = { namespace: 'shop', labels: { app: 'web', version: 'v1' } };
const from = (o: Attrs = {}): Connection => {
  const a = { principal: 'cluster.local/ns/front/sa/frontend', sourceIp: '10.200.1.2', destinationPort: 8080, ...o };
  const m = a.principal ? /^([^/]+)\/ns\/([^/]+)\/sa\/([^/]+)$/.exec(a.principal) : null;
  return { srcIp: a.sourceIp, dstIp: '10.200.1.3', dstPort: a.destinationPort, srcIdentity: m ? { trustDomain: m[1]!, namespace: m[2]!, serviceAccount: m[3]! } : undefined };
};
const pol = (spec: Spec, o: Partial<Pol> = {}): Pol => ({ name: 'p', namespace: 'shop', spec, ...o });
const allow = (rules: Rules, o: Partial<Pol> = {}) => pol({ action: 'ALLOW', rules }, o);
const deny = (rules: Rules, o: Partial<Pol> = {}) => pol({ action: 'DENY', rules }, o);
const authorize = (policies: Pol[], t: Target, c: Connection) => policySet(policies).authorize(t, c);

describe('L4 authorization', () => {
  it.each<[string, Pol[], Attrs, boolean]>([
    ['no policy allows', [], {}, true],
    ['ALLOW by principal matches', [allow([{ from: [{ source: { principals: ['cluster.local/ns/front/sa/frontend'] } }] }])], {}, true],
    ['ALLOW by principal, another SA is kept out', [allow([{ from: [{ source: { principals: ['cluster.local/ns/front/sa/frontend'] } }] }])], { principal: 'cluster.local/ns/front/sa/other' }, false],
    ['principal prefix wildcard', [allow([{ from: [{ source: { principals: ['cluster.local/ns/front/*'] } }] }])], {}, true],
    ['principal suffix wildcard', [allow([{ from: [{ source: { principals: ['*/sa/frontend'] } }] }])], {}, true],
    ['notPrincipals', [allow([{ from: [{ source: { notPrincipals: ['cluster.local/ns/front/sa/frontend'] } }] }])], {}, false],
    ['namespaces', [allow([{ from: [{ source: { namespaces: ['front'] } }] }])], {}, true],
    ['notNamespaces', [deny([{ from: [{ source: { notNamespaces: ['front'] } }] }])], {}, true],
    ['ipBlocks', [allow([{ from: [{ source: { ipBlocks: ['10.200.1.0/24'] } }] }])], {}, true],
    ['notIpBlocks', [allow([{ from: [{ source: { notIpBlocks: ['10.200.1.2'] } }] }])], {}, false],
    ['ports', [allow([{ to: [{ operation: { ports: ['8080'] } }] }])], {}, true],
    ['notPorts', [allow([{ to: [{ operation: { notPorts: ['8080'] } }] }])], {}, false],
    ['when destination.port', [allow([{ when: [{ key: 'destination.port', values: ['9090'] }] }])], {}, false],
    ['when source.ip', [allow([{ when: [{ key: 'source.ip', values: ['10.200.1.0/24'] }] }])], {}, true],
    ['ipBlocks IPv6, an IPv6 client inside', [allow([{ from: [{ source: { ipBlocks: ['fd00:200::/64'] } }] }])], { sourceIp: 'fd00:200::2' }, true],
    ['ipBlocks IPv6, an IPv6 client outside', [allow([{ from: [{ source: { ipBlocks: ['fd00:200::/120'] } }] }])], { sourceIp: 'fd00:200::1:2' }, false],
    ['ipBlocks IPv6 address alone (a /128)', [allow([{ from: [{ source: { ipBlocks: ['fd00:200::2'] } }] }])], { sourceIp: 'fd00:200::2' }, true],
    ['ipBlocks ::/0 grants no IPv4 client', [allow([{ from: [{ source: { ipBlocks: ['::/0'] } }] }])], {}, false],
    ['ipBlocks 0.0.0.0/0 grants no IPv6 client', [allow([{ from: [{ source: { ipBlocks: ['0.0.0.0/0'] } }] }])], { sourceIp: 'fd00:200::2' }, false],
    ['ipBlocks of both families, an IPv6 client', [allow([{ from: [{ source: { ipBlocks: ['10.200.1.0/24', 'fd00:200::/64'] } }] }])], { sourceIp: 'fd00:200::2' }, true],
    ['notIpBlocks IPv6 keeps the IPv6 client out', [allow([{ from: [{ source: { notIpBlocks: ['fd00:200::/64'] } }] }])], { sourceIp: 'fd00:200::2' }, false],
    ['notIpBlocks IPv6 lets an IPv4 client in', [allow([{ from: [{ source: { notIpBlocks: ['fd00:200::/64'] } }] }])], {}, true],
    ['DENY ipBlocks IPv6 denies the IPv6 client', [deny([{ from: [{ source: { ipBlocks: ['fd00:200::2/128'] } }] }])], { sourceIp: 'fd00:200::2' }, false],
    ['DENY ::/0 leaves IPv4 clients alone', [deny([{ from: [{ source: { ipBlocks: ['::/0'] } }] }])], {}, true],
    ['when source.ip IPv6', [allow([{ when: [{ key: 'source.ip', values: ['fd00:200::/64'] }] }])], { sourceIp: 'fd00:200::2' }, true],
    ['an IPv4-mapped client is its IPv4 address', [allow([{ from: [{ source: { ipBlocks: ['10.200.1.0/24'] } }] }])], { sourceIp: '::ffff:10.200.1.2' }, true],
    ['from AND to must both match', [allow([{ from: [{ source: { namespaces: ['front'] } }], to: [{ operation: { ports: ['9999'] } }] }])], {}, false],
    ['any rule may match', [allow([{ to: [{ operation: { ports: ['1'] } }] }, { from: [{ source: { namespaces: ['front'] } }] }])], {}, true],
    ['DENY beats ALLOW', [allow([{ from: [{ source: { namespaces: ['front'] } }] }]), deny([{ from: [{ source: { namespaces: ['front'] } }] }], { name: 'd' })], {}, false],
    ['ALLOW with no rules allows nothing', [allow([])], {}, false],
    ['DENY with no rules denies nothing', [deny([])], {}, true],
    ['plaintext (no identity) never matches a principal', [allow([{ from: [{ source: { principals: ['*'] } }] }])], { principal: undefined }, false],
    ['an ALLOW with L7 methods never grants', [allow([{ to: [{ operation: { methods: ['GET'] } }] }])], {}, false],
    // These two denied before: an L7 DENY matched everything. istiod leaves HTTP attributes out of
    // what it sends ztunnel, and a DENY left with nothing enforceable has no effect (it warns).
    ['a DENY with only L7 paths has no effect at L4, as istiod translates it', [deny([{ to: [{ operation: { paths: ['/admin'] } }] }])], {}, true],
    ['a DENY with only an L7 when key has no effect at L4, as istiod translates it', [deny([{ when: [{ key: 'request.headers[x-user]', values: ['bob'] }] }])], {}, true],
    ['a DENY with L7 paths and L4 ports is enforced on the ports', [deny([{ to: [{ operation: { paths: ['/admin'], ports: ['8080'] } }] }])], {}, false],
    ['requestPrincipals (JWT) never match at L4', [allow([{ from: [{ source: { requestPrincipals: ['*'] } }] }])], {}, false],
    ['a policy for another namespace does not apply', [deny([{}], { namespace: 'other' })], {}, true],
    ['a root-namespace policy applies mesh-wide', [deny([{ from: [{ source: { namespaces: ['front'] } }] }], { namespace: 'istio-system' })], {}, false],
    ['a selector that does not select the workload does not apply', [pol({ action: 'DENY', selector: { matchLabels: { app: 'db' } }, rules: [{}] })], {}, true],
    ['a selector that selects it applies', [pol({ action: 'DENY', selector: { matchLabels: { app: 'web' } }, rules: [{}] })], {}, false],
    ['a dry-run DENY is not enforced', [deny([{}], { dryRun: true })], {}, true],
    ['a dry-run ALLOW is not enforced', [allow([{ from: [{ source: { namespaces: ['nope'] } }] }], { dryRun: true })], {}, true],
  ])('%s', (_name, policies, attrs, allowed) => {
    expect(authorize(policies, target, from(attrs)).allow).toBe(allowed);
  });

  it('says which policy decided, and what dry-run policies would have done', () => {
    expect(authorize([deny([{}], { name: 'block' })], target, from()).reason).toBe('denied by shop/block');
    const r = authorize([deny([{}], { name: 'trial', dryRun: true })], target, from());
    expect(r).toEqual({ allow: true, reason: 'no ALLOW policy applies', dryRun: ['shop/trial would deny'] });
  });

  it('reads the Kubernetes object shape with the dry-run annotation', () => {
    const set = policySet([{ apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', metadata: { name: 'x', namespace: 'shop', annotations: { 'istio.io/dry-run': 'true' } }, spec: { action: 'DENY', rules: [{}] } }]);
    expect(set.authorize(target, from())).toEqual({ allow: true, reason: 'no ALLOW policy applies', dryRun: ['shop/x would deny'] });
  });
});

describe('which policies apply to a workload', () => {
  const sel = (ns: string, labels: Record<string, string>): Pol => pol({ action: 'DENY', selector: { matchLabels: labels }, rules: [{}] }, { name: `sel-${ns}`, namespace: ns });
  const decided = (policies: Pol[], t: Target): string => policySet(policies).authorize(t, from()).reason;

  it('applies a root-namespace policy with a selector to the workloads it selects in every namespace', () => {
    // before, a selector policy applied only in its own namespace, so this DENY protected nothing
    expect(decided([sel('istio-system', { app: 'web' })], target)).toBe('denied by istio-system/sel-istio-system');
    expect(decided([sel('istio-system', { app: 'db' })], target)).toBe('no ALLOW policy applies');
  });

  it('does not apply a selector policy of another namespace', () => {
    expect(decided([sel('other', { app: 'web' })], target)).toBe('no ALLOW policy applies');
  });

  it('refuses a connection to a workload not in the state when a selector policy might cover it', () => {
    expect(policySet([sel('shop', { app: 'web' })]).authorize({ namespace: 'shop' }, from())).toMatchObject({
      allow: false, reason: 'destination workload is not in the state: cannot tell whether shop/sel-shop select it',
    });
    // namespace-wide policies still decide without labels
    expect(policySet([deny([{ from: [{ source: { namespaces: ['nope'] } }] }])]).authorize({ namespace: 'shop' }, from()).allow).toBe(true);
  });

  it('applies a WorkloadSelector policy the control plane attached by name (xDS)', () => {
    const set = new PolicySet([{ authorization: { name: 'x', namespace: 'shop', scope: 'WorkloadSelector', action: 'Deny', rules: [[]], dryRun: false } }]);
    expect(set.authorize({ ...target, policyKeys: ['shop/x'] }, from()).reason).toBe('denied by shop/x');
    expect(set.authorize(target, from()).allow).toBe(true);
  });
});

describe('the policy cache', () => {
  it('reports the warnings of a policy version once, not per connection, and again when the policy changes', () => {
    const lines: { msg: string; policy: string; field?: string }[] = [];
    const cache = new PolicyCache(pino({ level: 'info' }, { write: (l: string) => void lines.push(JSON.parse(l)) }));
    const bad = { name: 'typo', namespace: 'shop', spec: { action: 'ALLOW', rules: [{ from: [{ source: { serviceAcounts: ['shop/a'] } }] }] } };
    for (let i = 0; i < 5; i++) cache.get([bad]).authorize(target, from());
    // a new snapshot with an equal copy of the policy (an informer resync) says nothing new
    cache.get([structuredClone(bad)]);
    expect(lines).toEqual([expect.objectContaining({ policy: 'shop/typo', field: 'spec.rules[0].from[0].source.serviceAcounts', msg: expect.stringContaining('this ALLOW rule grants nothing') })]);
    cache.get([{ ...bad, spec: { ...bad.spec, rules: [{ from: [{ source: { serviceAcount: ['shop/a'] } }] }] } }]);
    expect(lines.map((l) => l.field)).toEqual(['spec.rules[0].from[0].source.serviceAcounts', 'spec.rules[0].from[0].source.serviceAcount']);
  });

  it('translates once per snapshot: the same array gives the same set', () => {
    const cache = new PolicyCache(pino({ level: 'silent' }));
    const raw = [allow([{}])];
    expect(cache.get(raw)).toBe(cache.get(raw));
    expect(cache.get(raw).size).toBe(1);
  });
});
