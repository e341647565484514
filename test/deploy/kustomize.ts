/** Renders deploy/ offline as `kubectl apply -k` would (kubectl's built-in kustomize; no cluster). */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { DaemonSet } from 'kubernetes-models/apps/v1';
import { ConfigMap, Namespace, ServiceAccount } from 'kubernetes-models/v1';
import { ClusterRole, ClusterRoleBinding, Role, RoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1';

export const ROOT = join(__dirname, '..', '..');
export const DIR = join(ROOT, 'deploy');
export type Doc = { kind: string; metadata: { name: string; namespace?: string; labels?: Record<string, string> }; [k: string]: unknown };

/** The Kubernetes schema of each kind deploy/ makes (kubernetes-models). */
export const MODELS: Record<string, new (o: never) => { validate(): void }> = { DaemonSet, ConfigMap, Namespace, ServiceAccount, ClusterRole, ClusterRoleBinding, Role, RoleBinding };

/** `kubectl kustomize` (kustomize built in, no cluster needed): what `kubectl apply -k` would send. */
export function kustomize(dir: string): Doc[] {
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
export function kustomizeWith(components: string[]): Doc[] {
  const dir = mkdtempSync(join(tmpdir(), 'inpod-deploy-check'));
  try {
    const rel = relative(dir, DIR); // kustomize takes directories by relative path only
    writeFileSync(join(dir, 'kustomization.yaml'), `resources: [${rel}]\ncomponents: [${components.map((c) => `${rel}/${c}`).join(', ')}]\n`);
    return kustomize(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The object of `kind` named `name` (and in `namespace`, when given). */
export function find(all: Doc[], kind: string, name: string, namespace?: string): Doc {
  const d = all.find((x) => x.kind === kind && x.metadata.name === name && (namespace === undefined || x.metadata.namespace === namespace));
  if (!d) throw new Error(`no ${kind}/${name} in the rendered manifests`);
  return d;
}
