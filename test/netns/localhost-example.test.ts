/**
 * ztunnel's own local-config example, examples/localhost.yaml, copied verbatim into
 * vendor/istio/ztunnel/ (its README names the commit), run by `inpod ztunnel --config`.
 *
 * The file declares two workloads on loopback addresses (127.0.0.1 HBONE "local", 127.0.0.2 TCP
 * "local-tcp"), two services, and one policy, deny-9999: ALLOW with notDestinationPorts [9999],
 * Namespace scope in "default". Loopback is never captured (DESIGN.md), so no pod can carry
 * those addresses. Hence two parts:
 * 1. the proxy started with the vendored file itself, unchanged: it starts and holds what the
 *    file declares (config_dump);
 * 2. traffic through the same content with the two workload addresses (only those) replaced by
 *    two pods' addresses: "local" is a mesh pod served over ZDS, "local-tcp" a pod outside the
 *    mesh, and a third mesh pod, "client", connects over HBONE. deny-9999 must let 8080 in and
 *    keep 9999 out, from both, as ztunnel's rbac.rs `Authorization::matches` decides it
 *    (notDestinationPorts: any port but 9999 matches, so the ALLOW admits it).
 * Before, the file was refused at start ("workloads[0].network: expected a non-empty string,
 * got """), and its policy, read as an Istio one, answered 401 on both ports.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackend } from '../../ts/redirect/factory.js';
import type { RedirectBackend } from '../../ts/redirect/backend.js';
import { ZdsServer, type ZdsPod } from '../../ts/zds/server.js';
import { CLI, freePorts } from '../cli.js';
import { Lab, type LabPod, type PodShell, until } from './lab.js';

const EXAMPLE = fileURLToPath(new URL('../../vendor/istio/ztunnel/examples/localhost.yaml', import.meta.url));

describe("ztunnel's examples/localhost.yaml under inpod ztunnel --config (ebpf backend)", () => {
  let lab: Lab;
  let dir: string;
  let backend: RedirectBackend;
  let zds: ZdsServer;
  const procs: ChildProcess[] = [];
  let log = '';
  let local: LabPod, localTcp: LabPod, client: LabPod;
  let sh: Record<'local' | 'localTcp' | 'client', PodShell>;

  /** Starts `inpod ztunnel --config file` in the lab's cgroup; resolves with its admin port. */
  async function proxy(config: string): Promise<number> {
    const [admin, metrics, readiness] = await freePorts(3);
    const p = spawn('sh', ['-c', `echo $$ > ${lab.cgroupPath}/cgroup.procs && exec node ${CLI} ztunnel --config ${config} --zds ${join(dir, 'zds.sock')} --ca-dir ${join(dir, 'ca')} --drain-seconds 1 --admin-addr 127.0.0.1:${admin} --metrics-addr 127.0.0.1:${metrics} --readiness-addr 127.0.0.1:${readiness}`], { stdio: ['ignore', 'pipe', 'pipe'] });
    p.stdout!.on('data', (d) => (log += d));
    p.stderr!.on('data', (d) => (log += d));
    procs.push(p);
    return admin!;
  }

  beforeAll(async () => {
    lab = await Lab.create();
    dir = mkdtempSync(join(tmpdir(), `${lab.prefix}lh`));
    backend = await createBackend('ebpf', { cgroupPath: lab.cgroupPath, pinRoot: `/sys/fs/bpf/${lab.prefix}inpod`, stateDir: dir });
    [local, localTcp, client] = await Promise.all(['local', 'localtcp', 'client'].map((n) => lab.addPod(n)));
  }, 60_000);

  afterAll(async () => {
    for (const p of procs) p.kill('SIGKILL');
    zds?.close();
    await backend?.uninstall().catch(() => {});
    await lab?.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('starts with the vendored file as it is and holds what it declares: two workloads, two services (one on network "remote"), deny-9999', async () => {
    const admin = await proxy(EXAMPLE);
    let dump: { workloads: { name: string; workloadIps: string[]; protocol: string; network: string }[]; services: { hostname: string; vips: unknown[] }[]; policies: unknown[]; state: { lastError?: unknown } } | null = null;
    await until('the proxy to serve its config dump', async () => {
      dump = await fetch(`http://127.0.0.1:${admin}/config_dump`).then((r) => r.json(), () => null);
      return dump !== null;
    }, { timeoutMs: 20_000, context: () => log });
    const d = dump!;
    expect(d.state.lastError).toBeUndefined();
    expect(d.workloads.map((w) => [w.name, w.workloadIps, w.protocol, w.network])).toEqual([['local', ['127.0.0.1'], 'HBONE', ''], ['local-tcp', ['127.0.0.2'], 'TCP', '']]);
    expect(d.services.map((s) => [s.hostname, s.vips])).toEqual([['example.com', [{ network: '', address: '127.10.0.1' }]], ['example2.com', [{ network: 'remote', address: '127.10.0.2' }]]]);
    expect(d.policies).toEqual([{ name: 'deny-9999', namespace: 'default', scope: 'Namespace', action: 'Allow', dryRun: false, rules: [[[{ notDestinationPorts: [9999] }]]] }]);
    procs.pop()!.kill('SIGKILL');
  });

  describe('the same file, its two workload addresses given to pods', () => {
    beforeAll(async () => {
      const verbatim = readFileSync(EXAMPLE, 'utf8');
      const readdressed = verbatim.replaceAll('"127.0.0.1"', `"${local.ip}"`).replaceAll('"127.0.0.2"', `"${localTcp.ip}"`);
      // only the two addresses differ: put them back and it is the file again
      expect(readdressed.replaceAll(`"${local.ip}"`, '"127.0.0.1"').replaceAll(`"${localTcp.ip}"`, '"127.0.0.2"')).toBe(verbatim);
      expect(readdressed).not.toMatch(/"127\.0\.0\.[12]"/);
      writeFileSync(join(dir, 'localhost.yaml'), readdressed);
      const pods: ZdsPod[] = [];
      let ready = 0;
      zds = new ZdsServer({ path: join(dir, 'zds.sock'), pods: () => pods, onReady: () => ready++ });
      zds.start();
      await proxy(join(dir, 'localhost.yaml'));
      await until('the proxy to connect over ZDS', () => ready >= 1, { timeoutMs: 20_000, context: () => log });
      // "local" as the file names it (namespace default, service account default); "client", another mesh pod of default
      for (const [p, name, sa] of [[local, 'local', 'default'], [client, 'client', 'sleep']] as const) {
        await backend.enroll(p.netnsPath);
        const pod = { uid: `cluster1//v1/Pod/default/${name}`, info: { name, namespace: 'default', serviceAccount: sa }, netnsPath: p.netnsPath };
        pods.push(pod);
        await zds.addPod(pod);
      }
      sh = {
        local: await lab.shell(local.netnsPath, { inCgroup: true }),
        localTcp: await lab.shell(localTcp.netnsPath, { inCgroup: true }),
        client: await lab.shell(client.netnsPath, { inCgroup: true }),
      };
      await sh.local.listen({ port: 8080, tag: 'p8080' });
      await sh.local.listen({ port: 9999, tag: 'p9999' });
    }, 60_000);

    const accepted9999 = async (): Promise<number> => (await sh.local.accepted((await sh.local.listenerByTag('p9999')).id)).length;

    it.each([
      ['a mesh pod, over HBONE', 'client' as const],
      ['local-tcp, a pod outside the mesh, in plaintext', 'localTcp' as const],
    ])('lets %s in on 8080 and keeps it out of 9999 before the app sees a byte', async (_name, from) => {
      const ok = await sh[from].connect({ host: local.ip, port: 8080, send: 'in', timeoutMs: 5000 });
      expect(ok.ok && ok.reply).toBe('p8080:in');
      if (ok.ok) await sh[from].close(ok.connId);
      const before = await accepted9999();
      const no = await sh[from].connect({ host: local.ip, port: 9999, send: 'in', timeoutMs: 3000 });
      expect(no.ok ? no.reply : no.error).toMatch(/^$|error:|ECONNRESET/); // reset or closed, never answered
      const src = from === 'client' ? client.ip : localTcp.ip;
      await until('the access-log line of the refusal, naming deny-9999', () => log.split('\n').some((l) => l.includes('"response_flags":"DENY"') && l.includes(src) && l.includes('no ALLOW policy matched (default/deny-9999)')), { context: () => log });
      expect(await accepted9999()).toBe(before);
    });
  });
});
