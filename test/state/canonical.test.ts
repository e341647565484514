/**
 * Who a pod is, as istiod tells ztunnel (ts/state/canonical.ts): the canonical service and
 * revision (istio pkg/kube/labels/labels.go CanonicalService), the owning workload's name
 * (pkg/kube/util.go GetWorkloadMetaFromPod), and what the Kubernetes state source fills in
 * (pilot/pkg/serviceregistry/ambient/workloads.go: WorkloadType POD, ClusterId).
 */
import type * as k8s from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { canonicalService, podWorkloadName } from '../../ts/state/canonical.js';
import { buildKubeState } from '../../ts/state/kube.js';
import { baggageOf } from '../../ts/proxy/hbone/headers.js';

describe('canonical service (istio pkg/kube/labels CanonicalService)', () => {
  it('takes the name from service.istio.io/canonical-name, then app.kubernetes.io/name, then app, else the workload name', () => {
    expect(canonicalService({ 'service.istio.io/canonical-name': 'c', 'app.kubernetes.io/name': 'k', app: 'a' }, 'w').name).toBe('c');
    expect(canonicalService({ 'app.kubernetes.io/name': 'k', app: 'a' }, 'w').name).toBe('k');
    expect(canonicalService({ app: 'a' }, 'w').name).toBe('a');
    expect(canonicalService({}, 'w').name).toBe('w');
  });

  it('takes the revision from service.istio.io/canonical-revision, then app.kubernetes.io/version, then version, else "latest"', () => {
    expect(canonicalService({ 'service.istio.io/canonical-revision': 'r', 'app.kubernetes.io/version': 'k', version: 'v' }, 'w').revision).toBe('r');
    expect(canonicalService({ 'app.kubernetes.io/version': 'k', version: 'v' }, 'w').revision).toBe('k');
    expect(canonicalService({ version: 'v' }, 'w').revision).toBe('v');
    expect(canonicalService({}, 'w').revision).toBe('latest');
  });

  it('counts a label that is present but empty, as istio does', () => {
    expect(canonicalService({ app: '', version: '' }, 'w')).toEqual({ name: '', revision: '' });
  });
});

describe('workload name (istio pkg/kube/util.go GetWorkloadMetaFromPod)', () => {
  const owned = (kind: string, name: string, labels: Record<string, string> = {}) => ({
    name: `${name}-x1y2z`, generateName: `${name}-`, labels, ownerReferences: [{ kind, name, controller: true }],
  });

  it('traces a ReplicaSet pod to its Deployment through pod-template-hash', () => {
    expect(podWorkloadName(owned('ReplicaSet', 'web-7d4b9c8f6', { 'pod-template-hash': '7d4b9c8f6' }))).toBe('web');
  });

  it('traces an Argo Rollout, a DeploymentConfig and a CronJob', () => {
    expect(podWorkloadName(owned('ReplicaSet', 'roll-5f6d', { 'rollouts-pod-template-hash': '5f6d' }))).toBe('roll');
    expect(podWorkloadName(owned('ReplicationController', 'dc-3', { deploymentconfig: 'dc' }))).toBe('dc');
    expect(podWorkloadName(owned('Job', 'backup-28391460'))).toBe('backup');
    expect(podWorkloadName(owned('Job', 'once'))).toBe('once');
  });

  it('names other controllers by themselves (StatefulSet, DaemonSet), a ReplicaSet without the hash by itself', () => {
    expect(podWorkloadName(owned('StatefulSet', 'db'))).toBe('db');
    expect(podWorkloadName(owned('ReplicaSet', 'rs'))).toBe('rs');
  });

  it('keeps the pod name for a pod whose name was not generated or that has no controller', () => {
    expect(podWorkloadName({ name: 'web-0', ownerReferences: [{ kind: 'StatefulSet', name: 'web', controller: true }] })).toBe('web-0');
    expect(podWorkloadName({ name: 'p-abc', generateName: 'p-', ownerReferences: [{ kind: 'ReplicaSet', name: 'rs', controller: false }] })).toBe('p-abc');
  });

  it('takes service.istio.io/workload-name over everything', () => {
    expect(podWorkloadName({ ...owned('ReplicaSet', 'web-7d', { 'pod-template-hash': '7d' }), labels: { 'service.istio.io/workload-name': 'chosen', 'pod-template-hash': '7d' } })).toBe('chosen');
  });
});

describe('the Kubernetes state source fills them in as istiod does', () => {
  it('a Deployment pod labelled app/version: workload name, type pod, canonical service and revision, cluster Kubernetes; its baggage', () => {
    const pod = {
      metadata: {
        name: 'web-7d4b9c8f6-abcde', generateName: 'web-7d4b9c8f6-', namespace: 'shop', uid: 'u1',
        labels: { app: 'web', version: 'v2', 'pod-template-hash': '7d4b9c8f6' },
        ownerReferences: [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: 'web-7d4b9c8f6', uid: 'rs1', controller: true }],
      },
      spec: { serviceAccountName: 'web', containers: [] },
      status: { phase: 'Running', podIP: '10.200.9.5' },
    } as unknown as k8s.V1Pod;
    const [w] = buildKubeState([pod], [], [], [], 'cluster.local').workloads;
    expect(w).toMatchObject({ workloadName: 'web', workloadType: 'pod', canonicalName: 'web', canonicalRevision: 'v2', clusterId: 'Kubernetes' });
    expect(baggageOf(w!)).toBe('k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.pod.name=web,service.name=web,service.version=v2');
  });
});
