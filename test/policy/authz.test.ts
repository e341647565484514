import { describe, expect, it } from 'vitest';
import { authorize, normalizePolicy, type AuthorizationPolicy, type ConnAttrs } from '../../ts/policy/authz.js';

const target = { namespace: 'shop', labels: { app: 'web', version: 'v1' } };
const from = (o: Partial<ConnAttrs> = {}): ConnAttrs => ({
  principal: 'cluster.local/ns/front/sa/frontend', sourceNamespace: 'front', sourceIp: '10.200.1.2', destinationIp: '10.200.1.3', destinationPort: 8080, ...o,
});
const pol = (spec: AuthorizationPolicy['spec'], o: Partial<AuthorizationPolicy> = {}): AuthorizationPolicy => ({ name: 'p', namespace: 'shop', spec, ...o });
const allow = (rules: AuthorizationPolicy['spec']['rules'], o: Partial<AuthorizationPolicy> = {}) => pol({ action: 'ALLOW', rules }, o);
const deny = (rules: AuthorizationPolicy['spec']['rules'], o: Partial<AuthorizationPolicy> = {}) => pol({ action: 'DENY', rules }, o);

describe('L4 authorization', () => {
  it.each<[string, AuthorizationPolicy[], Partial<ConnAttrs>, boolean]>([
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
    ['from AND to must both match', [allow([{ from: [{ source: { namespaces: ['front'] } }], to: [{ operation: { ports: ['9999'] } }] }])], {}, false],
    ['any rule may match', [allow([{ to: [{ operation: { ports: ['1'] } }] }, { from: [{ source: { namespaces: ['front'] } }] }])], {}, true],
    ['DENY beats ALLOW', [allow([{ from: [{ source: { namespaces: ['front'] } }] }]), deny([{ from: [{ source: { namespaces: ['front'] } }] }], { name: 'd' })], {}, false],
    ['ALLOW with no rules allows nothing', [allow([])], {}, false],
    ['DENY with no rules denies nothing', [deny([])], {}, true],
    ['plaintext (no identity) never matches a principal', [allow([{ from: [{ source: { principals: ['*'] } }] }])], { principal: undefined, sourceNamespace: undefined }, false],
    ['an ALLOW with L7 methods never grants', [allow([{ to: [{ operation: { methods: ['GET'] } }] }])], {}, false],
    ['a DENY with L7 paths denies', [deny([{ to: [{ operation: { paths: ['/admin'] } }] }])], {}, false],
    ['a DENY with an L7 when key denies', [deny([{ when: [{ key: 'request.headers[x-user]', values: ['bob'] }] }])], {}, false],
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
    const p = normalizePolicy({ apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', metadata: { name: 'x', namespace: 'shop', annotations: { 'istio.io/dry-run': 'true' } }, spec: { action: 'DENY' } });
    expect(p).toEqual({ name: 'x', namespace: 'shop', dryRun: true, spec: { action: 'DENY' } });
  });
});
