/**
 * AuthorizationPolicy as an attacker and a careless operator would try it: every field of the
 * Istio API, as ALLOW and as DENY, against two service accounts of one namespace (shop/a, shop/b),
 * the same service-account name in another namespace (other/a) and a plaintext client with no
 * identity. Each policy goes through the proxy's own authorizer (PolicyAuthorizer.authorize: the
 * state's policies, the connection's identity, IPs and port) as a connection to shop/web on 8080
 * would.
 *
 * What is expected follows istiod's translation for ztunnel (istio
 * pilot/pkg/serviceregistry/ambient/authorization.go) and ztunnel's evaluation (src/rbac.rs),
 * except where those would fail open (ts/policy/istio.ts says where): a policy never fails open.
 * Then one row end to end through the real proxy: the serviceAccounts fail-open of issue 13.
 */
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PolicyAuthorizer } from '../../ts/policy/authorizer.js';
import { StateStore } from '../../ts/state/store.js';
import { parseLocalConfig } from '../../ts/state/localconfig.js';
import type { Policy, Workload } from '../../ts/state/types.js';
import type { ConnContext } from '../../ts/proxy/hooks.js';
import { type LabPod, type PodShell, until } from '../netns/lab.js';
import { Rig } from '../netns/rig.js';

type Client = 'shop/a' | 'shop/b' | 'other/a' | 'plaintext';
const CLIENTS: Record<Client, { ip: string; identity?: string }> = {
  'shop/a': { ip: '10.200.50.11', identity: 'spiffe://cluster.local/ns/shop/sa/a' },
  'shop/b': { ip: '10.200.50.12', identity: 'spiffe://cluster.local/ns/shop/sa/b' },
  'other/a': { ip: '10.200.60.11', identity: 'spiffe://cluster.local/ns/other/sa/a' },
  plaintext: { ip: '10.200.70.5' },
};
const ALL = Object.keys(CLIENTS) as Client[];
const WEB: Workload = {
  uid: 'u-web', name: 'web', namespace: 'shop', serviceAccount: 'web', trustDomain: 'cluster.local', workloadIps: ['10.200.50.20'],
  protocol: 'HBONE', node: '', network: '', services: {}, labels: { app: 'web' }, healthy: true,
};

/** Who gets in to shop/web:8080 under `policies`, and what the proxy logged meanwhile. */
function attempt(policies: Policy[]): { admitted: Client[]; warnings: { msg: string; policy?: string; field?: string }[] } {
  const lines: { level: number; msg: string; policy?: string; field?: string }[] = [];
  const state = new StateStore();
  state.set({ workloads: [WEB], services: [], policies });
  const hooks = new PolicyAuthorizer(state, pino({ level: 'info' }, { write: (l: string) => void lines.push(JSON.parse(l)) }));
  const admitted = ALL.filter((c) => {
    const ctx: ConnContext = {
      direction: 'inbound', transport: CLIENTS[c].identity ? 'hbone' : 'plaintext', src: { ip: CLIENTS[c].ip, port: 40000, identity: CLIENTS[c].identity },
      dst: { ip: '10.200.50.20', port: 8080, identity: 'spiffe://cluster.local/ns/shop/sa/web' }, pod: { uid: 'u-web', name: 'web', namespace: 'shop' },
    };
    return hooks.authorize(ctx).allow;
  });
  return { admitted, warnings: lines.filter((l) => l.level === 40) };
}

const policy = (spec: Record<string, unknown>, meta: Record<string, unknown> = {}): Policy => ({
  apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', metadata: { name: 'p', namespace: 'shop', ...meta }, spec,
});
const outcome = (admitted: Client[]): string => {
  const refused = ALL.filter((c) => !admitted.includes(c));
  if (refused.length === 0) return 'everyone gets in';
  if (admitted.length === 0) return 'everyone is refused';
  const [try_, get] = [refused.length === 1 ? 'tries and is' : 'try and are', admitted.length === 1 ? 'gets' : 'get'];
  return `${refused.join(', ')} ${try_} refused; ${admitted.join(', ')} ${get} in`;
};

