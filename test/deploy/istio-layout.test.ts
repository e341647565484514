/**
 * deploy/components/istio-layout: the proxy where istioctl looks for ztunnel. What istioctl does
 * to reach it (istio, at the snapshot in /work/.mirror): `istioctl ztunnel-config` looks up
 * `daemonset/ztunnel` in its Istio namespace, istio-system by default (istioctl/pkg/ztunnelconfig/
 * ztunnelconfig.go runConfigDump, PodOnNodeFromDaemonset: the DaemonSet's selector matchLabels
 * and the node), takes a pod labelled app=ztunnel for a ztunnel (istioctl/pkg/util/ambient/util.go
 * IsZtunnelPod), and port-forwards to its admin port, 15000 by default (istioctl/pkg/util/
 * constants.go DefaultProxyAdminPort), for GET /config_dump and POST /logging. The labels are those
 * of Istio's ztunnel chart (manifests/charts/ztunnel/templates/daemonset.yaml).
 */
import { describe, expect, it } from 'vitest';
import { PORTS } from '../../ts/istio.js';
import { DIR, MODELS, find, kustomize, kustomizeWith, type Doc } from './kustomize.js';

type Container = { name: string; args?: string[]; command?: string[]; env?: { name: string; value?: string; valueFrom?: { configMapKeyRef?: { name: string; key: string } } }[] };
type DaemonSetDoc = Doc & {
  spec: {
    selector: { matchLabels: Record<string, string> };
    template: { metadata: { labels: Record<string, string> }; spec: { serviceAccountName: string; containers: Container[]; volumes: { name: string; secret?: { secretName: string } }[] } };
  };
};

const plain = kustomize(DIR);
const istio = kustomizeWith(['components/istio-layout']);
const istioSharedCa = kustomizeWith(['components/istio-layout', 'components/shared-ca']);
const ds = (all: Doc[], name: string): DaemonSetDoc => find(all, 'DaemonSet', name) as DaemonSetDoc;

describe('deploy/components/istio-layout (the proxy as Istio\'s ztunnel DaemonSet)', () => {
  it.each(istio.map((d) => [`${d.kind}/${d.metadata.namespace ?? ''}/${d.metadata.name}`, d] as const))('%s validates against the Kubernetes schema', (_n, d) => {
    expect(() => new MODELS[d.kind]!(d as never).validate()).not.toThrow();
  });

  it('puts the proxy where istioctl finds it: DaemonSet ztunnel in istio-system, pods selected by app=ztunnel and labelled as Istio\'s, admin on 15000', () => {
    const z = ds(istio, 'ztunnel');
    expect(z.metadata.namespace).toBe('istio-system');
    expect(z.metadata.labels).toMatchObject({ 'app.kubernetes.io/name': 'ztunnel' }); // the chart's DaemonSet label
    expect(z.spec.selector.matchLabels).toEqual({ app: 'ztunnel' });
    const labels = z.spec.template.metadata.labels;
    // PodOnNodeFromDaemonset lists pods by the selector; IsZtunnelPod checks app=ztunnel
    expect(labels).toMatchObject(z.spec.selector.matchLabels);
    expect(labels).toEqual({ app: 'ztunnel', 'app.kubernetes.io/name': 'ztunnel', 'sidecar.istio.io/inject': 'false', 'istio.io/dataplane-mode': 'none' });
    const c = z.spec.template.spec.containers[0]!;
    expect(c.name).toBe('istio-proxy');
    expect(c.command).toEqual(['inpod', 'ztunnel']);
    // the proxy's admin stays on its default, istioctl's --proxy-admin-port default
    expect(PORTS.admin).toBe(15000);
    expect((c.args ?? []).filter((a) => a.startsWith('--admin-addr'))).toEqual([]);
    expect(istio.filter((d) => d.kind === 'DaemonSet' && d.metadata.name === 'inpod-ztunnel')).toEqual([]);
  });

  it('runs it as service account istio-system/ztunnel with the proxy\'s role', () => {
    const z = ds(istio, 'ztunnel');
    expect(z.spec.template.spec.serviceAccountName).toBe('ztunnel');
    expect(find(istio, 'ServiceAccount', 'ztunnel').metadata.namespace).toBe('istio-system');
    const binding = find(istio, 'ClusterRoleBinding', 'inpod-ztunnel') as Doc & { roleRef: { name: string }; subjects: object[] };
    expect(binding.roleRef.name).toBe('inpod-ztunnel');
    expect(binding.subjects).toEqual([{ kind: 'ServiceAccount', name: 'ztunnel', namespace: 'istio-system' }]);
  });

  it('gives the proxy its settings in its own namespace, the same values as inpod-system/inpod-config', () => {
    const z = ds(istio, 'ztunnel');
    const settings = find(plain, 'ConfigMap', 'inpod-config') as Doc & { data: Record<string, string> };
    for (const e of z.spec.template.spec.containers[0]!.env ?? []) {
      const ref = e.valueFrom?.configMapKeyRef;
      if (!ref) continue;
      const cm = find(istio, 'ConfigMap', ref.name, 'istio-system') as Doc & { data: Record<string, string> };
      expect(cm.data[ref.key], e.name).toBe(settings.data[ref.key]);
    }
  });

  it('lets the proxy\'s pods start without asking the agent, as in inpod-system: the agent excludes istio-system', () => {
    const args = ds(istio, 'inpod-agent').spec.template.spec.containers[0]!.args ?? [];
    expect(args).toContain('--exclude-namespaces=kube-system,inpod-system,istio-system');
  });

  it('creates no istio-system namespace (deleting inpod must not delete Istio\'s), and changes nothing else', () => {
    expect(istio.filter((d) => d.kind === 'Namespace').map((d) => d.metadata.name)).toEqual(['inpod-system']);
    const moved = new Set(['DaemonSet/inpod-ztunnel', 'DaemonSet/ztunnel', 'DaemonSet/inpod-agent', 'ServiceAccount/inpod-ztunnel', 'ServiceAccount/ztunnel', 'ClusterRoleBinding/inpod-ztunnel']);
    const rest = (all: Doc[]): Doc[] => all.filter((d) => !moved.has(`${d.kind}/${d.metadata.name}`) && d.metadata.namespace !== 'istio-system');
    expect(rest(istio)).toEqual(rest(plain));
    // the agent: only the one argument added
    const agentArgs = (all: Doc[]): string[] => ds(all, 'inpod-agent').spec.template.spec.containers[0]!.args ?? [];
    expect(agentArgs(istio)).toEqual([...agentArgs(plain), '--exclude-namespaces=kube-system,inpod-system,istio-system']);
  });

  it('combines with components/shared-ca: the cacerts secret is mounted into istio-system/ztunnel', () => {
    const z = ds(istioSharedCa, 'ztunnel');
    expect(z.metadata.namespace).toBe('istio-system');
    expect(z.spec.template.spec.volumes.find((v) => v.name === 'ca')?.secret?.secretName).toBe('cacerts');
  });
});
