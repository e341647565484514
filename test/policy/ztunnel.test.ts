/**
 * Policies in ztunnel's own form, as its local config writes them (ts/policy/ztunnel.ts): they
 * mean what they mean in ztunnel (src/rbac.rs `Authorization::matches`, src/state.rs
 * `assert_rbac`, src/state/policy.rs `PolicyStore::insert`), decided by the proxy's authorizer on
 * the state the local config makes. The decisions are checked twice: with the state read from
 * the local config, and with the same state served by istiod over xDS (each workload, service and
 * policy encoded as the Address and Authorization resources of ztunnel's proto/workload.proto and
 * proto/authorization.proto, decoded and converted by ts/xds as the proxy does with istiod's).
 */
import { readFileSync } from 'node:fs';
import { pino } from 'pino';
import { beforeEach, describe, expect, it } from 'vitest';
import { PolicyAuthorizer } from '../../ts/policy/authorizer.js';
import type { ConnContext } from '../../ts/proxy/hooks.js';
import { parseLocalConfig } from '../../ts/state/localconfig.js';
import { StateStore } from '../../ts/state/store.js';
import type { MeshState } from '../../ts/state/types.js';
import { WdsState } from '../../ts/xds/wds.js';
import { ADDRESS_TYPE, AUTHORIZATION_TYPE, T, encodePlain } from '../../ts/xds/proto.js';
import { toXdsAuthorization, toXdsService, toXdsWorkload } from '../fixtures/istiod/resources.js';

const LOCALHOST = readFileSync(new URL('../../vendor/istio/ztunnel/examples/localhost.yaml', import.meta.url), 'utf8');

/** `state` served over xDS: every entry encoded as istiod's resource, then applied by the proxy's WDS state. */
function viaXds(state: MeshState): StateStore {
  const store = new StateStore();
  const h = new WdsState(store, pino({ level: 'silent' })).handlers();
  const res = (type: string, name: string, body: object) => ({ name, version: '1', resource: { type_url: type, value: encodePlain(type === ADDRESS_TYPE ? T.address : T.authorization, body) } });
  const addresses = [...state.workloads.map((w, i) => res(ADDRESS_TYPE, w.uid || `w${i}`, toXdsWorkload(w))), ...state.services.map((s) => res(ADDRESS_TYPE, `${s.namespace}/${s.hostname}`, toXdsService(s)))];
  expect(h.get(ADDRESS_TYPE)!.apply(addresses, [])).toEqual([]);
  expect(h.get(AUTHORIZATION_TYPE)!.apply((state.authorizations ?? []).map((a) => res(AUTHORIZATION_TYPE, `${a.namespace}/${a.name}`, toXdsAuthorization(a))), [])).toEqual([]);
  // the policies arrive in the very form the local config gives
  expect(store.snapshot.state.authorizations).toEqual(state.authorizations);
  return store;
}

const SOURCES: [string, (yaml: string) => StateStore][] = [
  ['local config', (yaml) => {
    const state = new StateStore();
    state.set(parseLocalConfig(yaml));
    return state;
  }],
  ['xDS', (yaml) => viaXds(parseLocalConfig(yaml))],
];
/** The authorizer of a proxy loaded with `yaml` (set per source below). */
let authorizer: (yaml: string) => PolicyAuthorizer;

interface Peer {
  ip: string;
  /** SPIFFE id; absent: plaintext */
  id?: string;
}
const SLEEP: Peer = { ip: '10.1.0.5', id: 'spiffe://cluster.local/ns/default/sa/sleep' };
const OTHER_NS: Peer = { ip: '10.2.0.5', id: 'spiffe://cluster.local/ns/other/sa/sleep' };
const PLAIN: Peer = { ip: '192.168.7.7' };