/** [what the rule says, the rule, who an ALLOW admits, who a DENY admits, a field a warning must name] */
type Row = [string, Record<string, unknown>, Client[], Client[], string?];
const src = (source: Record<string, unknown>) => ({ from: [{ source }] });
const op = (operation: Record<string, unknown>) => ({ to: [{ operation }] });
const when = (c: Record<string, unknown>) => ({ when: [c] });
const [A, B, O, P]: Client[] = ['shop/a', 'shop/b', 'other/a', 'plaintext'];
const none: Client[] = [];

const ROWS: Row[] = [
  // source identity
  ['from serviceAccounts [shop/a]', src({ serviceAccounts: ['shop/a'] }), [A], [B, O, P]],
  ['from serviceAccounts [a] (the policy\'s own namespace)', src({ serviceAccounts: ['a'] }), [A], [B, O, P]],
  ['from notServiceAccounts [shop/a]', src({ notServiceAccounts: ['shop/a'] }), [B, O, P], [A]],
  ['from principals [cluster.local/ns/shop/sa/a]', src({ principals: ['cluster.local/ns/shop/sa/a'] }), [A], [B, O, P]],
  ['from principals [*/sa/a]', src({ principals: ['*/sa/a'] }), [A, O], [B, P]],
  ['from principals [*] (any identity)', src({ principals: ['*'] }), [A, B, O], [P]],
  ['from notPrincipals [cluster.local/ns/shop/sa/a]', src({ notPrincipals: ['cluster.local/ns/shop/sa/a'] }), [B, O, P], [A]],
  ['from namespaces [shop]', src({ namespaces: ['shop'] }), [A, B], [O, P]],
  ['from namespaces [*] (any identity)', src({ namespaces: ['*'] }), [A, B, O], [P]],
  ['from notNamespaces [shop]', src({ notNamespaces: ['shop'] }), [O, P], [A, B]],
  ['from trustDomains [cluster.local]', src({ trustDomains: ['cluster.local'] }), [A, B, O], [P]],
  ['from trustDomains [other.td]', src({ trustDomains: ['other.td'] }), none, ALL],
  ['from notTrustDomains [cluster.local]', src({ notTrustDomains: ['cluster.local'] }), [P], [A, B, O]],
  // source addresses
  ['from ipBlocks [10.200.50.0/24]', src({ ipBlocks: ['10.200.50.0/24'] }), [A, B], [O, P]],
  ['from ipBlocks [10.200.50.11] (one address)', src({ ipBlocks: ['10.200.50.11'] }), [A], [B, O, P]],
  ['from notIpBlocks [10.200.50.0/24]', src({ notIpBlocks: ['10.200.50.0/24'] }), [O, P], [A, B]],
  // HTTP-only source fields: an ALLOW rule with them grants nothing, a DENY left empty has no effect
  ['from remoteIpBlocks [10.200.50.11] (HTTP only)', src({ remoteIpBlocks: ['10.200.50.11'] }), none, ALL, 'remoteIpBlocks'],
  ['from notRemoteIpBlocks [10.200.50.11] (HTTP only)', src({ notRemoteIpBlocks: ['10.200.50.11'] }), none, ALL, 'notRemoteIpBlocks'],
  ['from requestPrincipals [*] (JWT)', src({ requestPrincipals: ['*'] }), none, ALL, 'requestPrincipals'],
  ['from notRequestPrincipals [*] (JWT)', src({ notRequestPrincipals: ['*'] }), none, ALL, 'notRequestPrincipals'],
  ['from serviceAccounts [shop/a] with remoteIpBlocks', src({ serviceAccounts: ['shop/a'], remoteIpBlocks: ['1.2.3.4'] }), none, [B, O, P], 'remoteIpBlocks'],
  // operation
  ['to ports [8080]', op({ ports: ['8080'] }), ALL, none],
  ['to ports [9090]', op({ ports: ['9090'] }), none, ALL],
  ['to notPorts [8080]', op({ notPorts: ['8080'] }), none, ALL],
  ...(['hosts', 'notHosts', 'methods', 'notMethods', 'paths', 'notPaths'] as const).map((k): Row => [`to ${k} [x] (HTTP only)`, op({ [k]: ['x'] }), none, ALL, k]),
  ['to methods [GET] on ports [8080]', op({ methods: ['GET'], ports: ['8080'] }), none, none, 'methods'],
  // conditions
  ['when source.ip in [10.200.50.0/24]', when({ key: 'source.ip', values: ['10.200.50.0/24'] }), [A, B], [O, P]],
  ['when source.ip not in [10.200.50.0/24]', when({ key: 'source.ip', notValues: ['10.200.50.0/24'] }), [O, P], [A, B]],
  ['when source.namespace in [shop]', when({ key: 'source.namespace', values: ['shop'] }), [A, B], [O, P]],
  ['when source.principal in [cluster.local/ns/shop/sa/a]', when({ key: 'source.principal', values: ['cluster.local/ns/shop/sa/a'] }), [A], [B, O, P]],
  ['when destination.ip in [10.200.50.20]', when({ key: 'destination.ip', values: ['10.200.50.20'] }), ALL, none],
  ['when destination.port in [8080]', when({ key: 'destination.port', values: ['8080'] }), ALL, none],
  ['when destination.port not in [8080]', when({ key: 'destination.port', notValues: ['8080'] }), none, ALL],
  ...(['remote.ip', 'source.serviceAccount', 'source.trustDomain', 'request.headers[x-user]', 'request.auth.claims[iss]', 'request.auth.principal', 'connection.sni', 'experimental.envoy.filters.a.b']
    .map((k): Row => [`when ${k} (not enforced by ztunnel)`, when({ key: k, values: ['x'] }), none, ALL, k])),
  // what this proxy cannot read: ALLOW grants nothing, DENY matches
  ['from serviceAcounts [shop/a] (misspelt)', src({ serviceAcounts: ['shop/a'] }), none, none, 'spec.rules[0].from[0].source.serviceAcounts'],
  ['from source with an unknown field beside namespaces [shop]', src({ namespaces: ['shop'], identities: ['x'] }), none, none, 'spec.rules[0].from[0].source.identities'],
  ['to ports [8080] written as a number', op({ ports: [8080] }), none, none, 'spec.rules[0].to[0].operation.ports[0]'],
  ['to ports [http]', op({ ports: ['http'] }), none, none, 'spec.rules[0].to[0].operation.ports[0]'],
  ['from ipBlocks [10.200.50.0/33]', src({ ipBlocks: ['10.200.50.0/33'] }), none, none, 'spec.rules[0].from[0].source.ipBlocks[0]'],
  ['from notServiceAccounts [shop/*]', src({ notServiceAccounts: ['shop/*'] }), none, none, 'spec.rules[0].from[0].source.notServiceAccounts[0]'],
  ['when source.nmespace (no such attribute)', when({ key: 'source.nmespace', values: ['shop'] }), none, none, 'spec.rules[0].when[0].key'],
  ['with an unknown rule field', { from: [{ source: { namespaces: ['shop'] } }], unless: [{ source: { namespaces: ['x'] } }] }, none, none, 'spec.rules[0].unless'],
  // rules
  ['an empty rule {}', {}, ALL, none],
];

