/**
 * Workload name, canonical service and revision, cluster and locality of a pod, derived as istiod
 * derives them for ztunnel (istio/istio pkg/kube/util.go GetDeployMetaFromPod and
 * GetWorkloadMetaFromPod, pkg/kube/labels/labels.go CanonicalService, pilot ambient/workloads.go
 * podWorkloadBuilder, ambient/nodes.go nodeLocality), and filled in by the Kubernetes state
 * source. Cases follow istio's pkg/kube/labels/labels_test.go and pkg/kube/util_test.go.
 */
import { describe, expect, it } from 'vitest';
import type * as k8s from '@kubernetes/client-node';
import { buildKubeState } from '../../ts/state/kube.js';
import { canonicalService, nodeLocality, podWorkloadMeta, podWorkloadName } from '../../ts/state/workloadmeta.js';

const owned = (kind: string, name: string, labels: Record<string, string> = {}) => ({
  name: `${name}-x1y2z`, generateName: `${name}-`, labels, ownerReferences: [{ apiVersion: 'apps/v1', kind, name, controller: true }],
});

describe('canonical service of a workload (istio pkg/kube/labels CanonicalService)', () => {
  it.each([
    [{}, { name: 'wl', revision: 'latest' }],
    [{ app: 'a', version: 'v1' }, { name: 'a', revision: 'v1' }],
    [{ app: 'a', 'app.kubernetes.io/name': 'k', version: 'v1', 'app.kubernetes.io/version': 'kv' }, { name: 'k', revision: 'kv' }],
    [{ app: 'a', 'app.kubernetes.io/name': 'k', 'service.istio.io/canonical-name': 'c', 'service.istio.io/canonical-revision': 'cr', version: 'v' }, { name: 'c', revision: 'cr' }],
    // present but empty still wins, as istio's lookup takes the first key present
    [{ 'service.istio.io/canonical-name': '', app: 'a' }, { name: '', revision: 'latest' }],
  ])('labels %j give %j', (labels, want) => {
    expect(canonicalService(labels as Record<string, string>, 'wl')).toEqual(want);
  });
});

describe('the workload a pod belongs to (istio pkg/kube/util.go GetWorkloadMetaFromPod)', () => {
  it('is the Deployment of a ReplicaSet named after the pod-template-hash', () => {
    expect(podWorkloadName(owned('ReplicaSet', 'web-5d9c7b', { 'pod-template-hash': '5d9c7b' }))).toBe('web');
  });
  it('is the ReplicaSet itself when the hash does not match its name', () => {
    expect(podWorkloadName(owned('ReplicaSet', 'web-abc', { 'pod-template-hash': 'zzz' }))).toBe('web-abc');
  });
  it('is the Argo Rollout of a ReplicaSet named after the rollouts-pod-template-hash', () => {
    expect(podWorkloadName(owned('ReplicaSet', 'web-77f', { 'rollouts-pod-template-hash': '77f' }))).toBe('web');
  });
  it('is the CronJob of a Job named with a timestamp, the Job otherwise', () => {
    expect(podWorkloadName(owned('Job', 'backup-28472160'))).toBe('backup');
    expect(podWorkloadName(owned('Job', 'migrate'))).toBe('migrate');
  });
  it('is the DeploymentConfig of an OpenShift ReplicationController', () => {
    expect(podWorkloadName(owned('ReplicationController', 'app-3', { deploymentconfig: 'app' }))).toBe('app');
  });
  it('is the StatefulSet of its pods, and the pod itself without a generated name or a controller', () => {
    expect(podWorkloadName(owned('StatefulSet', 'db'))).toBe('db');
    expect(podWorkloadName({ name: 'solo', ownerReferences: [{ kind: 'ReplicaSet', name: 'rs', controller: true }] })).toBe('solo');
    expect(podWorkloadName({ name: 'orphan', generateName: 'orphan-', ownerReferences: [{ kind: 'ReplicaSet', name: 'rs' }] })).toBe('orphan');
  });
  it('is what service.istio.io/workload-name says, whatever the owner', () => {
    expect(podWorkloadName(owned('ReplicaSet', 'web-5d9c7b', { 'pod-template-hash': '5d9c7b', 'service.istio.io/workload-name': 'storefront' }))).toBe('storefront');
  });
  it('gives the canonical service the workload name when no label names one, type "pod"', () => {
    expect(podWorkloadMeta(owned('ReplicaSet', 'web-5d9c7b', { 'pod-template-hash': '5d9c7b' }))).toEqual({
      workloadName: 'web', workloadType: 'pod', canonicalName: 'web', canonicalRevision: 'latest',
    });
  });
});

