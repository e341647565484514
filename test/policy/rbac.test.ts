/**
 * The evaluator against ztunnel's own cases (ztunnel src/rbac.rs tests, state.rs assert_rbac):
 * the same policies and connections give the same answers.
 */
import { describe, expect, it } from 'vitest';
import { decide, matches, stringMatches, type Authorization, type Connection, type RbacMatch, type StringMatch } from '../../ts/policy/rbac.js';

const plaintext: Connection = { srcIp: '127.0.0.1', dstIp: '127.0.0.2', dstPort: 8080 };
const tls: Connection = { ...plaintext, srcIdentity: { trustDomain: 'td', namespace: 'namespace', serviceAccount: 'account' } };
const tlsAlt: Connection = { srcIp: '127.0.0.3', dstIp: '127.0.0.4', dstPort: 9090, srcIdentity: { trustDomain: 'td-alt', namespace: 'ns-alt', serviceAccount: 'sa=alt' } };
const pol = (rules: RbacMatch[][][], o: Partial<Authorization> = {}): Authorization => ({ name: 'p', namespace: 'namespace', scope: 'Global', action: 'Allow', rules, dryRun: false, ...o });
const one = (m: RbacMatch): Authorization => pol([[[m]]]);

describe('ztunnel rbac evaluation', () => {
  it('treats an empty match as matching nothing, an empty clause or rule as matching everything, no rules as nothing (rbac_empty_policy)', () => {
    expect(matches(pol([[[{}]]]), plaintext)).toBe(false);
    expect(matches(pol([[[]]]), plaintext)).toBe(true);
    expect(matches(pol([[]]), plaintext)).toBe(true);
    expect(matches(pol([]), plaintext)).toBe(false);
  });

  it('ORs the matches of a clause and ANDs the clauses of a rule (rbac_nesting)', () => {
    const p = pol([[[{ namespaces: [{ Exact: 'a' }] }, { namespaces: [{ Exact: 'b' }] }], [{ destinationPorts: [80] }]]]);
    const c = (ns: string, port: number): Connection => ({ srcIp: '127.0.0.1', dstIp: '127.0.0.2', dstPort: port, srcIdentity: { trustDomain: 'td', namespace: ns, serviceAccount: 'account' } });
    expect([matches(p, c('a', 80)), matches(p, c('b', 80)), matches(p, c('bad', 80)), matches(p, c('b', 12345))]).toEqual([true, true, false, false]);
  });

  it('ORs the rules of a policy (rbac_multi_rule)', () => {
    const p = pol([[[{ namespaces: [{ Exact: 'a' }] }]], [[{ namespaces: [{ Exact: 'b' }] }]]]);
    const c = (ns: string): Connection => ({ ...tls, srcIdentity: { trustDomain: 'td', namespace: ns, serviceAccount: 'account' } });
    expect([matches(p, c('a')), matches(p, c('b')), matches(p, c('bad'))]).toEqual([true, true, false]);
  });

  it.each<[string, RbacMatch, [boolean, boolean, boolean]]>([
    ['namespaces', { namespaces: [{ Exact: 'namespace' }] }, [false, true, false]],
    ['notNamespaces', { notNamespaces: [{ Exact: 'namespace' }] }, [true, false, true]],
    ['serviceAccounts', { serviceAccounts: [{ namespace: 'namespace', serviceAccount: 'account' }] }, [false, true, false]],
    ['notServiceAccounts', { notServiceAccounts: [{ namespace: 'namespace', serviceAccount: 'account' }] }, [true, false, true]],
    ['principals', { principals: [{ Exact: 'td/ns/namespace/sa/account' }] }, [false, true, false]],
    ['notPrincipals', { notPrincipals: [{ Exact: 'td/ns/namespace/sa/account' }] }, [true, false, true]],
    ['sourceIps', { sourceIps: ['127.0.0.1/32'] }, [true, true, false]],
    ['notSourceIps', { notSourceIps: ['127.0.0.1/32'] }, [false, false, true]],
    ['destinationIps', { destinationIps: ['127.0.0.2/32'] }, [true, true, false]],
    ['notDestinationIps', { notDestinationIps: ['127.0.0.2/32'] }, [false, false, true]],
    ['a CIDR range, host bits set (cidr_range)', { destinationIps: ['127.0.0.1/24'] }, [true, true, true]],
    ['destinationPorts', { destinationPorts: [8080] }, [true, true, false]],
    ['notDestinationPorts', { notDestinationPorts: [8080] }, [false, false, true]],
    ['trustDomains (inpod extension)', { trustDomains: [{ Exact: 'td' }] }, [false, true, false]],
    ['notTrustDomains (inpod extension)', { notTrustDomains: [{ Exact: 'td' }] }, [true, false, true]],
  ])('%s: plaintext, tls, tls-alt as ztunnel answers', (_n, m, want) => {
    expect([matches(one(m), plaintext), matches(one(m), tls), matches(one(m), tlsAlt)]).toEqual(want);
  });

  it.each<[StringMatch, string, boolean]>([
    [{ Exact: 'foo' }, 'foo', true], [{ Exact: 'foo' }, 'not', false], [{ Exact: 'foo' }, '', false],
    [{ Prefix: 'foo' }, 'foobar', true], [{ Prefix: 'foo' }, 'notfoo', false], [{ Prefix: 'foo' }, '', false],
    [{ Suffix: 'foo' }, 'barfoo', true], [{ Suffix: 'foo' }, 'foonot', false], [{ Suffix: 'foo' }, '', false],
    [{ Presence: [] }, 'foo', true], [{ Presence: [] }, '', false],
  ])('string match %j against %j is %s', (m, v, want) => {
    expect(stringMatches(m, v)).toBe(want);
  });

  it('matches an IPv4-mapped source address as the IPv4 address', () => {
    expect(matches(one({ sourceIps: ['10.0.0.0/8'] }), { ...plaintext, srcIp: '::ffff:10.1.2.3' })).toBe(true);
  });

  // ztunnel's IpNet::contains (the ipnet crate): a CIDR contains addresses of its own family only,
  // the connection's addresses canonical (to_canonical), so an IPv4 client is never inside an
  // IPv6 CIDR, not even ::/0 or the IPv4-mapped range, nor an IPv6 client inside 0.0.0.0/0
  const v4 = { ...plaintext, srcIp: '10.1.2.3', dstIp: '10.1.2.4' };
  const v6 = { ...plaintext, srcIp: 'fd00:200::5', dstIp: 'fd00:200::6' };
  const mapped = { ...plaintext, srcIp: '::ffff:10.1.2.3', dstIp: '::ffff:10.1.2.4' };
  it.each<[string, RbacMatch, [boolean, boolean, boolean]]>([
    ['sourceIps IPv6 /64', { sourceIps: ['fd00:200::/64'] }, [false, true, false]],
    ['sourceIps IPv6 /128', { sourceIps: ['fd00:200::5/128'] }, [false, true, false]],
    ['sourceIps IPv6 /128, another host', { sourceIps: ['fd00:200::7/128'] }, [false, false, false]],
    ['sourceIps IPv6 with host bits set', { sourceIps: ['fd00:200::1/64'] }, [false, true, false]],
    ['sourceIps IPv6 in uppercase, zeros written out', { sourceIps: ['FD00:0200:0:0:0:0:0:5/128'] }, [false, true, false]],
    ['sourceIps ::/0 (IPv6 only)', { sourceIps: ['::/0'] }, [false, true, false]],
    ['sourceIps the IPv4-mapped range (IPv6, matches no IPv4 client)', { sourceIps: ['::ffff:0:0/96'] }, [false, false, false]],
    ['sourceIps 0.0.0.0/0 (IPv4 only)', { sourceIps: ['0.0.0.0/0'] }, [true, false, true]],
    ['sourceIps of both families', { sourceIps: ['10.0.0.0/8', 'fd00:200::/64'] }, [true, true, true]],
    ['notSourceIps IPv6 /64', { notSourceIps: ['fd00:200::/64'] }, [true, false, true]],
    ['notSourceIps ::/0 keeps IPv4 clients', { notSourceIps: ['::/0'] }, [true, false, true]],
    ['destinationIps IPv6 /128', { destinationIps: ['fd00:200::6/128'] }, [false, true, false]],
    ['notDestinationIps IPv6 /64', { notDestinationIps: ['fd00:200::/64'] }, [true, false, true]],
  ])('%s: IPv4, IPv6, IPv4-mapped client as ztunnel answers', (_n, m, want) => {
    expect([matches(one(m), v4), matches(one(m), v6), matches(one(m), mapped)]).toEqual(want);
  });

  it('decides DENY first, then ALLOW; with no ALLOW it allows; dry-run policies are only reported (assert_rbac)', () => {
    const denyAll = pol([[]], { name: 'deny', action: 'Deny' });
    const allowAll = pol([[]], { name: 'allow' });
    const allowNone = pol([], { name: 'none' });
    expect(decide([], tls)).toEqual({ allow: true, reason: 'no ALLOW policy applies', dryRun: [] });
    expect(decide([allowAll, denyAll], tls)).toMatchObject({ allow: false, reason: 'denied by namespace/deny' });
    expect(decide([allowNone], tls)).toMatchObject({ allow: false, reason: 'no ALLOW policy matched (namespace/none)' });
    expect(decide([allowNone, allowAll], tls)).toMatchObject({ allow: true, reason: 'allowed by namespace/allow' });
    expect(decide([{ ...denyAll, dryRun: true }, { ...allowNone, dryRun: true }], tls)).toEqual({
      allow: true, reason: 'no ALLOW policy applies', dryRun: ['namespace/deny would deny', 'no dry-run ALLOW policy would allow (namespace/none)'],
    });
    expect(decide([{ ...allowAll, dryRun: true }, allowNone], tls)).toEqual({ allow: false, reason: 'no ALLOW policy matched (namespace/none)', dryRun: ['namespace/allow would allow'] });
  });
});