/** Is `peer` let in to ip:port (a workload of namespace `ns`)? */
function admits(a: PolicyAuthorizer, peer: Peer, dst: { ip: string; port: number }, ns = 'default'): boolean {
  const ctx: ConnContext = {
    direction: 'inbound', transport: peer.id ? 'hbone' : 'plaintext', src: { ip: peer.ip, port: 40000, identity: peer.id },
    dst: { ...dst, identity: undefined }, pod: { uid: 'u', name: 'w', namespace: ns },
  };
  return a.authorize(ctx).allow;
}

const workloads = `workloads:
  - {uid: u-web, name: web, namespace: default, workloadIps: ["10.0.0.1"], protocol: HBONE}
  - {uid: u-db, name: db, namespace: data, workloadIps: ["10.0.0.2"], protocol: HBONE, authorizationPolicies: [data/only-default]}
  - {uid: u-cache, name: cache, namespace: data, workloadIps: ["10.0.0.3"], protocol: HBONE}
`;
const WEB = { ip: '10.0.0.1', port: 8080 };
const DB = { ip: '10.0.0.2', port: 5432 };
const CACHE = { ip: '10.0.0.3', port: 6379 };

describe.each(SOURCES)("ztunnel's policies, the state from %s", (_source, load) => {
  beforeEach(() => {
    authorizer = (yaml) => new PolicyAuthorizer(load(yaml), pino({ level: 'silent' }));
  });

  it("localhost.yaml's deny-9999 (ALLOW notDestinationPorts [9999], Namespace scope) lets 8080 in and keeps 9999 out, for every peer", () => {
    // before, it was read as an Istio policy whose rules made no sense, and refused both ports
    const a = authorizer(LOCALHOST);
    for (const peer of [SLEEP, OTHER_NS, PLAIN]) {
      expect([admits(a, peer, { ip: '127.0.0.1', port: 8080 }), admits(a, peer, { ip: '127.0.0.1', port: 9999 })]).toEqual([true, false]);
    }
    const ctx = (port: number): ConnContext => ({ direction: 'inbound', transport: 'hbone', src: { ip: SLEEP.ip, port: 1, identity: SLEEP.id }, dst: { ip: '127.0.0.1', port }, pod: { uid: 'u', name: 'local', namespace: 'default' } });
    expect(a.authorize(ctx(9999)).reason).toBe('no ALLOW policy matched (default/deny-9999)');
    expect(a.authorize(ctx(8080)).reason).toBe('allowed by default/deny-9999');
    // a Namespace-scope policy: a workload of another namespace is not under it
    expect(admits(a, SLEEP, { ip: '10.9.9.9', port: 9999 }, 'other')).toBe(true);
  });

  it('matches principals and namespaces by StringMatch tags (!Exact, !Prefix, !Suffix, !Presence), a plaintext peer having neither', () => {
    const rule = (m: string): string => `${workloads}policies:
  - {name: p, namespace: default, scope: Namespace, action: Allow, dryRun: false, rules: [[[${m}]]]}
`;
    const who = (m: string): boolean[] => [SLEEP, OTHER_NS, PLAIN].map((p) => admits(authorizer(rule(m)), p, WEB));
    expect(who('{principals: [!Exact cluster.local/ns/default/sa/sleep]}')).toEqual([true, false, false]);
    expect(who('{principals: [!Prefix cluster.local/ns/other/]}')).toEqual([false, true, false]);
    expect(who('{principals: [!Suffix /sa/sleep]}')).toEqual([true, true, false]);
    expect(who('{principals: [!Presence []]}')).toEqual([true, true, false]);
    expect(who('{namespaces: [!Exact other]}')).toEqual([false, true, false]);
    expect(who('{notNamespaces: [!Exact other]}')).toEqual([true, false, true]);
    expect(who('{serviceAccounts: [{namespace: default, serviceAccount: sleep}]}')).toEqual([true, false, false]);
    expect(who('{sourceIps: [10.1.0.0/16, 192.168.7.0/24]}')).toEqual([true, false, true]);
    expect(who('{notSourceIps: [10.0.0.0/8]}')).toEqual([false, false, true]);
    expect(who('{destinationIps: [10.0.0.1/32], destinationPorts: [8080]}')).toEqual([true, true, true]);
  });

  it('applies Global scope everywhere, Namespace scope to its namespace, WorkloadSelector scope to the workloads that name it (policy.rs insert, state.rs assert_rbac)', () => {
    const a = authorizer(`${workloads}policies:
  - {name: no-plain, namespace: istio-system, scope: Global, action: Deny, dryRun: false, rules: [[[{notPrincipals: [!Presence []]}]]]}
  - {name: only-default, namespace: data, scope: WorkloadSelector, action: Allow, dryRun: false, rules: [[[{namespaces: [!Exact default]}]]]}
`);
    // Global: plaintext is refused in every namespace
    expect([admits(a, PLAIN, WEB), admits(a, PLAIN, DB, 'data'), admits(a, PLAIN, CACHE, 'data')]).toEqual([false, false, false]);
    // WorkloadSelector: only db names only-default; cache, in the same namespace, is not under it
    expect([admits(a, SLEEP, DB, 'data'), admits(a, OTHER_NS, DB, 'data')]).toEqual([true, false]);
    expect(admits(a, OTHER_NS, CACHE, 'data')).toBe(true);
  });

  it('decides DENY before ALLOW and never enforces a dry-run policy (state.rs assert_rbac)', () => {
    const a = authorizer(`${workloads}policies:
  - {name: allow-all, namespace: default, scope: Namespace, action: Allow, dryRun: false, rules: [[]]}
  - {name: no-other, namespace: default, scope: Namespace, action: Deny, dryRun: false, rules: [[[{namespaces: [!Exact other]}]]]}
  - {name: trial, namespace: default, scope: Namespace, action: Deny, dryRun: true, rules: [[]]}
`);
    expect([admits(a, SLEEP, WEB), admits(a, OTHER_NS, WEB), admits(a, PLAIN, WEB)]).toEqual([true, false, true]);
  });
});

