/**
 * `inpod ztunnel --ca-address`: the Istio-mode flags (named after ztunnel's CA_ADDRESS,
 * CA_ROOT_CA, AUTH_TOKEN, src/config.rs) reach the proxy process. Pods and HBONE with istiod's
 * certificates are in istio-ca-hbone.test.ts; here, the process itself.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, inpod } from '../cli.js';
import { FakeAgent } from '../zds/fixtures/agent.js';
import { until } from '../netns/lab.js';
import { makeRoot } from '../fixtures/istiod/ca.js';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'inpod-ca-cli-'));
  writeFileSync(join(dir, 'empty.yaml'), 'workloads: []\n');
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('inpod ztunnel --ca-address', () => {
  it('refuses to start without istiod\'s root, naming the file and the flag', async () => {
    const r = await inpod('ztunnel', '--config', join(dir, 'empty.yaml'), '--zds', join(dir, 'none.sock'), '--ca-address', 'https://127.0.0.1:15012', '--ca-root-ca', join(dir, 'missing-root.pem'));
    expect(r.code).not.toBe(0);
    expect(r.stderr + r.stdout).toMatch(/cannot read istiod's root certificate .*missing-root\.pem.*--ca-root-ca/);
  });

  it('starts with certificates from istiod\'s CA and makes no node-local CA (no key in --ca-dir)', async () => {
    writeFileSync(join(dir, 'root-cert.pem'), (await makeRoot()).certPem);
    writeFileSync(join(dir, 'istio-token'), 'tok');
    const agent = new FakeAgent(join(dir, 'zds.sock'));
    const proc = spawn('node', [CLI, 'ztunnel', '--config', join(dir, 'empty.yaml'), '--zds', join(dir, 'zds.sock'), '--ca-dir', join(dir, 'ca'),
      '--ca-address', 'https://127.0.0.1:15012', '--ca-root-ca', join(dir, 'root-cert.pem'), '--auth-token', join(dir, 'istio-token'),
      '--admin-addr', '127.0.0.1:0', '--metrics-addr', '127.0.0.1:0', '--readiness-addr', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    proc.stdout!.on('data', (d) => (out += d));
    proc.stderr!.on('data', (d) => (out += d));
    try {
      await until('the proxy started', () => /ztunnel started/.test(out), { timeoutMs: 15_000, context: () => out });
      expect(out).toMatch(/"ca":"https:\/\/127.0.0.1:15012".*"token":"[^"]*istio-token".*workload certificates from istiod's CA/);
      expect(existsSync(join(dir, 'ca'))).toBe(false);
    } finally {
      proc.kill('SIGKILL');
      agent.close();
    }
  }, 30_000);
});
