/**
 * deploy/ (`make deploy-check`, part of `make test`): rendered offline by kustomize as
 * `kubectl apply -k` renders it (the default and with the shared-CA component), every object
 * validated against the Kubernetes schemas (kubernetes-models), and what the manifests promise:
 * least-privilege roles tied to what the code reads, the agent's own pod identity for its shutdown
 * decision, no CA key in the proxies unless opted in.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { parseAllDocuments, parse } from 'yaml';
import { describe, expect, it } from 'vitest';
import { DaemonSet } from 'kubernetes-models/apps/v1';
import { ConfigMap, Namespace, ServiceAccount } from 'kubernetes-models/v1';
import { ClusterRole, ClusterRoleBinding, Role, RoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1';

const ROOT = join(__dirname, '..', '..');
const DIR = join(ROOT, 'deploy');
type Doc = { kind: string; metadata: { name: string; namespace?: string }; [k: string]: unknown };
type Rule = { apiGroups: string[]; resources: string[]; verbs: string[]; resourceNames?: string[] };
type Volume = { name: string; hostPath?: { path: string }; secret?: { secretName: string; optional?: boolean } };
type Env = { name: string; valueFrom?: { fieldRef?: { fieldPath: string } } };
type Pod = { hostNetwork?: boolean; hostPID?: boolean; priorityClassName?: string; terminationGracePeriodSeconds?: number; tolerations?: { operator: string }[]; serviceAccountName: string; volumes: Volume[]; containers: { env?: Env[]; securityContext: { privileged?: boolean; capabilities?: { add?: string[]; drop?: string[] } }; readinessProbe?: object; livenessProbe?: object; resources?: { requests?: object }; volumeMounts: { name: string; mountPath: string }[] }[] };
const MODELS: Record<string, new (o: never) => { validate(): void }> = { DaemonSet, ConfigMap, Namespace, ServiceAccount, ClusterRole, ClusterRoleBinding, Role, RoleBinding };

/** `kubectl kustomize` (kustomize built in, no cluster needed): what `kubectl apply -k` would send. */
function kustomize(dir: string): Doc[] {
  let out: string;
  try {
    out = execFileSync('kubectl', ['kustomize', dir], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: string };
    if (err.code === 'ENOENT') throw new Error('make deploy-check renders deploy/ with `kubectl kustomize` (kubectl 1.21 or newer, no cluster needed); install kubectl');
    throw new Error(`kubectl kustomize ${dir} failed: ${err.stderr ?? err.message}`);
  }
  return parseAllDocuments(out).map((d) => d.toJS() as Doc);
}

