/** plan.ts: what the agent decides to do about a pod, from what it knows (pure). */
import { describe, expect, it } from 'vitest';
import { plan, planAdd, planDel, planRestart, undiscovered, type Action, type SandboxView } from '../../ts/agent/plan.js';
import type { NamespaceObj, PodObj } from '../../ts/agent/policy.js';
import type { Sandbox } from '../../ts/agent/sandboxes.js';

const ambient: NamespaceObj = { metadata: { name: 'shop', labels: { 'istio.io/dataplane-mode': 'ambient' } } };
const plain: NamespaceObj = { metadata: { name: 'shop' } };
const pod = (annotations: Record<string, string> = {}, uid = 'u1'): PodObj => ({
  metadata: { name: 'web', namespace: 'shop', uid, annotations: { 'traffic.sidecar.istio.io/excludeInboundPorts': '9000', ...annotations } },
  spec: { serviceAccountName: 'web-sa' },
});
const enabled = { 'ambient.istio.io/redirection': 'enabled' };
const sb = (cookie: string, seq: number, uid = 'u1'): Sandbox => ({ uid, namespace: 'shop', name: 'web', netns: `/run/netns/${cookie}`, cookie, containerId: `c${cookie}`, seq, boot: 'b' });
const view = (s: Sandbox, o: Partial<Omit<SandboxView, 'sandbox'>> = {}): SandboxView => ({ sandbox: s, captured: false, served: false, present: true, alive: true, ...o });
/** The actions, short: "capture 2 enroll serve annotate", "release 1", ... */
const brief = (actions: Action[]): string[] =>
  actions.map((a) => (a.do === 'capture' ? `capture ${a.sandbox.cookie}${a.enroll ? ' enroll' : ''}${a.serve ? ' serve' : ''}${a.annotate ? ' annotate' : ''}${a.requireProxy ? ' requireProxy' : ''}` : a.do === 'unannotate' ? 'unannotate' : `${a.do} ${a.sandbox.cookie}`));

describe('plan: a pod event', () => {
  const [old, cur] = [sb('1', 1), sb('2', 2)];

  it('a pod in the mesh: its newest sandbox captured, served and annotated, with its settings and identity', () => {
    const p = plan(pod(), ambient, [view(cur)]);
    expect(brief(p.actions)).toEqual(['capture 2 enroll serve annotate']);
    expect(p.actions[0]).toMatchObject({ settings: { excludeInboundPorts: [9000] }, info: { name: 'web', namespace: 'shop', serviceAccount: 'web-sa' } });
  });

  it('tells the proxy the service account as the pod names it, "" when it names none (istio cni/pkg/nodeagent/ztunnelserver.go podToWorkload)', () => {
    // before, a pod without one was sent as "default", an identity it never had
    const none: PodObj = { ...pod(), spec: {} };
    expect(plan(none, ambient, [view(cur)]).actions[0]).toMatchObject({ info: { name: 'web', namespace: 'shop', serviceAccount: '' } });
    expect(planAdd(none, ambient, [view(cur)], cur).actions[0]).toMatchObject({ info: { serviceAccount: '' } });
  });

  it('a pod in the mesh that is already captured, served and annotated: nothing to do (run it twice, same result)', () => {
    expect(plan(pod(enabled), ambient, [view(cur, { captured: true, served: true })]).actions).toEqual([]);
  });

  it('a captured and served pod missing its annotation gets it back, and nothing else', () => {
    expect(brief(plan(pod(), ambient, [view(cur, { captured: true, served: true })]).actions)).toEqual(['capture 2 annotate']);
  });

  it('two live sandboxes: both captured, only the newest served (the older fails closed)', () => {
    expect(brief(plan(pod(), ambient, [view(old), view(cur)]).actions)).toEqual(['capture 1 enroll', 'capture 2 enroll serve annotate']);
    // the runtime recreated the sandbox while the old one was served: the proxy moves to the new one
    expect(brief(plan(pod(enabled), ambient, [view(old, { captured: true, served: true }), view(cur)]).actions)).toEqual(['capture 2 enroll serve annotate']);
  });

  it('a sandbox whose netns is gone (path missing, or not naming it any more and not held) is released', () => {
    const p = plan(pod(enabled), ambient, [view(old, { captured: true, present: false }), view(cur, { captured: true, served: true })]);
    expect(brief(p.actions)).toEqual(['release 1']);
    expect(brief(plan(pod(), ambient, [view(old, { alive: false }), view(cur)]).actions)).toEqual(['release 1', 'capture 2 enroll serve annotate']);
  });

  it('no live sandbox: the stale ones released and the annotation removed', () => {
    expect(brief(plan(pod(enabled), ambient, [view(cur, { captured: true, served: true, present: false })]).actions)).toEqual(['release 2', 'unannotate']);
    expect(plan(pod(), ambient, []).actions).toEqual([]);
  });

  it('a pod leaving the mesh: every captured or served sandbox uncaptured, records kept, annotation removed', () => {
    const p = plan(pod(enabled), plain, [view(old, { captured: true }), view(cur, { captured: true, served: true }), view(sb('3', 3))]);
    expect(p.verdict?.enroll).toBe(false);
    expect(brief(p.actions)).toEqual(['uncapture 1', 'uncapture 2', 'unannotate']);
    expect(brief(plan(pod({ 'istio.io/x': 'y' }), plain, [view(cur)]).actions)).toEqual([]);
  });

  it('a pod opting out with its label leaves, as a pod of a plain namespace does', () => {
    const optOut: PodObj = { ...pod(enabled), metadata: { ...pod(enabled).metadata, labels: { 'istio.io/dataplane-mode': 'none' } } };
    expect(brief(plan(optOut, ambient, [view(cur, { captured: true, served: true })]).actions)).toEqual(['uncapture 2', 'unannotate']);
  });

  it('a pod gone from the cluster: its captured or served sandboxes uncaptured, nothing else', () => {
    expect(brief(plan(undefined, ambient, [view(old), view(cur, { captured: true, served: true })]).actions)).toEqual(['uncapture 2']);
  });
});

