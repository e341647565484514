/**
 * The authorizer keeps, per state snapshot, which policies apply to each destination workload
 * (ts/policy/authorizer.ts), so the selection is not redone for every connection. An attacker
 * who was let in once tries again after the state changed against them, hoping to be decided
 * by the selection made before the change: every kind of change that can turn a decision
 * (a DENY pushed, a workload relabelled into a selector DENY, a policy attached to a workload
 * by name, the workload leaving the state) refuses the very next connection. The end-to-end
 * twin, through a real proxy, is policy-update.test.ts ("the next one refused").
 */
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { PolicyAuthorizer } from '../../ts/policy/authorizer.js';
import type { ConnContext } from '../../ts/proxy/hooks.js';
import { parseLocalConfig } from '../../ts/state/localconfig.js';
import { StateStore } from '../../ts/state/store.js';
import type { MeshState } from '../../ts/state/types.js';

const ATTACKER = 'spiffe://cluster.local/ns/evil/sa/attacker';
const conn = (): ConnContext => ({
  direction: 'inbound', transport: 'hbone', src: { ip: '10.0.0.66', port: 40000, identity: ATTACKER },
  dst: { ip: '10.0.0.1', port: 8080 }, pod: { uid: 'u-web', name: 'web', namespace: 'shop' },
});

const web = (extra = ''): string => `workloads:
  - {uid: u-web, name: web, namespace: shop, serviceAccount: web, workloadIps: ["10.0.0.1"], protocol: HBONE${extra}}
`;
const DENY_EVIL = `policies:
  - {name: deny-evil, namespace: shop, scope: Namespace, action: Deny, dryRun: false, rules: [[[{namespaces: [!Exact evil]}]]]}
`;
const ATTACHED_DENY = `policies:
  - {name: deny-evil, namespace: shop, scope: WorkloadSelector, action: Deny, dryRun: false, rules: [[[{namespaces: [!Exact evil]}]]]}
`;
/** An Istio AuthorizationPolicy (local config's flat form) denying namespace evil on the workloads labelled app=web. */
const SELECTOR_DENY = { name: 'deny-evil-web', namespace: 'shop', spec: { selector: { matchLabels: { app: 'web' } }, action: 'DENY', rules: [{ from: [{ source: { namespaces: ['evil'] } }] }] } };

function withLabels(state: MeshState, labels: Record<string, string>): MeshState {
  return { ...state, workloads: state.workloads.map((w) => ({ ...w, labels })), policies: [SELECTOR_DENY] };
}

function setup(first: MeshState): { state: StateStore; admitted: () => boolean } {
  const state = new StateStore();
  state.set(first);
  const authz = new PolicyAuthorizer(state, pino({ level: 'silent' }));
  // asked twice: the second answer comes from what the first one selected
  return { state, admitted: () => authz.authorize(conn()).allow && authz.authorize(conn()).allow };
}

describe('the authorizer\'s per-workload selection of policies never outlives the state it was made from', () => {
  it('connects again after a DENY of its namespace was pushed: refused at once, let in again once the DENY is gone', () => {
    const { state, admitted } = setup(parseLocalConfig(web()));
    expect(admitted()).toBe(true);
    state.set(parseLocalConfig(web() + DENY_EVIL));
    expect(admitted()).toBe(false);
    state.set(parseLocalConfig(web()));
    expect(admitted()).toBe(true);
  });

  it('connects again after a DENY was pushed alone, its destination\'s workload object kept as it was (as an xDS push of one policy): refused at once', () => {
    const first = parseLocalConfig(web());
    const { state, admitted } = setup(first);
    expect(admitted()).toBe(true);
    state.set({ ...first, authorizations: parseLocalConfig(web() + DENY_EVIL).authorizations });
    expect(state.snapshot.byIp.get('10.0.0.1')).toBe(first.workloads[0]);
    expect(admitted()).toBe(false);
    state.set({ ...first, authorizations: [] });
    expect(admitted()).toBe(true);
  });

  it('connects again after its destination was relabelled into a selector DENY\'s scope: refused at once', () => {
    const base = parseLocalConfig(web());
    const { state, admitted } = setup(withLabels(base, { app: 'other' }));
    expect(admitted()).toBe(true);
    state.set(withLabels(base, { app: 'web' }));
    expect(admitted()).toBe(false);
  });

  it('connects again after the control plane attached a DENY to its destination by name: refused at once', () => {
    const { state, admitted } = setup(parseLocalConfig(web() + ATTACHED_DENY));
    expect(admitted()).toBe(true); // WorkloadSelector scope: applies only where attached
    state.set(parseLocalConfig(web(', authorizationPolicies: [shop/deny-evil]') + ATTACHED_DENY));
    expect(admitted()).toBe(false);
  });

  it('connects again after its destination left the state while a selector policy exists: refused (labels unknown), not decided by the old selection', () => {
    const base = parseLocalConfig(web());
    const { state, admitted } = setup(withLabels(base, { app: 'other' }));
    expect(admitted()).toBe(true);
    state.set({ ...base, workloads: [], policies: [SELECTOR_DENY] });
    expect(admitted()).toBe(false);
  });

  it('connects again while nothing changed: still decided per connection (a DENY matching only its port applies to that port alone)', () => {
    const state = new StateStore();
    state.set(parseLocalConfig(web() + `policies:
  - {name: deny-9999, namespace: shop, scope: Namespace, action: Deny, dryRun: false, rules: [[[{destinationPorts: [9999]}]]]}
`));
    const authz = new PolicyAuthorizer(state, pino({ level: 'silent' }));
    expect(authz.authorize(conn()).allow).toBe(true);
    expect(authz.authorize({ ...conn(), dst: { ip: '10.0.0.1', port: 9999 } }).allow).toBe(false);
    expect(authz.authorize(conn()).allow).toBe(true);
  });
});
