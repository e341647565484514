/**
 * Istio AuthorizationPolicy -> ztunnel's form, against what istiod produces and says
 * (istio pilot/pkg/serviceregistry/ambient/authorization.go and its authorization_test.go cases),
 * plus where this proxy is stricter so that a policy never fails open.
 */
import { describe, expect, it } from 'vitest';
import { translatePolicy } from '../../ts/policy/istio.js';

const ap = (spec: Record<string, unknown>, o: { name?: string; namespace?: string; annotations?: Record<string, string> } = {}) => ({
  apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy',
  metadata: { name: o.name ?? 'p', namespace: o.namespace ?? 'shop', ...(o.annotations ? { annotations: o.annotations } : {}) }, spec,
});
const warnings = (t: ReturnType<typeof translatePolicy>): string[] => t.notes.filter((n) => n.level === 'warn').map((n) => `${n.field ?? ''}: ${n.message}`);

describe('translation as istiod does it', () => {
  it('translates every L4 field into ztunnel matches: to, from, then one clause per when', () => {
    const t = translatePolicy(ap({
      action: 'ALLOW',
      rules: [{
        from: [{ source: { principals: ['cluster.local/ns/a/sa/x', '*'], notPrincipals: ['*/sa/bad'], namespaces: ['front*'], notNamespaces: ['evil'], ipBlocks: ['10.1.0.0/16', '10.2.3.4'], notIpBlocks: ['fd00::/8'] } },
          { source: { serviceAccounts: ['a', 'other/b'], notServiceAccounts: ['c'] } }],
        to: [{ operation: { ports: ['8080', '0'], notPorts: ['22'] } }],
        when: [{ key: 'destination.ip', values: ['10.9.0.0/16'] }, { key: 'source.principal', notValues: ['x*'] }, { key: 'destination.port', values: ['443'] }],
      }],
    }));
    expect(t.notes).toEqual([]);
    expect(t.authorization).toEqual({
      name: 'p', namespace: 'shop', scope: 'Namespace', action: 'Allow', dryRun: false,
      rules: [[
        [{ destinationPorts: [8080, 0], notDestinationPorts: [22] }],
        [{ principals: [{ Exact: 'cluster.local/ns/a/sa/x' }, { Presence: [] }], notPrincipals: [{ Suffix: '/sa/bad' }], namespaces: [{ Prefix: 'front' }], notNamespaces: [{ Exact: 'evil' }], sourceIps: ['10.1.0.0/16', '10.2.3.4/32'], notSourceIps: ['fd00::/8'] },
          { serviceAccounts: [{ namespace: 'shop', serviceAccount: 'a' }, { namespace: 'other', serviceAccount: 'b' }], notServiceAccounts: [{ namespace: 'shop', serviceAccount: 'c' }] }],
        [{ destinationIps: ['10.9.0.0/16'] }],
        [{ notPrincipals: [{ Prefix: 'x' }] }],
        [{ destinationPorts: [443] }],
      ]],
    });
  });

  it('scopes by selector and namespace: NAMESPACE, GLOBAL in the root namespace, WORKLOAD_SELECTOR with labels', () => {
    expect(translatePolicy(ap({ rules: [{}] })).authorization?.scope).toBe('Namespace');
    expect(translatePolicy(ap({ rules: [{}] }, { namespace: 'istio-system' })).authorization?.scope).toBe('Global');
    const sel = translatePolicy(ap({ selector: { matchLabels: { app: 'web' } }, rules: [{}] }, { namespace: 'istio-system' }));
    expect([sel.authorization?.scope, sel.selector]).toEqual(['WorkloadSelector', { app: 'web' }]);
  });

  it('reads an empty rule as a rule matching everything, and no rules as none (ALLOW {} allows all; an empty spec denies all)', () => {
    expect(translatePolicy(ap({ rules: [{}] })).authorization?.rules).toEqual([[]]);
    expect(translatePolicy(ap({})).authorization).toMatchObject({ action: 'Allow', rules: [] });
  });

  it.each([['targetRef', { targetRef: { kind: 'Gateway', group: 'gateway.networking.k8s.io', name: 'waypoint' } }],
    ['targetRefs', { targetRefs: [{ kind: 'Service', group: '', name: 'web' }] }]])('does not enforce a policy with %s at the pod (istiod never sends it to ztunnel)', (_n, ref) => {
    const t = translatePolicy(ap({ ...ref, rules: [{ to: [{ operation: { methods: ['GET'] } }] }] }));
    expect(t.authorization).toBeUndefined();
    expect(t.skipped).toMatch(/waypoint/);
  });

  it('keeps a policy with an empty targetRefs list (GetTargetRefs treats it as absent)', () => {
    expect(translatePolicy(ap({ targetRefs: [], rules: [{}] })).authorization).toBeDefined();
  });

  it.each(['AUDIT', 'CUSTOM'])('does not enforce the %s action at the pod, and says so', (action) => {
    const t = translatePolicy(ap({ action, provider: { name: 'ext' }, rules: [{}] }));
    expect(t.authorization).toBeUndefined();
    expect(warnings(t)).toEqual([`spec.action: not enforced at the pod: ztunnel does not support the ${action} action (istiod does not send it); use a waypoint`]);
  });

  it('reads the dry-run annotation as Go ParseBool does; an unparseable value is enforced, with a warning', () => {
    for (const v of ['true', 'True', 'T', '1']) expect(translatePolicy(ap({ rules: [{}] }, { annotations: { 'istio.io/dry-run': v } })).authorization?.dryRun).toBe(true);
    for (const v of ['false', '0', '']) expect(translatePolicy(ap({ rules: [{}] }, { annotations: { 'istio.io/dry-run': v } })).authorization?.dryRun).toBe(false);
    const t = translatePolicy(ap({ rules: [{}] }, { annotations: { 'istio.io/dry-run': 'yes' } }));
    expect([t.authorization?.dryRun, warnings(t)]).toEqual([false, ['metadata.annotations["istio.io/dry-run"]: "yes" is not a boolean: the policy is enforced (as istiod does)']]);
    expect(translatePolicy({ name: 'p', namespace: 'shop', dryRun: true, spec: { rules: [{}] } }).authorization?.dryRun).toBe(true);
  });

  const from = (source: Record<string, unknown>) => ({ from: [{ source }] });
  it.each<[string, Record<string, unknown>, string, boolean, string]>([
    // the cases of istiod's TestConvertAuthorizationPolicyStatus
    ['an ALLOW rule with HTTP attributes is left out', { rules: [{ ...from({ requestPrincipals: ['example.com/sub-1'] }), to: [{ operation: { methods: ['GET'] } }], when: [{ key: 'request.auth.presenter', values: ['presenter.example.com'] }] }] },
      'methods, request.auth.presenter, requestPrincipals', false, 'ALLOW rules that use them are left out and grant nothing'],
    ['a DENY with only HTTP attributes has no effect', { action: 'DENY', rules: [from({ notRequestPrincipals: ['example.com/sub-1'] })] }, 'notRequestPrincipals', false, 'has no effect'],
    ['a DENY with L4 and HTTP attributes is enforced without them', { action: 'DENY', rules: [from({ principals: ['cluster.local/ns/foo/sa/bar'], notRequestPrincipals: ['example.com/sub-1'] })] }, 'notRequestPrincipals', true, 'enforced without them'],
    ['a DENY with an HTTP-only rule and an L4 rule is enforced', { action: 'DENY', rules: [from({ notRequestPrincipals: ['x'] }), from({ principals: ['cluster.local/ns/foo/sa/bar'] })] }, 'notRequestPrincipals', true, 'enforced without them'],
    ['a DENY with an empty rule and an HTTP-only rule is enforced', { action: 'DENY', rules: [{}, from({ notRequestPrincipals: ['x'] })] }, 'notRequestPrincipals', true, 'enforced without them'],
    ['a DENY with L4 from and an HTTP when has no effect (the empty clause is ANDed)', { action: 'DENY', rules: [{ ...from({ principals: ['cluster.local/ns/foo/sa/bar'] }), when: [{ key: 'request.headers[x-token]', values: ['secret'] }] }] }, 'request.headers[x-token]', false, 'has no effect'],
    ['a DENY with L4 from and HTTP-only to has no effect', { action: 'DENY', rules: [{ ...from({ principals: ['cluster.local/ns/foo/sa/bar'] }), to: [{ operation: { methods: ['GET'] } }] }] }, 'methods', false, 'has no effect'],
    ['remoteIpBlocks are an HTTP attribute for istiod', { action: 'DENY', rules: [from({ remoteIpBlocks: ['1.2.3.4'], namespaces: ['evil'] })] }, 'remoteIpBlocks', true, 'enforced without them'],
    ['remote.ip, source.serviceAccount and source.trustDomain in when are left out as istiod does', { action: 'ALLOW', rules: [{ when: [{ key: 'remote.ip', values: ['1.2.3.4'] }] }, { when: [{ key: 'source.serviceAccount', values: ['shop/a'] }] }, { when: [{ key: 'source.trustDomain', values: ['td'] }] }] },
      'remote.ip, source.serviceAccount, source.trustDomain', false, 'grant nothing'],
  ])('%s', (_n, spec, found, enforceable, says) => {
    const t = translatePolicy(ap(spec));
    expect(warnings(t)).toEqual([expect.stringContaining(`ztunnel does not enforce HTTP attributes (found: ${found})`)]);
    expect(warnings(t)[0]).toContain(says);
    const rules = t.authorization!.rules;
    const effective = rules.some((r) => r.every((c) => c.length === 0 || c.some((m) => Object.keys(m).length > 0)));
    expect(effective).toBe(enforceable);
  });
});