describe("ztunnel's local-config policies", () => {
  it.each([
    ['a string match written as a mapping (serde_yaml 0.9 wants a tag)', '{principals: [{Exact: x}]}', /rules\[0\]\[0\]\[0\]\.principals\[0\]: expected a string match written as a YAML tag: !Exact value/],
    ['a bare string as a string match', '{namespaces: [default]}', /namespaces\[0\]: expected a string match written as a YAML tag/],
    ['an address without its prefix length', '{sourceIps: [10.0.0.1]}', /sourceIps\[0\]: expected an address range "ip\/length"/],
    ['a port out of range', '{destinationPorts: [70000]}', /destinationPorts\[0\]: expected a whole number from 0 to 65535/],
    // stricter than ztunnel, whose RbacMatch ignores an unknown key: this DENY would then deny nothing
    ['a misspelt match field', '{notDestinationPort: [9999]}', /rules\[0\]\[0\]\[0\]\.notDestinationPort: unknown field/],
    ["inpod's old trustDomains (not a field of ztunnel's form)", '{trustDomains: [!Exact td]}', /trustDomains: unknown field/],
  ])('refuses %s, naming it', (_name, m, message) => {
    expect(() => parseLocalConfig(`policies:\n  - {name: p, namespace: default, scope: Namespace, action: Deny, dryRun: false, rules: [[[${m}]]]}\n`)).toThrow(message);
  });

  it('refuses an unknown scope or action, as ztunnel\'s enums do', () => {
    expect(() => parseLocalConfig('policies:\n  - {name: p, namespace: n, scope: Cluster, action: Allow, dryRun: false, rules: []}\n')).toThrow(/policies\[0\]\.scope: expected one of Global, Namespace, WorkloadSelector, got "Cluster"/);
    expect(() => parseLocalConfig('policies:\n  - {name: p, namespace: n, scope: Global, action: ALLOW, dryRun: false, rules: []}\n')).toThrow(/policies\[0\]\.action: expected one of Allow, Deny, got "ALLOW"/);
  });
});
