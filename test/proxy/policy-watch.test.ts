/**
 * The policy watcher (ts/proxy/policy-watch.ts), as ztunnel's PolicyWatcher
 * (src/proxy/connection_manager.rs): a policy update closes the open inbound connections it no
 * longer allows, and only those; an update that changes no policy re-decides nothing; a
 * connection that has ended is no longer held.
 */
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { PolicyAuthorizer } from '../../ts/policy/authorizer.js';
import type { ConnContext } from '../../ts/proxy/hooks.js';
import { PolicyWatcher, revoked } from '../../ts/proxy/policy-watch.js';
import { parseLocalConfig } from '../../ts/state/localconfig.js';
import { StateStore } from '../../ts/state/store.js';

const silent = pino({ level: 'silent' });
const WORKLOADS = `workloads:
  - {uid: u-web, name: web, namespace: default, workloadIps: ["10.0.0.1"], protocol: HBONE}
`;
const DENY_SLEEP = `${WORKLOADS}policies:
  - {name: deny-sleep, namespace: default, scope: Namespace, action: Deny, dryRun: false, rules: [[[{principals: [!Exact cluster.local/ns/default/sa/sleep]}]]]}
`;

const conn = (id: string): ConnContext => ({
  direction: 'inbound', transport: 'hbone', src: { ip: '10.0.0.9', port: 40000, identity: `spiffe://cluster.local/ns/default/sa/${id}` },
  dst: { ip: '10.0.0.1', port: 8080 }, pod: { uid: 'u-web', name: 'web', namespace: 'default' },
});

function setup(): { state: StateStore; watcher: PolicyWatcher; closed: string[]; hold: (id: string) => () => void } {
  const state = new StateStore();
  state.set(parseLocalConfig(WORKLOADS));
  const watcher = new PolicyWatcher(state, new PolicyAuthorizer(state, silent));
  const closed: string[] = [];
  const hold = (id: string): (() => void) => watcher.admitted({ ctx: conn(id), log: silent, close: () => closed.push(id) });
  return { state, watcher, closed, hold };
}

describe('policy watcher', () => {
  it('closes the open connections a pushed DENY no longer allows, and only those', () => {
    const { state, watcher, closed, hold } = setup();
    hold('sleep');
    hold('web-client');
    state.set(parseLocalConfig(DENY_SLEEP));
    expect(closed).toEqual(['sleep']);
    expect(watcher.size).toBe(1);
    // the DENY stays: a later update closes nothing more (the closed one is no longer held)
    state.set(parseLocalConfig(`${DENY_SLEEP}  - {name: other, namespace: x, scope: Namespace, action: Deny, dryRun: false, rules: [[]]}\n`));
    expect(closed).toEqual(['sleep']);
    watcher.close();
  });

  it('re-decides nothing when an update leaves the policies as they were, and forgets a connection that ended', () => {
    const { state, watcher, closed, hold } = setup();
    const snap = state.snapshot.state;
    const ended = hold('sleep');
    ended();
    expect(watcher.size).toBe(0);
    hold('sleep');
    // the same policy arrays (a workload change): nothing is decided again
    state.set({ ...snap, workloads: [...snap.workloads] });
    expect(closed).toEqual([]);
    state.set(parseLocalConfig(DENY_SLEEP));
    expect(closed).toEqual(['sleep']);
    // stopped: updates are no longer watched
    watcher.close();
    hold('sleep');
    state.set(parseLocalConfig(WORKLOADS));
    state.set(parseLocalConfig(DENY_SLEEP));
    expect(closed).toEqual(['sleep']);
  });

  it('revoked() names the reason each connection is now denied', () => {
    const state = new StateStore();
    state.set(parseLocalConfig(DENY_SLEEP));
    const out = revoked([{ ctx: conn('sleep') }, { ctx: conn('other') }], new PolicyAuthorizer(state, silent));
    expect(out).toEqual([{ conn: { ctx: conn('sleep') }, reason: expect.stringContaining('deny-sleep') }]);
  });
});
