/** deploy/: every manifest validates against the Kubernetes schemas offline, and says what we need. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments, parse } from 'yaml';
import { describe, expect, it } from 'vitest';
import { DaemonSet } from 'kubernetes-models/apps/v1';
import { ConfigMap, Namespace, ServiceAccount } from 'kubernetes-models/v1';
import { ClusterRole, ClusterRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1';

const DIR = join(__dirname, '..', '..', 'deploy');
const kustomization = parse(readFileSync(join(DIR, 'kustomization.yaml'), 'utf8')) as { resources: string[] };
type Doc = { kind: string; metadata: { name: string }; [k: string]: unknown };
const docs: Doc[] = kustomization.resources.flatMap((f) => parseAllDocuments(readFileSync(join(DIR, f), 'utf8')).map((d) => d.toJS() as Doc));
const MODELS: Record<string, new (o: never) => { validate(): void }> = { DaemonSet, ConfigMap, Namespace, ServiceAccount, ClusterRole, ClusterRoleBinding };
type Pod = { hostNetwork?: boolean; hostPID?: boolean; priorityClassName?: string; tolerations?: { operator: string }[]; serviceAccountName: string; volumes: { name: string; hostPath?: { path: string } }[]; containers: { securityContext: { privileged?: boolean; capabilities?: { add?: string[]; drop?: string[] } }; readinessProbe?: object; livenessProbe?: object; resources?: { requests?: object }; volumeMounts: { name: string; mountPath: string }[] }[] };
const ds = (name: string): Pod => (docs.find((d) => d.kind === 'DaemonSet' && d.metadata.name === name) as unknown as { spec: { template: { spec: Pod } } }).spec.template.spec;

describe('deploy manifests', () => {
  it.each(docs.map((d) => [`${d.kind}/${d.metadata.name}`, d] as const))('%s validates against the Kubernetes schema', (_n, d) => {
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

  it('runs the proxy unprivileged with only the capabilities it needs', () => {
    const z = ds('inpod-ztunnel');
    const c = z.containers[0]!;
    expect(c.securityContext.privileged).toBe(false);
    expect(c.securityContext.capabilities).toEqual({ drop: ['ALL'], add: ['NET_ADMIN', 'NET_RAW', 'SYS_ADMIN'] });
    expect(z.tolerations).toEqual([{ operator: 'Exists' }]);
    expect(c.readinessProbe).toBeDefined();
    expect(z.volumes.map((v) => v.hostPath?.path)).toContain('/var/run/ztunnel');
  });

  it('grants the least verbs: the agent may patch pods, the proxy only reads', () => {
    const role = (n: string) => (docs.find((d) => d.kind === 'ClusterRole' && d.metadata.name === n) as unknown as { rules: { resources: string[]; verbs: string[] }[] }).rules;
    const verbs = (n: string) => new Set(role(n).flatMap((r) => r.verbs));
    expect([...verbs('inpod-agent')].sort()).toEqual(['get', 'list', 'patch', 'watch']);
    expect(role('inpod-agent').find((r) => r.verbs.includes('patch'))!.resources).toEqual(['pods']);
    expect([...verbs('inpod-ztunnel')].sort()).toEqual(['get', 'list', 'watch']);
  });

  it('builds in two stages: a compiler-free runtime image', () => {
    const df = readFileSync(join(DIR, 'Dockerfile'), 'utf8');
    expect(df.match(/^FROM /gm)).toHaveLength(2);
    expect(df).toMatch(/FROM node:20-bookworm AS build[\s\S]*libbpf-dev[\s\S]*FROM node:20-bookworm-slim[\s\S]*libbpf1/);
  });
});