describe('locality of a node (istio ambient/nodes.go nodeLocality)', () => {
  it('is its topology labels, or nothing without them', () => {
    expect(nodeLocality({ 'topology.kubernetes.io/region': 'eu-west', 'topology.kubernetes.io/zone': 'eu-west-1a', 'topology.istio.io/subzone': 'rack7' }))
      .toEqual({ region: 'eu-west', zone: 'eu-west-1a', subzone: 'rack7' });
    expect(nodeLocality({ 'kubernetes.io/hostname': 'n1' })).toBeUndefined();
  });
});

describe('the Kubernetes state source fills them in', () => {
  it('from the pod, its owner, its node and the cluster', () => {
    const pod = {
      metadata: {
        name: 'reviews-v2-7d9f-abcde', generateName: 'reviews-v2-7d9f-', namespace: 'bookinfo', uid: 'u1',
        labels: { app: 'reviews', version: 'v2', 'pod-template-hash': '7d9f' },
        ownerReferences: [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: 'reviews-v2-7d9f', uid: 'rs', controller: true }],
      },
      spec: { nodeName: 'n1', serviceAccountName: 'bookinfo-reviews', containers: [] },
      status: { phase: 'Running', podIP: '10.200.0.9' },
    } as k8s.V1Pod;
    const nodes = [{ metadata: { name: 'n1', labels: { 'topology.kubernetes.io/region': 'r', 'topology.kubernetes.io/zone': 'z' } } }];
    const [w] = buildKubeState([pod], [], [], [], 'cluster.local', { nodes }).workloads;
    expect(w).toMatchObject({
      name: 'reviews-v2-7d9f-abcde', workloadName: 'reviews-v2', workloadType: 'pod', canonicalName: 'reviews', canonicalRevision: 'v2',
      clusterId: 'Kubernetes', locality: { region: 'r', zone: 'z', subzone: '' },
    });
    const [other] = buildKubeState([pod], [], [], [], 'cluster.local', { clusterId: 'east' }).workloads;
    expect(other).toMatchObject({ clusterId: 'east' });
    expect(other!.locality).toBeUndefined();
  });
});

describe('ztunnel\'s local config names them itself (src/state/workload.rs Workload fields)', () => {
  it('reads workloadName, workloadType, canonicalName, canonicalRevision, clusterId and locality, empty allowed', async () => {
    const { parseLocalConfig } = await import('../../ts/state/localconfig.js');
    const [w, bare] = parseLocalConfig(`workloads:
  - {uid: a, name: a-0, namespace: ns, workloadIps: ["10.0.0.1"], workloadName: a, workloadType: pod, canonicalName: app-a, canonicalRevision: "",
     clusterId: c1, locality: {region: r, zone: z, subzone: ""}}
  - {uid: b, name: b-0, namespace: ns, workloadIps: ["10.0.0.2"]}
`).workloads;
    expect(w).toMatchObject({ workloadName: 'a', workloadType: 'pod', canonicalName: 'app-a', canonicalRevision: '', clusterId: 'c1', locality: { region: 'r', zone: 'z', subzone: '' } });
    // absent fields take serde's default, the empty string (reported as "unknown")
    expect(bare).toMatchObject({ canonicalName: '', workloadName: '', locality: { region: '', zone: '', subzone: '' } });
    // ztunnel's Locality has no serde defaults: all three fields or none
    expect(() => parseLocalConfig('workloads:\n  - {uid: a, name: a, namespace: ns, workloadIps: ["10.0.0.1"], locality: {region: r}}\n'))
      .toThrow(/workloads\[0\]\.locality\.zone: missing/);
    expect(() => parseLocalConfig('workloads:\n  - {uid: a, name: a, namespace: ns, workloadIps: ["10.0.0.1"], canonicalName: [x]}\n'))
      .toThrow(/workloads\[0\]\.canonicalName: expected a string, got \["x"\]/);
  });
});