/** deploy/ with the given components, from a kustomization outside it (as a user's own would be). */
function kustomizeWith(components: string[]): Doc[] {
  const dir = mkdtempSync(join(tmpdir(), 'inpod-deploy-check'));
  try {
    const rel = relative(dir, DIR); // kustomize takes directories by relative path only
    writeFileSync(join(dir, 'kustomization.yaml'), `resources: [${rel}]\ncomponents: [${components.map((c) => `${rel}/${c}`).join(', ')}]\n`);
    return kustomize(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const docs = kustomize(DIR);
const sharedCa = kustomizeWith(['components/shared-ca']);
const find = (all: Doc[], kind: string, name: string): Doc => {
  const d = all.find((x) => x.kind === kind && x.metadata.name === name);
  if (!d) throw new Error(`no ${kind}/${name} in the rendered manifests`);
  return d;
};
const ds = (name: string, all = docs): Pod => (find(all, 'DaemonSet', name) as unknown as { spec: { template: { spec: Pod } } }).spec.template.spec;
const rules = (kind: 'ClusterRole' | 'Role', name: string): Rule[] => (find(docs, kind, name) as unknown as { rules: Rule[] }).rules;
/** (group/resource, verb) pairs a role grants, for exact comparison. */
const grants = (rs: Rule[]): string[] => rs.flatMap((r) => r.apiGroups.flatMap((g) => r.resources.flatMap((res) => r.verbs.map((v) => `${g || 'core'}/${res}:${v}${r.resourceNames ? `[${r.resourceNames.join(',')}]` : ''}`)))).sort();
/** The collections a source file list-watches (the paths its informers are built on), as group/resource. */
const watched = (file: string): string[] => [...readFileSync(join(ROOT, file), 'utf8').matchAll(/ListWatch(?:<[^>]*>)?\('([^']+)'|mk\('([^']+)'/g)]
  .map((m) => (m[1] ?? m[2])!.split('/'))
  .map((p) => (p[1] === 'api' ? `core/${p[3]}` : `${p[2]}/${p[4]}`))
  .sort();

describe('deploy manifests (rendered by kustomize)', () => {
  it('lists every manifest in deploy/ in its kustomization', () => {
    const listed = (parse(readFileSync(join(DIR, 'kustomization.yaml'), 'utf8')) as { resources: string[] }).resources;
    expect(readdirSync(DIR).filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml').sort()).toEqual([...listed].sort());
  });

  it.each([...docs.map((d) => [`${d.kind}/${d.metadata.name}`, d] as const), ...sharedCa.filter((d) => d.kind === 'DaemonSet').map((d) => [`${d.kind}/${d.metadata.name} with components/shared-ca`, d] as const)])('%s validates against the Kubernetes schema', (_n, d) => {
    const Model = MODELS[d.kind];
    expect(Model, `no schema model for ${d.kind}`).toBeDefined();
    expect(() => new Model!(d as never).validate()).not.toThrow();
  });

  it('runs the agent privileged on the host network, on every node, with the host mounts it needs', () => {
    const a = ds('inpod-agent');
    expect(a.hostNetwork).toBe(true);
    expect(a.hostPID).toBe(true);
    expect(a.priorityClassName).toBe('system-node-critical');
    expect(a.tolerations).toEqual([{ operator: 'Exists' }]);
    const c = a.containers[0]!;
    expect(c.securityContext.privileged).toBe(true);
    expect(c.readinessProbe).toBeDefined();
    expect(c.livenessProbe).toBeDefined();
    expect(c.resources?.requests).toBeDefined();
    const hostPaths = a.volumes.map((v) => v.hostPath?.path).filter(Boolean);
    for (const p of ['/sys/fs/bpf', '/sys/fs/cgroup', '/etc/cni/net.d', '/opt/cni/bin', '/var/run/ztunnel', '/var/run/inpod']) expect(hostPaths).toContain(p);
  });

  it('gives the agent its own pod name and namespace (downward API) and the grace period its shutdown decision needs', () => {
    const a = ds('inpod-agent');
    const env = Object.fromEntries((a.containers[0]!.env ?? []).map((e) => [e.name, e.valueFrom?.fieldRef?.fieldPath]));
    expect(env).toMatchObject({ NODE_NAME: 'spec.nodeName', POD_NAME: 'metadata.name', POD_NAMESPACE: 'metadata.namespace' });
    // ts/agent/selfowner.ts: the lookup keeps to a budget of 6 s, and the agent stops after it
    expect(a.terminationGracePeriodSeconds).toBeGreaterThanOrEqual(7);
  });

  it('grants the agent what it reads and writes, no more: list/watch of its sources, patch of pods/status, get of its node, namespace, own pod and own DaemonSet', () => {
    expect(watched('ts/agent/kube.ts')).toEqual(['core/namespaces', 'core/pods']);
    expect(grants(rules('ClusterRole', 'inpod-agent'))).toEqual([
      'core/namespaces:get', 'core/namespaces:list', 'core/namespaces:watch', 'core/nodes:get', 'core/pods/status:patch', 'core/pods:list', 'core/pods:watch',
    ]);
    // namespaced: its own pod (for the owner reference) and its own DaemonSet, by name
    expect(grants(rules('Role', 'inpod-agent'))).toEqual(['apps/daemonsets:get[inpod-agent]', 'core/pods:get']);
    expect(find(docs, 'Role', 'inpod-agent').metadata.namespace).toBe(find(docs, 'DaemonSet', 'inpod-agent').metadata.namespace);
    const binding = find(docs, 'RoleBinding', 'inpod-agent') as unknown as { roleRef: { kind: string; name: string }; subjects: { name: string }[] };
    expect(binding.roleRef).toMatchObject({ kind: 'Role', name: 'inpod-agent' });
    expect(binding.subjects.map((s) => s.name)).toEqual([ds('inpod-agent').serviceAccountName]);
  });

  it('grants the proxy list and watch of exactly what its Kubernetes-state mode watches, nothing else', () => {
    const sources = watched('ts/state/kube.ts');
    expect(sources).toEqual([
      'core/namespaces', 'core/nodes', 'core/pods', 'core/services', 'discovery.k8s.io/endpointslices',
      'gateway.networking.k8s.io/gatewayclasses', 'gateway.networking.k8s.io/gateways', 'security.istio.io/authorizationpolicies',
    ]);
    expect(grants(rules('ClusterRole', 'inpod-ztunnel'))).toEqual(sources.flatMap((s) => [`${s}:list`, `${s}:watch`]).sort());
  });

  it('runs the proxy unprivileged with only the capabilities it needs', () => {
    const z = ds('inpod-ztunnel');
    const c = z.containers[0]!;
    expect(c.securityContext.privileged).toBe(false);
    expect(c.securityContext.capabilities).toEqual({ drop: ['ALL'], add: ['NET_ADMIN', 'NET_RAW', 'SYS_ADMIN'] });
    expect(z.tolerations).toEqual([{ operator: 'Exists' }]);
    expect(c.readinessProbe).toBeDefined();
    expect(z.volumes.map((v) => v.hostPath?.path)).toContain('/var/run/ztunnel');
  });

  it('rolls both DaemonSets with a surge: the new pod runs beside the old one, which goes only once the new one is ready; the proxy has its own netns for its node ports', () => {
    for (const name of ['inpod-ztunnel', 'inpod-agent']) {
      const strategy = (find(docs, 'DaemonSet', name) as unknown as { spec: { updateStrategy: object } }).spec.updateStrategy;
      expect(strategy, name).toEqual({ type: 'RollingUpdate', rollingUpdate: { maxSurge: 1, maxUnavailable: 0 } });
    }
    // two proxy pods on a node each listen on 15020/15021 (ARCHITECTURE.md, "Upgrades")
    expect(ds('inpod-ztunnel').hostNetwork).toBeFalsy();
  });

  it('mounts no CA key into the proxies by default: each node keeps its own CA on the host', () => {
    for (const d of docs.filter((x) => x.kind === 'DaemonSet')) {
      expect(ds(d.metadata.name).volumes.filter((v) => v.secret), d.metadata.name).toEqual([]);
    }
    expect(ds('inpod-ztunnel').volumes.find((v) => v.name === 'ca')).toEqual({ name: 'ca', hostPath: { path: '/var/run/inpod-ca', type: 'DirectoryOrCreate' } });
  });

  it('with components/shared-ca (the opt-in), mounts the cluster cacerts secret as the proxies\' CA and changes nothing else', () => {
    expect(ds('inpod-ztunnel', sharedCa).volumes.find((v) => v.name === 'ca')).toEqual({ name: 'ca', secret: { secretName: 'cacerts', optional: false, defaultMode: 0o400 } });
    const rest = (all: Doc[]): unknown => all.map((d) => (d.kind === 'DaemonSet' && d.metadata.name === 'inpod-ztunnel' ? { ...d, spec: 'ztunnel' } : d));
    expect(rest(sharedCa)).toEqual(rest(docs));
    const others = (all: Doc[]): unknown => ds('inpod-ztunnel', all).volumes.filter((v) => v.name !== 'ca');
    expect(others(sharedCa)).toEqual(others(docs));
  });

  it('builds in two stages: a compiler-free runtime image', () => {
    const df = readFileSync(join(DIR, 'Dockerfile'), 'utf8');
    expect(df.match(/^FROM /gm)).toHaveLength(2);
    expect(df).toMatch(/FROM node:20-bookworm AS build[\s\S]*libbpf-dev[\s\S]*FROM node:20-bookworm-slim[\s\S]*libbpf1/);
  });
});