describe('AuthorizationPolicy fields as ALLOW and DENY: who gets in to shop/web', () => {
  for (const [what, rule, allowAdmits, denyAdmits, warns] of ROWS) {
    for (const [action, want] of [['ALLOW', allowAdmits], ['DENY', denyAdmits]] as const) {
      it(`${action} ${what}: ${outcome(want)}`, () => {
        const r = attempt([policy({ action, rules: [rule] })]);
        expect(r.admitted).toEqual(want);
        if (warns) {
          // named once for the policy version, though four connections were decided
          expect(r.warnings.filter((w) => w.policy === 'shop/p' && w.msg.includes(warns))).toHaveLength(1);
        }
      });
    }
  }
});

describe('AuthorizationPolicy scope and action: who gets in to shop/web', () => {
  const only = (ns: string) => ({ action: 'ALLOW', rules: [src({ namespaces: [ns] })] });
  it.each<[string, Policy[], Client[], string?]>([
    ['an ALLOW with an HTTP rule and a targetRef (for a waypoint) does not shut the namespace at the pod', [policy({ targetRef: { kind: 'Gateway', group: 'gateway.networking.k8s.io', name: 'waypoint' }, action: 'ALLOW', rules: [op({ methods: ['GET'] })] })], ALL],
    ['a DENY {} with targetRefs (for a waypoint) is not enforced at the pod', [policy({ targetRefs: [{ kind: 'Service', group: '', name: 'web' }], action: 'DENY', rules: [{}] })], ALL],
    ['an AUDIT {} is not enforced at the pod (ztunnel has no AUDIT), and says so', [policy({ action: 'AUDIT', rules: [{}] })], ALL, 'AUDIT'],
    ['a CUSTOM {} is not enforced at the pod (ztunnel has no CUSTOM), and says so', [policy({ action: 'CUSTOM', provider: { name: 'ext' }, rules: [{}] })], ALL, 'CUSTOM'],
    ['a misspelt action "Deny" denies everyone', [policy({ action: 'Deny', rules: [src({ namespaces: ['nobody'] })] })], none, 'spec.action'],
    ['an unknown spec field makes an ALLOW grant nothing', [policy({ ...only('shop'), rulesExtra: [] })], none, 'spec.rulesExtra'],
    ['an unknown spec field makes a DENY match everyone', [policy({ action: 'DENY', rules: [src({ namespaces: ['nobody'] })], exceptions: [] })], none, 'spec.exceptions'],
    ['a dry-run DENY {} is reported, not enforced', [policy({ action: 'DENY', rules: [{}] }, { annotations: { 'istio.io/dry-run': 'true' } })], ALL],
    ['a dry-run ALLOW for nobody is reported, not enforced', [policy(only('nobody'), { annotations: { 'istio.io/dry-run': 'true' } })], ALL],
    ['an unparseable dry-run annotation is enforced', [policy({ action: 'DENY', rules: [{}] }, { annotations: { 'istio.io/dry-run': 'yes' } })], none, 'dry-run'],
    ['an ALLOW with no rules admits no one', [policy({ action: 'ALLOW' })], none],
    ['a DENY with no rules denies no one', [policy({ action: 'DENY' })], ALL],
    ['a root-namespace ALLOW without selector applies to every namespace', [policy(only('other'), { namespace: 'istio-system' })], [O]],
    ['a root-namespace DENY with a selector for app=web applies in shop', [policy({ selector: { matchLabels: { app: 'web' } }, action: 'DENY', rules: [src({ namespaces: ['other'] })] }, { namespace: 'istio-system' })], [A, B, P]],
    ['a root-namespace DENY with a selector for app=db does not apply', [policy({ selector: { matchLabels: { app: 'db' } }, action: 'DENY', rules: [{}] }, { namespace: 'istio-system' })], ALL],
    ['a DENY in another namespace with a selector for app=web does not apply', [policy({ selector: { matchLabels: { app: 'web' } }, action: 'DENY', rules: [{}] }, { namespace: 'other' })], ALL],
    ['a selector without labels selects every workload of the namespace', [policy({ selector: {}, action: 'DENY', rules: [{}] })], none, 'spec.selector'],
    ['DENY wins over ALLOW', [policy(only('shop')), policy({ action: 'DENY', rules: [src({ serviceAccounts: ['b'] })] }, { name: 'd' })], [A]],
    ['any of two ALLOWs admits', [policy(only('other')), policy({ action: 'ALLOW', rules: [src({ serviceAccounts: ['b'] })] }, { name: 'b' })], [B, O]],
  ])('%s', (_n, policies, want, warns) => {
    const r = attempt(policies);
    expect(r.admitted).toEqual(want);
    if (warns) expect(r.warnings.filter((w) => w.msg.includes(warns))).toHaveLength(1);
  });

  it('refuses a local-config file with a misspelt policy field, naming it (as ztunnel refuses unknown fields)', () => {
    // local config takes ztunnel's own Authorization (ts/policy/ztunnel.ts); a misspelt match field would leave a DENY denying nothing
    expect(() => parseLocalConfig(`policies:
  - {name: p, namespace: shop, scope: Namespace, action: Deny, dryRun: false, rules: [[[{serviceAcounts: [{namespace: shop, serviceAccount: a}]}]]]}
`)).toThrow(/^policies\[0\]\.rules\[0\]\[0\]\[0\]\.serviceAcounts: unknown field/);
  });
});

