/**
 * The fast path's per-direction state machine (ts/proxy/fastpath/direction.ts): every allowed
 * transition lands where the table says, every other one throws INPOD_ERR_FASTPATH and leaves
 * the state as it was, and the paths a direction really takes are walks through the table.
 */
import { describe, expect, it } from 'vitest';
import { Direction, TRANSITIONS, type DirEvent, type DirState } from '../../ts/proxy/fastpath/direction.js';
import { MeshError } from '../../ts/util/errors.js';

const STATES = Object.keys(TRANSITIONS) as DirState[];
const EVENTS: DirEvent[] = ['relay', 'pause', 'resume', 'splice', 'fin', 'throttle', 'eof', 'shut'];

/** A direction driven to `state` along allowed transitions (a shortest path from idle). */
function at(state: DirState): Direction {
  const seen = new Set<DirState>(['idle']);
  const queue: [DirState, DirEvent[]][] = [['idle', []]];
  while (queue.length) {
    const [s, path] = queue.shift()!;
    if (s === state) {
      const d = new Direction('client -> server');
      for (const e of path) d[e]();
      return d;
    }
    for (const [e, next] of Object.entries(TRANSITIONS[s]) as [DirEvent, DirState][]) {
      if (seen.has(next)) continue;
      seen.add(next);
      queue.push([next, [...path, e]]);
    }
  }
  throw new Error(`${state} is not reachable from idle`);
}

const allowed = STATES.flatMap((s) => EVENTS.filter((e) => TRANSITIONS[s][e]).map((e) => [s, e, TRANSITIONS[s][e]!] as const));
const forbidden = STATES.flatMap((s) => EVENTS.filter((e) => !TRANSITIONS[s][e]).map((e) => [s, e] as const));

describe('fast path direction: the state machine', () => {
  it('starts idle, and every state is reachable from there', () => {
    expect(new Direction('x').state).toBe('idle');
    for (const s of STATES) expect(at(s).state).toBe(s);
  });

  it('knows every event in every state (the table and the event list agree)', () => {
    for (const s of STATES) for (const e of Object.keys(TRANSITIONS[s])) expect(EVENTS).toContain(e);
    expect(allowed.length + forbidden.length).toBe(STATES.length * EVENTS.length);
  });

  it.each(allowed)('%s --%s--> %s', (from, event, to) => {
    const d = at(from);
    expect(d.can(event)).toBe(true);
    d[event]();
    expect(d.state).toBe(to);
  });

  it.each(forbidden)('%s refuses %s: throws INPOD_ERR_FASTPATH and stays where it was', (from, event) => {
    const d = at(from);
    expect(d.can(event)).toBe(false);
    let err: unknown;
    try {
      d[event]();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(MeshError);
    expect((err as MeshError).code).toBe('INPOD_ERR_FASTPATH');
    expect((err as MeshError).message).toMatch(new RegExp(`client -> server cannot take "${event}" while ${from}`));
    expect(d.state).toBe(from);
  });

  it('ends nowhere but done, and done allows nothing', () => {
    for (const s of STATES) if (s !== 'done') expect(Object.keys(TRANSITIONS[s]).length).toBeGreaterThan(0);
    expect(TRANSITIONS.done).toEqual({});
    for (const s of STATES) {
      // from every state but done, done is reachable
      if (s === 'done') continue;
      const seen = new Set<DirState>([s]);
      const stack = [s];
      while (stack.length) for (const n of Object.values(TRANSITIONS[stack.pop()!]) as DirState[]) if (!seen.has(n)) stack.push(n as typeof s), seen.add(n);
      expect(seen.has('done'), `done from ${s}`).toBe(true);
    }
  });

  it.each([
    ['spliced at once, FIN, drained', ['splice', 'fin', 'shut'], true],
    ['refused by the kernel, relayed in Node', ['relay', 'shut'], false],
    ['promoted, put off once, promoted, FIN', ['relay', 'pause', 'resume', 'pause', 'splice', 'fin', 'shut'], true],
    ['promotion refused by the kernel for this direction', ['relay', 'pause', 'resume', 'shut'], false],
    ['handed back while spliced, EOF, tail relayed', ['splice', 'throttle', 'eof', 'shut'], true],
    ['handed back while draining', ['splice', 'fin', 'throttle', 'eof', 'shut'], true],
  ] as const)('walks the path "%s" to done, remembering whether the kernel took it', (_, events, spliced) => {
    const d = new Direction('x');
    for (const e of events) d[e]();
    expect(d.state).toBe('done');
    expect(d.spliced).toBe(spliced);
  });
});
