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
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Lab, type LabPod, type PodShell, until } from './lab.js';
import { Rig } from './rig.js';

const EXAMPLE = fileURLToPath(new URL('../../vendor/istio/ztunnel/examples/localhost.yaml', import.meta.url));

describe("ztunnel's examples/localhost.yaml under inpod ztunnel --config (ebpf backend)", () => {
  let rig: Rig;
  let lab: Lab;
  const log = (): string => rig.log;
  let local: LabPod, localTcp: LabPod, client: LabPod;
  let sh: Record<'local' | 'localTcp' | 'client', PodShell>;

  /** Starts `inpod ztunnel --config file` in the lab's cgroup; resolves with its admin port. */
  const proxy = async (config: string): Promise<number> => (await rig.startProxy({ args: ['--config', config], ports: true })).ports.admin;

  beforeAll(async () => {
    rig = await Rig.create({ tag: 'lh' });
    lab = rig.lab;
    [local, localTcp, client] = await Promise.all(['local', 'localtcp', 'client'].map((n) => lab.addPod(n)));
  }, 60_000);

  afterAll(async () => {
    await rig?.destroy();
  });

  it('starts with the vendored file as it is and holds what it declares: two workloads, two services (one on network "remote"), deny-9999', async () => {
    const admin = await proxy(EXAMPLE);
    // the dump in ztunnel's JSON (ts/proxy/configdump.ts): the vips as "network/ip", an empty network left out
    let dump: { workloads: { name: string; workloadIps: string[]; protocol: string; network?: string }[]; services: { hostname: string; vips: string[] }[]; policies: unknown[]; staticConfig: { workloads: unknown[] } } | null = null;
    await until('the proxy to serve its config dump', async () => {
      dump = await fetch(`http://127.0.0.1:${admin}/config_dump`).then((r) => r.json(), () => null);
      return dump !== null;
    }, { timeoutMs: 20_000, context: log });
    const d = dump!;
    const health = (await fetch(`http://127.0.0.1:${admin}/state`).then((r) => r.json())) as { lastError?: unknown };
    expect(health.lastError).toBeUndefined();
    expect(d.workloads.map((w) => [w.name, w.workloadIps, w.protocol, w.network])).toEqual([['local', ['127.0.0.1'], 'HBONE', undefined], ['local-tcp', ['127.0.0.2'], 'TCP', undefined]]);
    expect(d.services.map((s) => [s.hostname, s.vips])).toEqual([['example.com', ['/127.10.0.1']], ['example2.com', ['remote/127.10.0.2']]]);
    expect(d.policies).toEqual([{ name: 'deny-9999', namespace: 'default', scope: 'Namespace', action: 'Allow', dryRun: false, rules: [[[{ notDestinationPorts: [9999] }]]] }]);
    expect(d.staticConfig.workloads).toHaveLength(2); // the file, shown again as ztunnel's admin does with --config
    await rig.proxy!.stop();
  });

  describe('the same file, its two workload addresses given to pods', () => {
    beforeAll(async () => {
      const verbatim = readFileSync(EXAMPLE, 'utf8');
      const readdressed = verbatim.replaceAll('"127.0.0.1"', `"${local.ip}"`).replaceAll('"127.0.0.2"', `"${localTcp.ip}"`);
      // only the two addresses differ: put them back and it is the file again
      expect(readdressed.replaceAll(`"${local.ip}"`, '"127.0.0.1"').replaceAll(`"${localTcp.ip}"`, '"127.0.0.2"')).toBe(verbatim);
      expect(readdressed).not.toMatch(/"127\.0\.0\.[12]"/);
      writeFileSync(rig.p('localhost.yaml'), readdressed);
      rig.startZds();
      await proxy(rig.p('localhost.yaml'));
      await until('the proxy to connect over ZDS', () => rig.zdsReady >= 1, { timeoutMs: 20_000, context: log });
      // "local" as the file names it (namespace default, service account default); "client", another mesh pod of default
      for (const [p, name, sa] of [[local, 'local', 'default'], [client, 'client', 'sleep']] as const) {
        await rig.handOver(p, { uid: `cluster1//v1/Pod/default/${name}`, name, namespace: 'default', serviceAccount: sa });
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
      await until('the access-log line of the refusal, naming deny-9999', () => log().split('\n').some((l) => l.includes('"response_flags":"DENY"') && l.includes(src) && l.includes('no ALLOW policy matched (default/deny-9999)')), { context: log });
      expect(await accepted9999()).toBe(before);
    });
  });
});
