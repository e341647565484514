/**
 * Policy, metrics, admin and drain, end to end with the proxy process (`inpod ztunnel`) serving
 * pods handed over ZDS under the eBPF backend.
 */
import { writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type LabPod, type PodShell, until } from './lab.js';
import { Rig } from './rig.js';

describe('policy, metrics, admin and drain', () => {
  let rig: Rig;
  let admin = 0;
  let metrics = 0;
  let readiness = 0;
  let client: LabPod, other: LabPod, intruder: LabPod, server: LabPod;
  let sh: Record<'client' | 'other' | 'intruder' | 'server', PodShell>;

  const scrape = async (): Promise<string> => (await fetch(`http://127.0.0.1:${metrics}/metrics`)).text();
  const value = (text: string, name: string, labels: Record<string, string>): number => {
    let total = 0;
    for (const line of text.split('\n')) {
      if (!line.startsWith(`${name}{`)) continue;
      if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) total += Number(line.split(' ').at(-1));
    }
    return total;
  };

  beforeAll(async () => {
    rig = await Rig.create({ tag: 'tm' });
    const { lab } = rig;
    [client, other, intruder, server] = await Promise.all(['client', 'other', 'intruder', 'server'].map((n) => lab.addPod(n)));
    const w = (p: LabPod, ns: string, sa: string, extra = ''): string =>
      `  - {uid: u-${p.name}, name: ${p.name}, workloadName: ${p.name}, namespace: ${ns}, serviceAccount: ${sa}, workloadIps: ["${p.ip}"], protocol: HBONE, clusterId: c1${extra}}`;
    // ztunnel's local config names the canonical service itself (no derivation from labels there)
    writeFileSync(rig.p('config.yaml'), `workloads:
${w(client, 'default', 'sleep', ', canonicalName: sleep, canonicalRevision: v1')}
${w(other, 'default', 'other')}
${w(intruder, 'evil', 'default')}
${w(server, 'shop', 'web', ', canonicalName: web, canonicalRevision: v2, authorizationPolicies: [shop/only-sleep]')}
policies:
  - name: no-evil
    namespace: shop
    scope: Namespace
    action: Deny
    dryRun: false
    rules: [[[{namespaces: [!Exact evil]}]]]
  - name: only-sleep
    namespace: shop
    scope: WorkloadSelector
    action: Allow
    dryRun: false
    rules: [[[{principals: [!Exact cluster.local/ns/default/sa/sleep, !Exact cluster.local/ns/evil/sa/default]}]]]
`);
    rig.startZds();
    ({ admin, metrics, readiness } = (await rig.startProxy({ args: ['--config', rig.p('config.yaml')], drainSeconds: 3, ports: true })).ports);
    await until('the proxy to connect over ZDS', () => rig.zdsReady >= 1, { timeoutMs: 20_000, context: () => rig.log });
    for (const [p, ns, sa] of [[client, 'default', 'sleep'], [other, 'default', 'other'], [intruder, 'evil', 'default'], [server, 'shop', 'web']] as const) {
      await rig.handOver(p, { uid: `u-${p.name}`, name: p.name, namespace: ns, serviceAccount: sa });
    }
    sh = {
      client: await lab.shell(client.netnsPath, { inCgroup: true }),
      other: await lab.shell(other.netnsPath, { inCgroup: true }),
      intruder: await lab.shell(intruder.netnsPath, { inCgroup: true }),
      server: await lab.shell(server.netnsPath, { inCgroup: true }),
    };
    await sh.server.listen({ port: 9000, tag: 'echo', echo: true });
  }, 60_000);

  afterAll(async () => {
    await rig?.destroy();
  });

  it('is ready once the state is loaded and ZDS is connected', async () => {
    expect((await fetch(`http://127.0.0.1:${readiness}/healthz/ready`)).status).toBe(200);
  });

  it('lets the allowed service account in and counts the bytes exactly, with Istio labels', async () => {
    const payload = 'x'.repeat(1234);
    const r = await sh.client.connect({ host: server.ip, port: 9000, send: payload, timeoutMs: 5000 });
    expect(r.ok && r.reply).toBe(payload);
    if (r.ok) await sh.client.close(r.connId);
    const dst = {
      reporter: 'destination', source_workload: 'client', source_canonical_service: 'sleep', source_canonical_revision: 'v1', source_cluster: 'c1',
      destination_workload: 'server', destination_canonical_service: 'web', destination_canonical_revision: 'v2', connection_security_policy: 'mutual_tls',
      source_principal: 'spiffe://cluster.local/ns/default/sa/sleep', destination_principal: 'spiffe://cluster.local/ns/shop/sa/web',
      destination_app: 'web', destination_version: 'v2', request_protocol: 'tcp', response_flags: '-',
    };
    // the byte counters are final once both ends have counted the connection closed
    let m = '';
    await until('both ends to count the connection closed', async () => {
      m = await scrape();
      return value(m, 'istio_tcp_connections_closed_total', dst) >= 1 && value(m, 'istio_tcp_connections_closed_total', { reporter: 'source', source_workload: 'client', destination_workload: 'server' }) >= 1;
    }, { context: () => m });
    expect(value(m, 'istio_tcp_connections_opened_total', dst)).toBe(1);
    expect(value(m, 'istio_tcp_connections_closed_total', dst)).toBe(1);
    expect(value(m, 'istio_tcp_received_bytes_total', dst)).toBe(1234); // request bytes
    expect(value(m, 'istio_tcp_sent_bytes_total', dst)).toBe(1234); // response bytes
    const src = { ...dst, reporter: 'source', source_app: 'sleep', source_version: 'v1' };
    expect(value(m, 'istio_tcp_received_bytes_total', src)).toBe(1234);
    expect(value(m, 'istio_tcp_sent_bytes_total', src)).toBe(1234);
    expect(value(m, 'istio_tcp_connections_failed_total', {})).toBe(0);
    expect(m).toMatch(/process_resident_memory_bytes \d+/);
  });

  it('keeps another service account out before the app sees a byte, and reports DENY', async () => {
    const before = (await sh.server.accepted((await sh.server.listenerByTag('echo')).id)).length;
    const r = await sh.other.connect({ host: server.ip, port: 9000, send: 'let me in', timeoutMs: 3000 });
    expect(r.ok ? r.reply : r.error).toMatch(/^$|error:|ECONNRESET/);
    expect((await sh.server.accepted((await sh.server.listenerByTag('echo')).id)).length).toBe(before);
    const denied = { reporter: 'destination', source_workload: 'other', response_flags: 'DENY' };
    await until('the DENY to be counted', async () => value(await scrape(), 'istio_tcp_connections_closed_total', denied) >= 1, { context: () => rig.log });
    expect(value(await scrape(), 'istio_tcp_connections_closed_total', denied)).toBe(1);
    expect(value(await scrape(), 'istio_tcp_connections_failed_total', denied)).toBe(1);
    // ztunnel's line for it: "connection complete" at error level, the policy's reason as the error
    await until('the DENY access-log line', () => rig.log.split('\n').some((l) => l.includes('"msg":"connection complete"') && l.includes('"level":50') &&
      l.includes('"response_flags":"DENY"') && l.includes('"error":"no ALLOW policy matched')), { context: () => rig.log });
  });

  it('applies DENY before ALLOW: a denied namespace stays out even though an ALLOW names it', async () => {
    const before = (await sh.server.accepted((await sh.server.listenerByTag('echo')).id)).length;
    await sh.intruder.connect({ host: server.ip, port: 9000, send: 'x', timeoutMs: 3000 });
    expect((await sh.server.accepted((await sh.server.listenerByTag('echo')).id)).length).toBe(before);
    await until('the access-log line naming the DENY policy', () => /denied by shop\/no-evil/.test(rig.log), { context: () => rig.log });
  });

  it('dumps its config in ztunnel\'s shape (test/proxy/admin.test.ts has the details): served pods, workloads, policies, and no key material', async () => {
    const text = await (await fetch(`http://127.0.0.1:${admin}/config_dump`)).text();
    const d = JSON.parse(text) as { workloadState: Record<string, { info: { name: string }; state: string }>; workloads: unknown[]; policies: { name: string }[]; certificates: { identity: string }[] };
    expect(Object.values(d.workloadState).map((p) => p.info.name).sort()).toEqual(['client', 'intruder', 'other', 'server']);
    expect(Object.values(d.workloadState).every((p) => p.state === 'Up')).toBe(true);
    expect(d.workloads).toHaveLength(4);
    expect(d.policies.map((p) => p.name)).toEqual(['no-evil', 'only-sleep']);
    expect(d.certificates.length).toBeGreaterThan(0);
    expect(text).not.toMatch(/PRIVATE KEY|keyPem/);
    const set = await fetch(`http://127.0.0.1:${admin}/logging?level=debug`, { method: 'POST' });
    expect(await set.text()).toBe('current log level is debug\n');
  });

  it('prints what the proxy knows from the command line', async () => {
    const { inpod } = await import('../cli.js');
    const w = await inpod('ztunnel', 'workloads', '--admin-addr', `127.0.0.1:${admin}`);
    expect(w.code).toBe(0);
    expect((JSON.parse(w.stdout) as { name: string }[]).map((x) => x.name).sort()).toEqual(['client', 'intruder', 'other', 'server']);
    const p = await inpod('ztunnel', 'policies', '--admin-addr', `127.0.0.1:${admin}`);
    expect(JSON.parse(p.stdout)).toHaveLength(2);
  });

  it('drains on SIGTERM: an open connection finishes within the deadline, new ones are refused', async () => {
    const open = await sh.client.connect({ host: server.ip, port: 9000, send: 'before', timeoutMs: 5000 });
    expect(open.ok && open.reply).toBe('before');
    const logged = rig.log.length;
    const exited = rig.proxy!.stop('SIGTERM');
    // the proxy logs "pod removed" right after it closed that pod's listeners
    const removed = (pod: string): boolean => rig.log.slice(logged).split('\n').some((l) => l.includes('"msg":"pod removed"') && l.includes(`"pod":"${pod}"`));
    await until('the proxy to close the client\'s and the server\'s listeners', () => removed('client') && removed('server'), { context: () => rig.log });
    const fresh = await sh.client.connect({ host: server.ip, port: 9000, send: 'x', timeoutMs: 1000 });
    expect(fresh.ok).toBe(false);
    if (open.ok) expect((await sh.client.send(open.connId, 'during drain')).reply).toBe('during drain');
    const t0 = Date.now();
    await exited;
    expect(Date.now() - t0).toBeLessThan(4000);
  });
});
