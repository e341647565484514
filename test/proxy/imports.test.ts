/**
 * The proxy process loads the Kubernetes client only when its state comes from the Kubernetes
 * API: the client alone is about 70 MB of a proxy that is 75 MB idle without it. Checked on the
 * built modules in a fresh process whose module resolution refuses the client, as if it were
 * not installed. (That the Kubernetes mode loads it when it starts is shown by
 * test/netns/kubestate.test.ts.)
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);
const DIST = join(__dirname, '..', '..', 'dist');

/**
 * Imports `modules` (paths under dist/, or package names) in a fresh node process where
 * resolving `refused` fails; resolves with what it printed ('imported', or the error).
 */
async function importWithout(refused: string, modules: string[]): Promise<string> {
  const hooks = `export async function resolve(s, c, next) {
    if (s === ${JSON.stringify(refused)} || s.startsWith(${JSON.stringify(`${refused}/`)})) throw new Error('imported ' + s + ' from ' + c.parentURL);
    return next(s, c);
  }`;
  const register = `import { register } from 'node:module'; register(${JSON.stringify(`data:text/javascript,${encodeURIComponent(hooks)}`)});`;
  const specs = modules.map((m) => (m.endsWith('.js') ? join(DIST, m) : m));
  const script = `for (const m of ${JSON.stringify(specs)}) await import(m); console.log('imported');`;
  const r = await run('node', ['--import', `data:text/javascript,${encodeURIComponent(register)}`, '--input-type=module', '-e', script]).catch((e: { stderr: string }) => ({ stdout: e.stderr }));
  return r.stdout.trim();
}

describe('what the proxy process loads', () => {
  it('imports without the Kubernetes client for a config file or a manifest directory', async () => {
    expect(await importWithout('@kubernetes/client-node', ['cli/ztunnel.js', 'state/kube.js'])).toBe('imported');
  });

  it('the agent command imports without it too: a manifest-directory agent never loads it', async () => {
    expect(await importWithout('@kubernetes/client-node', ['cli/agent.js'])).toBe('imported');
  });

  it('would notice the client being imported (the check itself)', async () => {
    expect(await importWithout('@kubernetes/client-node', ['@kubernetes/client-node'])).toMatch(/imported @kubernetes\/client-node from/);
  });
});