describe('where this proxy is stricter than istiod, so a policy never fails open', () => {
  it('enforces trustDomains, which istiod leaves out of what ztunnel gets', () => {
    const t = translatePolicy(ap({ rules: [from2({ trustDomains: ['td', '*.example', 'corp*', '*'], notTrustDomains: ['old'] })] }));
    expect(t.authorization?.rules).toEqual([[[{ trustDomains: [{ Exact: 'td' }, { Suffix: '.example' }, { Prefix: 'corp' }, { Presence: [] }], notTrustDomains: [{ Exact: 'old' }] }]]]);
  });

  it.each<[string, Record<string, unknown>, string, string]>([
    ['a misspelt source field', from2({ serviceAcounts: ['shop/a'] }), 'spec.rules[0].from[0].source.serviceAcounts', 'not a field of AuthorizationPolicy this proxy knows'],
    ['a field unknown to the rule', { from: [{ source: { namespaces: ['a'] } }], unless: [{}] }, 'spec.rules[0].unless', 'not a field'],
    ['a field unknown to the operation', { to: [{ operation: { ports: ['80'], protocols: ['TCP'] } }] }, 'spec.rules[0].to[0].operation.protocols', 'not a field'],
    ['a field beside source', { from: [{ source: { namespaces: ['a'] }, except: {} }] }, 'spec.rules[0].from[0].except', 'not a field'],
    ['an unknown when attribute', { when: [{ key: 'source.nmespace', values: ['a'] }] }, 'spec.rules[0].when[0].key', '"source.nmespace" is not an attribute this proxy knows'],
    ['a when with neither values nor notValues', { when: [{ key: 'source.ip' }] }, 'spec.rules[0].when[0]', 'expected values or notValues for source.ip'],
    ['a port that is a name', { to: [{ operation: { ports: ['http'] } }] }, 'spec.rules[0].to[0].operation.ports[0]', 'expected a port number as a decimal string, got "http"'],
    ['a port out of range', { to: [{ operation: { notPorts: ['65536'] } }] }, 'spec.rules[0].to[0].operation.notPorts[0]', 'expected a port number'],
    ['a port written as a number, not a string', { to: [{ operation: { ports: [8080] } }] }, 'spec.rules[0].to[0].operation.ports[0]', 'expected a non-empty string, got 8080'],
    ['an address that does not parse', from2({ notIpBlocks: ['10.0.0.300'] }), 'spec.rules[0].from[0].source.notIpBlocks[0]', 'expected an IP address or CIDR prefix'],
    ['a prefix length too long', from2({ ipBlocks: ['10.0.0.0/33'] }), 'spec.rules[0].from[0].source.ipBlocks[0]', 'expected an IP address or CIDR prefix'],
    ['a wildcard service account', from2({ serviceAccounts: ['shop/*'] }), 'spec.rules[0].from[0].source.serviceAccounts[0]', 'expected "serviceAccount" or "namespace/serviceAccount" (no wildcards)'],
    ['a service account with two slashes', from2({ notServiceAccounts: ['a/b/c'] }), 'spec.rules[0].from[0].source.notServiceAccounts[0]', 'expected "serviceAccount" or "namespace/serviceAccount"'],
    ['a trust domain with a slash', from2({ trustDomains: ['td/ns'] }), 'spec.rules[0].from[0].source.trustDomains[0]', 'expected a trust domain'],
    ['an empty namespace string', from2({ namespaces: [''] }), 'spec.rules[0].from[0].source.namespaces[0]', 'expected a non-empty string'],
    ['a single string instead of a list', from2({ principals: 'cluster.local/ns/a/sa/x' }), 'spec.rules[0].from[0].source.principals', 'expected a list of strings'],
    ['an empty source', { from: [{ source: {} }] }, 'spec.rules[0].from[0].source', 'expected a mapping with at least one field'],
    ['an empty from list', { from: [] }, 'spec.rules[0].from', 'expected a non-empty list'],
  ])('%s: an ALLOW rule grants nothing and a DENY rule matches everything, with a warning naming the field', (_n, rule, field, why) => {
    const allow = translatePolicy(ap({ action: 'ALLOW', rules: [rule, { from: [{ source: { namespaces: ['front'] } }] }] }));
    expect(allow.authorization?.rules).toEqual([[[{ namespaces: [{ Exact: 'front' }] }]]]);
    expect(warnings(allow)).toContainEqual(expect.stringMatching(new RegExp(`^${esc(field)}: ${esc(why)}.*: this ALLOW rule grants nothing$`)));
    const deny = translatePolicy(ap({ action: 'DENY', rules: [rule] }));
    expect(deny.authorization?.rules).toEqual([[]]);
    expect(warnings(deny)).toContainEqual(expect.stringMatching(new RegExp(`^${esc(field)}: .*this DENY rule matches every connection$`)));
    expect(allow.problems.map((p) => p.field)).toContain(field);
  });

  it.each<[string, Record<string, unknown>, string]>([
    ['an unknown spec field', { rulez: [{}] }, 'spec.rulez'],
    ['an unknown action', { action: 'Deny' }, 'spec.action'],
    ['an unknown selector field', { selector: { matchExpressions: [{ key: 'app' }] } }, 'spec.selector.matchExpressions'],
    ['rules that are not a list', { rules: { from: [] } }, 'spec.rules'],
  ])('%s: the whole ALLOW grants nothing and a DENY matches every connection in its scope', (_n, spec, field) => {
    const allow = translatePolicy(ap({ rules: [{}], ...spec, ...(spec.action ? {} : { action: 'ALLOW' }) }));
    if (!spec.action) expect(allow.authorization).toMatchObject({ action: 'Allow', rules: [] });
    const deny = translatePolicy(ap({ action: 'DENY', rules: [{ from: [{ source: { namespaces: ['x'] } }] }], ...spec }));
    expect(deny.authorization).toMatchObject({ action: 'Deny', rules: [[]] });
    expect(warnings(deny)).toContainEqual(expect.stringMatching(new RegExp(`^${esc(field)}: .*this DENY policy matches every connection in its scope$`)));
  });

  it('reads a selector without labels as selecting every workload in its scope, with a warning', () => {
    const t = translatePolicy(ap({ selector: {}, rules: [{}] }));
    expect([t.selector, warnings(t)]).toEqual([{}, ['spec.selector: a selector without labels selects every workload in namespace shop']]);
  });

  it('ignores what is not a policy at all, saying so', () => {
    const t = translatePolicy({ spec: { action: 'DENY', rules: [{}] } });
    expect([t.authorization, t.skipped]).toEqual([undefined, 'not an AuthorizationPolicy with a name and namespace']);
  });
});

function from2(source: Record<string, unknown>): Record<string, unknown> {
  return { from: [{ source }] };
}
function esc(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