describe('end to end through the proxy: ALLOW serviceAccounts [shop/a] at shop/server (ebpf backend)', () => {
  let rig: Rig;
  let a: LabPod, b: LabPod, server: LabPod, outside: LabPod;
  let sh: Record<'a' | 'b' | 'server' | 'outside', PodShell>;
  let records: Record<string, unknown>[] = [];

  beforeAll(async () => {
    rig = await Rig.create({ tag: 'az' });
    const { lab } = rig;
    records = rig.records;
    [a, b, server, outside] = await Promise.all(['a', 'b', 'server', 'outside'].map((n) => lab.addPod(n)));
    const state = new StateStore();
    // the workloads from a local config; the Istio policy and the labels it selects as the Kubernetes API gives them
    const local = parseLocalConfig(`
workloads:
  - {uid: u-a, name: a, namespace: shop, serviceAccount: a, workloadIps: ["${a.ip}"], protocol: HBONE}
  - {uid: u-b, name: b, namespace: shop, serviceAccount: b, workloadIps: ["${b.ip}"], protocol: HBONE}
  - {uid: u-server, name: server, namespace: shop, serviceAccount: web, workloadIps: ["${server.ip}"], protocol: HBONE}
`);
    state.set({
      ...local,
      workloads: local.workloads.map((w) => (w.name === 'server' ? { ...w, labels: { app: 'web' } } : w)),
      policies: [policy({ selector: { matchLabels: { app: 'web' } }, action: 'ALLOW', rules: [{ from: [{ source: { serviceAccounts: ['shop/a'] } }] }] }, { name: 'only-a' })],
    });
    await rig.serve(state);
    for (const [p, sa] of [[a, 'a'], [b, 'b'], [server, 'web']] as const) {
      await rig.servePod(p, { uid: `u-${p.name}`, name: p.name, namespace: 'shop', serviceAccount: sa });
    }
    sh = {
      a: await lab.shell(a.netnsPath, { inCgroup: true }),
      b: await lab.shell(b.netnsPath, { inCgroup: true }),
      server: await lab.shell(server.netnsPath, { inCgroup: true }),
      outside: await lab.shell(outside.netnsPath, { inCgroup: true }),
    };
    await sh.server.listen({ port: 8080, tag: 'server' });
  });

  afterAll(async () => {
    await rig?.destroy();
  });

  const accepted = async (): Promise<number> => (await sh.server.accepted((await sh.server.listenerByTag('server')).id)).length;

  it('shop/b (same namespace, other service account) is answered 401 over HBONE and never reaches the app', async () => {
    const before = await accepted();
    const r = await sh.b.connect({ host: server.ip, port: 8080, send: 'let me in', timeoutMs: 5000 });
    expect(r.ok ? r.reply : '').not.toMatch(/^server:/);
    await until('both access-log lines', () => records.some((l) => l.msg === 'connection complete' && l.direction === 'outbound' && l.pod === 'shop/b' && l.response_flags === 'DENY'), { timeoutMs: 5000 });
    const out = records.find((l) => l.msg === 'connection complete' && l.direction === 'outbound' && l.pod === 'shop/b');
    expect(out).toMatchObject({ transport: 'hbone', response_flags: 'DENY', error: expect.stringMatching(/answered 401: denied by authorization policy/) });
    const inb = records.find((l) => l.msg === 'connection complete' && l.direction === 'inbound' && l.pod === 'shop/server' && l['src.identity'] === 'spiffe://cluster.local/ns/shop/sa/b');
    expect(inb).toMatchObject({ response_flags: 'DENY', error: 'no ALLOW policy matched (shop/only-a)' });
    expect(await accepted()).toBe(before);
  });

  it('shop/a gets through to the app, which sees its IP', async () => {
    const r = await sh.a.connect({ host: server.ip, port: 8080, send: 'hello', timeoutMs: 5000 });
    expect(r.ok && r.reply).toBe('server:hello');
    if (r.ok) await sh.a.close(r.connId);
    const acc = await sh.server.accepted((await sh.server.listenerByTag('server')).id);
    expect(acc.at(-1)!.peer.host).toBe(a.ip);
  });

  it('a plaintext client outside the mesh is refused on 15006 and never reaches the app', async () => {
    const before = await accepted();
    const r = await sh.outside.connect({ host: server.ip, port: 8080, send: 'plain', timeoutMs: 5000 });
    expect(r.ok ? r.reply : '').not.toMatch(/^server:/);
    await until('the denied plaintext line', () => records.some((l) => l.msg === 'connection complete' && l.transport === 'plaintext' && l.response_flags === 'DENY'), { timeoutMs: 5000 });
    expect(await accepted()).toBe(before);
  });
});