describe('planAdd: a CNI ADD', () => {
  it('captures and serves the sandbox it names, and requires a proxy', () => {
    const s = sb('2', 2);
    expect(brief(planAdd(pod(), ambient, [view(s)], s).actions)).toEqual(['capture 2 enroll serve annotate requireProxy']);
  });

  it('an ADD overtaken by a later one for the pod: captured only', () => {
    const [s, later] = [sb('2', 2), sb('3', 3)];
    expect(brief(planAdd(pod(), ambient, [view(s), view(later)], s).actions)).toEqual(['capture 2 enroll requireProxy']);
  });

  it('an ADD repeated for a sandbox already captured and served still checks the proxy, and changes nothing else', () => {
    const s = sb('2', 2);
    expect(brief(planAdd(pod(enabled), ambient, [view(s, { captured: true, served: true })], s).actions)).toEqual(['capture 2 requireProxy']);
  });

  it('a pod outside the mesh: nothing, with the reason', () => {
    const s = sb('2', 2);
    expect(planAdd(pod(), plain, [view(s)], s)).toEqual({ verdict: { enroll: false, reason: 'namespace shop is not labelled istio.io/dataplane-mode=ambient' }, actions: [] });
  });
});

describe('planDel: a CNI DEL', () => {
  it('releases the sandbox of the netns it names, only that one', () => {
    const [old, cur] = [sb('1', 1), sb('2', 2)];
    expect(brief(planDel([old, cur], { containerId: 'c2', netns: '/run/netns/1' }, '1', () => true))).toEqual(['release 1']);
    expect(brief(planDel([old, cur], { containerId: 'c1', netns: '' }, null, (s) => s !== cur))).toEqual(['release 1', 'release 2']);
  });
});

describe('planRestart and undiscovered: after an agent restart', () => {
  const ns = (n: string): NamespaceObj | undefined => (n === 'shop' ? ambient : undefined);

  it('keeps every live sandbox of a pod in the mesh, serves its newest, forgets gone pods and gone netns', () => {
    const [a1, a2, dead, orphan] = [sb('1', 1), sb('2', 2), sb('3', 3), sb('9', 9, 'gone-uid')];
    const r = planRestart([pod()], ns, [view(a1), view(a2), view(dead, { alive: false }), view(orphan)]);
    expect(r.forget).toEqual([dead, orphan]);
    expect(r.keep.map((k) => k.sandbox)).toEqual([a1, a2]);
    expect(r.keep[0]!.settings.excludeInboundPorts).toEqual([9000]);
    expect(r.serve).toEqual([{ sandbox: a2, info: { name: 'web', namespace: 'shop', serviceAccount: 'web-sa' } }]);
    expect(r.annotate).toEqual([pod()]);
    expect(planRestart([pod(enabled)], ns, [view(a2)]).annotate).toEqual([]);
  });

  it('keeps nothing of a pod outside the mesh, and keeps its records', () => {
    const outside: PodObj = { ...pod(), metadata: { ...pod().metadata, namespace: 'other' } };
    const r = planRestart([outside], ns, [view(sb('1', 1))]);
    expect(r).toEqual({ forget: [], keep: [], serve: [], annotate: [] });
  });

  it('only pods in the mesh whose netns is unknown are looked for in /proc', () => {
    const outside: PodObj = { ...pod({}, 'u3'), metadata: { ...pod({}, 'u3').metadata, namespace: 'other' } };
    expect(undiscovered([pod({}, 'u1'), pod({}, 'u2'), outside], ns, (uid) => uid === 'u1').map((p) => p.metadata?.uid)).toEqual(['u2']);
  });
});
