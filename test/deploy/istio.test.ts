/**
 * deploy/components/istio: inpod as the proxy of an Istio cluster (issue 17 item 3). What it must
 * promise, checked on what `kubectl apply -k` would send: the proxy set up as Istio's ztunnel chart
 * sets ztunnel up (istio manifests/charts/ztunnel/templates/daemonset.yaml: XDS_ADDRESS and
 * CA_ADDRESS istiod.istio-system.svc:15012, the istio-ca-root-cert ConfigMap at
 * /var/run/secrets/istio, a projected token of audience istio-ca at
 * /var/run/secrets/tokens/istio-token, both ztunnel's defaults in src/config.rs), no Kubernetes
 * role for the proxy, no CA key or CA directory on the node, the agent's roles as they were; and
 * every argument it gives is one the real `inpod ztunnel` accepts.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DIR, MODELS, ROOT, find, kustomize, kustomizeWith, type Doc } from './kustomize.js';

type Volume = { name: string; hostPath?: object; secret?: object; configMap?: { name: string }; projected?: { sources: { serviceAccountToken?: { path: string; audience?: string; expirationSeconds?: number } }[] } };
type Container = { args: string[]; env: { name: string; valueFrom?: { fieldRef?: { fieldPath: string } } }[]; volumeMounts: { name: string; mountPath: string }[] };
type PodSpec = { serviceAccountName: string; containers: Container[]; volumes: Volume[] };
const spec = (all: Doc[], name: string, ns?: string): PodSpec => (find(all, 'DaemonSet', name, ns) as unknown as { spec: { template: { spec: PodSpec } } }).spec.template.spec;
type Binding = Doc & { roleRef: { kind: string; name: string }; subjects?: { kind: string; name: string; namespace?: string }[] };

const plain = kustomize(DIR);
const istio = kustomizeWith(['components/istio-layout', 'components/istio']);
const proxy = spec(istio, 'ztunnel', 'istio-system');
const container = proxy.containers[0]!;
const mountOf = (volume: string): string | undefined => container.volumeMounts.find((m) => m.name === volume)?.mountPath;

describe('deploy/components/istio (the proxy of an Istio cluster: xDS and CA from istiod)', () => {
  it.each(istio.map((d) => [`${d.kind}/${d.metadata.namespace ?? ''}/${d.metadata.name}`, d] as const))('%s validates against the Kubernetes schema', (_n, d) => {
    expect(() => new MODELS[d.kind]!(d as never).validate()).not.toThrow();
  });

  it('points the proxy at istiod for state and certificates, as the ztunnel chart does', () => {
    expect(container.args).toContain('--xds-address=istiod.istio-system.svc:15012');
    expect(container.args).toContain('--ca-address=istiod.istio-system.svc:15012');
    expect(container.args.some((a) => a.startsWith('--ca-dir') || a.startsWith('--kubeconfig') || a.startsWith('--config'))).toBe(false);
    // the node metadata ztunnel sends in its xDS node (POD_NAME, POD_NAMESPACE, NODE_NAME, INSTANCE_IP)
    const env = Object.fromEntries(container.env.filter((e) => e.valueFrom?.fieldRef).map((e) => [e.name, e.valueFrom!.fieldRef!.fieldPath]));
    expect(env).toMatchObject({ POD_NAME: 'metadata.name', POD_NAMESPACE: 'metadata.namespace', NODE_NAME: 'spec.nodeName', INSTANCE_IP: 'status.podIP' });
  });

  it('mounts istiod\'s root and a token for audience istio-ca where ztunnel looks by default, and no CA key or CA directory', () => {
    const root = proxy.volumes.find((v) => v.configMap?.name === 'istio-ca-root-cert');
    expect(root && mountOf(root.name)).toBe('/var/run/secrets/istio'); // root-cert.pem inside
    const token = proxy.volumes.find((v) => v.projected?.sources.some((s) => s.serviceAccountToken));
    expect(token?.projected?.sources[0]?.serviceAccountToken).toEqual({ path: 'istio-token', audience: 'istio-ca', expirationSeconds: 43200 });
    expect(mountOf(token!.name)).toBe('/var/run/secrets/tokens');
    expect(proxy.volumes.filter((v) => v.secret)).toEqual([]);
    expect(proxy.volumes.filter((v) => v.hostPath).map((v) => v.name)).toEqual(['ztunnel-sock']);
  });

  it('binds no Kubernetes role to the proxy (upstream ztunnel has none) and keeps the agent\'s roles as they are', () => {
    const bindings = istio.filter((d) => d.kind === 'ClusterRoleBinding' || d.kind === 'RoleBinding') as Binding[];
    const toProxy = bindings.filter((b) => b.subjects?.some((s) => s.name === proxy.serviceAccountName));
    expect(proxy.serviceAccountName).toBe('ztunnel'); // istiod's CA_TRUSTED_NODE_ACCOUNTS default: istio-system/ztunnel
    expect(toProxy).toEqual([]);
    expect(istio.filter((d) => d.kind === 'ClusterRole' || d.kind === 'Role').map((d) => d.metadata.name)).toEqual(
      plain.filter((d) => (d.kind === 'ClusterRole' || d.kind === 'Role') && d.metadata.name !== 'inpod-ztunnel').map((d) => d.metadata.name));
    const agentRoles = (all: Doc[]): unknown[] => all.filter((d) => (d.kind === 'ClusterRole' || d.kind === 'Role') && d.metadata.name === 'inpod-agent');
    expect(agentRoles(istio)).toEqual(agentRoles(plain));
  });

  it('gives the proxy only arguments the real `inpod ztunnel` accepts: it starts, and stops only for the root file the cluster would mount', () => {
    const args = container.args.map((a) => a.replace('$(TRUST_DOMAIN)', 'cluster.local'));
    const root = '/nonexistent-inpod-test/root-cert.pem';
    const r = spawnSync(process.execPath, [join(ROOT, 'dist', 'cli', 'main.js'), 'ztunnel', ...args, `--ca-root-ca=${root}`, `--xds-root-ca=${root}`, '--zds=/nonexistent-inpod-test/zds.sock', '--admin-addr=127.0.0.1:0'],
      { encoding: 'utf8', timeout: 20_000, env: { ...process.env, POD_NAME: 'ztunnel-x', POD_NAMESPACE: 'istio-system', NODE_NAME: 'n1', INSTANCE_IP: '10.200.0.1', KUBERNETES_SERVICE_HOST: '' } });
    const out = `${r.stdout}${r.stderr}`;
    expect(out).not.toMatch(/Unknown option|unexpected argument|INPOD_ERR_USAGE/);
    expect(r.status).not.toBe(0);
    expect(out).toContain(root);
  });
});
