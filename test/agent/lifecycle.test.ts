/**
 * The shutdown decision (ts/agent/lifecycle.ts): keep inpod-cni on an upgrade or reboot, remove
 * it when no agent comes back to this node; "comes back" judged as the DaemonSet controller does.
 */
import { describe, expect, it } from 'vitest';
import { requirementMatches, schedulesOn, shutdownVerdict, termMatches, tolerates, type DaemonSetObj, type NodeObj, type PodTemplateSpec } from '../../ts/agent/lifecycle.js';

const ds = (spec: PodTemplateSpec = {}, deletionTimestamp?: string): DaemonSetObj => ({ metadata: { name: 'inpod-agent', namespace: 'inpod-system', deletionTimestamp }, spec: { template: { spec } } });
const node = (labels: Record<string, string> = {}, taints: NodeObj['spec'] = {}): NodeObj => ({ metadata: { name: 'node1', labels: { 'kubernetes.io/hostname': 'node1', ...labels } }, spec: taints });

describe('shutdownVerdict', () => {
  it('keeps the plugin while the DaemonSet exists and schedules to the node (an upgrade or a reboot)', () => {
    const v = shutdownVerdict({ state: 'present', daemonSet: ds({ tolerations: [{ operator: 'Exists' }] }), node: node() });
    expect(v).toEqual({ cleanup: false, reason: expect.stringMatching(/inpod-agent still schedules to node node1: an upgrade or a reboot/) });
  });

  it('removes the plugin when the DaemonSet is gone, being deleted, or the node object is gone', () => {
    expect(shutdownVerdict({ state: 'gone', why: 'DaemonSet inpod-system/inpod-agent is gone' })).toEqual({ cleanup: true, reason: 'DaemonSet inpod-system/inpod-agent is gone' });
    expect(shutdownVerdict({ state: 'present', daemonSet: ds({}, '2026-01-01T00:00:00Z'), node: node() })).toMatchObject({ cleanup: true, reason: 'DaemonSet inpod-agent is being deleted' });
    expect(shutdownVerdict({ state: 'present', daemonSet: ds(), node: null })).toMatchObject({ cleanup: true });
  });

  it('removes the plugin when the DaemonSet no longer schedules to this node, and says why', () => {
    const v = shutdownVerdict({ state: 'present', daemonSet: ds({ nodeSelector: { mesh: 'yes' } }), node: node({ mesh: 'no' }) });
    expect(v).toEqual({ cleanup: true, reason: 'DaemonSet inpod-agent no longer schedules to node node1: nodeSelector mesh=yes does not match the node\'s labels' });
  });

  it('removes the plugin when the API refuses the agent (its role or account went with the uninstall), as istio-cni on Unauthorized', () => {
    expect(shutdownVerdict({ state: 'revoked', status: 403, what: 'DaemonSet inpod-system/inpod-agent' })).toMatchObject({ cleanup: true });
  });

  it('keeps the plugin (fail closed) when the API cannot be read, and without an API server', () => {
    expect(shutdownVerdict({ state: 'unknown', error: 'connect ECONNREFUSED' })).toMatchObject({ cleanup: false, reason: expect.stringMatching(/inpod agent uninstall/) });
    expect(shutdownVerdict({ state: 'no-api' })).toMatchObject({ cleanup: false });
  });
});

describe('schedulesOn (the DaemonSet controller\'s predicates)', () => {
  it('matches the nodeSelector against the node labels', () => {
    expect(schedulesOn(ds({ nodeSelector: { 'kubernetes.io/os': 'linux' } }), node({ 'kubernetes.io/os': 'linux' }))).toEqual({ fits: true });
    expect(schedulesOn(ds({ nodeSelector: { 'kubernetes.io/os': 'linux' } }), node())).toMatchObject({ fits: false });
  });

  it('matches the required node affinity: terms are ORed, requirements within a term ANDed', () => {
    const affinity = (terms: object[]): PodTemplateSpec => ({ affinity: { nodeAffinity: { requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: terms as never } } } });
    const zoneA = { matchExpressions: [{ key: 'zone', operator: 'In', values: ['a'] }, { key: 'gpu', operator: 'DoesNotExist' }] };
    const named = { matchFields: [{ key: 'metadata.name', operator: 'In', values: ['node9'] }] };
    expect(schedulesOn(ds(affinity([zoneA, named])), node({ zone: 'a' }))).toEqual({ fits: true });
    expect(schedulesOn(ds(affinity([zoneA, named])), node({ zone: 'a', gpu: 'x' }))).toMatchObject({ fits: false, why: 'no term of its required node affinity matches the node' });
    expect(schedulesOn(ds(affinity([named])), { ...node(), metadata: { name: 'node9' } })).toEqual({ fits: true });
    expect(schedulesOn(ds(affinity([])), node())).toMatchObject({ fits: false });
  });

  it('refuses an untolerated NoSchedule or NoExecute taint, and ignores PreferNoSchedule', () => {
    const tainted = node({}, { taints: [{ key: 'dedicated', value: 'gpu', effect: 'NoSchedule' }] });
    expect(schedulesOn(ds(), tainted)).toEqual({ fits: false, why: 'taint dedicated=gpu:NoSchedule is not tolerated' });
    expect(schedulesOn(ds({ tolerations: [{ key: 'dedicated', operator: 'Equal', value: 'gpu' }] }), tainted)).toEqual({ fits: true });
    expect(schedulesOn(ds({ tolerations: [{ operator: 'Exists' }] }), tainted)).toEqual({ fits: true });
    expect(schedulesOn(ds(), node({}, { taints: [{ key: 'x', effect: 'PreferNoSchedule' }] }))).toEqual({ fits: true });
  });

  it('keeps a node that is rebooting, draining or under pressure: the controller tolerates those taints for every DaemonSet pod', () => {
    for (const [key, effect] of [['node.kubernetes.io/not-ready', 'NoExecute'], ['node.kubernetes.io/unreachable', 'NoExecute'], ['node.kubernetes.io/unschedulable', 'NoSchedule'], ['node.kubernetes.io/disk-pressure', 'NoSchedule'], ['node.kubernetes.io/memory-pressure', 'NoSchedule'], ['node.kubernetes.io/pid-pressure', 'NoSchedule']]) {
      expect(schedulesOn(ds(), node({}, { taints: [{ key: key!, effect: effect! }] })), key).toEqual({ fits: true });
    }
    const netDown = node({}, { taints: [{ key: 'node.kubernetes.io/network-unavailable', effect: 'NoSchedule' }] });
    expect(schedulesOn(ds({ hostNetwork: true }), netDown)).toEqual({ fits: true });
    expect(schedulesOn(ds(), netDown)).toMatchObject({ fits: false });
  });

  it('refuses a template pinned to another node', () => {
    expect(schedulesOn(ds({ nodeName: 'node2' }), node())).toMatchObject({ fits: false });
  });
});

describe('label requirements and tolerations', () => {
  it('evaluates every operator as the API does', () => {
    const l = { a: '1', b: 'x' };
    expect(requirementMatches({ key: 'a', operator: 'In', values: ['1', '2'] }, l)).toBe(true);
    expect(requirementMatches({ key: 'c', operator: 'In', values: ['1'] }, l)).toBe(false);
    expect(requirementMatches({ key: 'c', operator: 'NotIn', values: ['1'] }, l)).toBe(true);
    expect(requirementMatches({ key: 'a', operator: 'NotIn', values: ['1'] }, l)).toBe(false);
    expect(requirementMatches({ key: 'b', operator: 'Exists' }, l)).toBe(true);
    expect(requirementMatches({ key: 'b', operator: 'DoesNotExist' }, l)).toBe(false);
    expect(requirementMatches({ key: 'a', operator: 'Gt', values: ['0'] }, l)).toBe(true);
    expect(requirementMatches({ key: 'a', operator: 'Lt', values: ['1'] }, l)).toBe(false);
    expect(requirementMatches({ key: 'b', operator: 'Gt', values: ['0'] }, l)).toBe(false);
    expect(requirementMatches({ key: 'a', operator: 'Near', values: ['1'] }, l)).toBe(false);
    expect(termMatches({}, l, 'n')).toBe(false);
    expect(termMatches({ matchFields: [{ key: 'metadata.labels', operator: 'In', values: ['n'] }] }, l, 'n')).toBe(false);
  });

  it('tolerates as Toleration.ToleratesTaint', () => {
    const t = { key: 'k', value: 'v', effect: 'NoSchedule' };
    expect(tolerates({ key: 'k', operator: 'Exists' }, t)).toBe(true);
    expect(tolerates({ key: 'k', value: 'v' }, t)).toBe(true);
    expect(tolerates({ key: 'k', value: 'w' }, t)).toBe(false);
    expect(tolerates({ key: 'k', operator: 'Exists', effect: 'NoExecute' }, t)).toBe(false);
    expect(tolerates({ operator: 'Exists' }, t)).toBe(true);
    expect(tolerates({ operator: 'Equal', value: 'v' }, t)).toBe(false);
  });
});
