/**
 * The proxy's admin, metrics and readiness endpoints against ztunnel's (each test names the
 * upstream file and function it follows), and /config_dump read the way istioctl reads it
 * (test/fixtures/istioctl.ts mirrors istio istioctl/pkg/writer/ztunnel/configdump/api.go and
 * configdump.go `Prime`). The proxy here serves pods that open no listeners (the podProxy seam);
 * test/netns/admin.test.ts runs the same against a real proxy process with real pods.
 */
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalCa } from '../../ts/identity/ca.js';
import { openPath } from '../../ts/native/index.js';
import { startAdmin, type AdminServers } from '../../ts/proxy/admin.js';
import { dumpCerts } from '../../ts/proxy/configdump.js';
import { PodProxy } from '../../ts/proxy/pod.js';
import { Ztunnel } from '../../ts/proxy/ztunnel.js';
import { StateStore } from '../../ts/state/store.js';
import type { Workload } from '../../ts/state/types.js';
import { logger, setLogFilter, initialLogFilter } from '../../ts/util/log.js';
import { ztunnelShow } from '../../ts/cli/ztunnel.js';
import { connectionRows, policyRows, prime, secretRows, serviceRows, workloadRows } from '../fixtures/istioctl.js';
import { serdePretty } from '../fixtures/serde.js';

class IdlePod extends PodProxy {
  override async start(): Promise<void> {}
}

const WEB = 'shop/web.shop.svc.cluster.local';
const wl = (name: string, o: Partial<Workload> = {}): Workload => ({
  uid: `u-${name}`, name, namespace: 'shop', serviceAccount: name, trustDomain: 'cluster.local', workloadIps: [], protocol: 'HBONE',
  node: 'node-1', network: '', services: {}, labels: { app: name }, healthy: true, ...o,
});
const STATE = {
  workloads: [
    wl('sleep', { workloadIps: ['10.0.0.1'] }),
    wl('web', { workloadIps: ['10.0.0.2'], services: { [WEB]: { 80: 8080, 443: 8443 } } }),
    wl('web-old', { workloadIps: ['10.0.0.3'], services: { [WEB]: { 80: 8080, 443: 8443 } }, healthy: false, protocol: 'TCP', node: '' }),
    wl('ratings', { workloadIps: ['10.0.0.4'], waypoint: { address: '10.96.0.100', network: '', hboneMtlsPort: 15008 } }),
  ],
  services: [
    { name: 'web', namespace: 'shop', hostname: 'web.shop.svc.cluster.local', vips: [{ network: '', address: '10.96.0.10' }], ports: { 80: 8080, 443: 8443 }, subjectAltNames: [] },
    { name: 'waypoint', namespace: 'shop', hostname: 'waypoint.shop.svc.cluster.local', vips: [{ network: '', address: '10.96.0.100' }], ports: { 15008: 15008 }, subjectAltNames: [] },
  ],
  policies: [
    { name: 'only-sleep', namespace: 'shop', spec: { selector: { matchLabels: { app: 'web' } }, action: 'ALLOW', rules: [{ from: [{ source: { principals: ['cluster.local/ns/shop/sa/sleep'] } }], to: [{ operation: { ports: ['8080'] } }] }] } },
    { name: 'no-evil', namespace: 'shop', spec: { action: 'DENY', rules: [{ from: [{ source: { namespaces: ['evil'] } }] }] } },
  ],
};

describe('admin, metrics and readiness endpoints (ztunnel src/admin.rs, src/readiness/server.rs, src/metrics/server.rs)', () => {
  let dir: string;
  let zt: Ztunnel;
  let servers: AdminServers;
  let pending: string[] = [];
  let shutdowns = 0;
  const url = (s: 'admin' | 'metrics' | 'readiness', path: string): string => {
    const a = servers[s]!.address() as { port: number };
    return `http://127.0.0.1:${a.port}${path}`;
  };
  const dumpText = async (): Promise<string> => (await fetch(url('admin', '/config_dump'))).text();

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'inpod-admin-'));
    const state = new StateStore();
    state.set(STATE as never);
    zt = await Ztunnel.create({ trustDomain: 'cluster.local', caDir: join(dir, 'ca'), state, log: pino({ level: 'silent' }), podProxy: (i, ns, deps) => new IdlePod(i, ns, deps) });
    for (const n of ['sleep', 'web']) {
      writeFileSync(join(dir, n), '');
      await zt.addPod({ uid: `zds-${n}`, name: n, namespace: 'shop', serviceAccount: n }, openPath(join(dir, n)));
      await zt.certs.get({ trustDomain: 'cluster.local', namespace: 'shop', serviceAccount: n });
    }
    servers = await startAdmin(zt, {
      admin: '127.0.0.1:0', metrics: '127.0.0.1:0', readiness: '127.0.0.1:0', zds: '/var/run/ztunnel/ztunnel.sock', drainSeconds: 25, localConfig: false,
      pending: () => pending,
      shutdown: () => shutdowns++,
    });
  });
  afterAll(async () => {
    servers?.stop();
    await zt?.close();
    setLogFilter(initialLogFilter());
    rmSync(dir, { recursive: true, force: true });
  });

  it('/config_dump is read by istioctl (api.go ZtunnelDump via configdump.go Prime) without an error, and its summaries show the state', async () => {
    const d = prime(await dumpText());
    expect(workloadRows(d)).toEqual([
      ['shop', 'ratings', '10.0.0.4', 'node-1', 'waypoint', 'HBONE'],
      ['shop', 'sleep', '10.0.0.1', 'node-1', 'None', 'HBONE'],
      ['shop', 'web', '10.0.0.2', 'node-1', 'None', 'HBONE'],
      ['shop', 'web-old', '10.0.0.3', '', 'None', 'TCP'],
    ]);
    expect(serviceRows(d)).toEqual([
      ['shop', 'waypoint', '10.96.0.100', 'None', '0/0'],
      ['shop', 'web', '10.96.0.10', 'None', '1/1'], // web-old is unhealthy: not an endpoint (service.rs should_include_endpoint)
    ]);
    expect(policyRows(d)).toEqual([['shop', 'no-evil', 'Deny', 'Namespace'], ['shop', 'only-sleep', 'Allow', 'WorkloadSelector']]);
    expect(secretRows(d).map((r) => [r[0], r[1], r[2], r[3]])).toEqual([
      ['spiffe://cluster.local/ns/shop/sa/sleep', 'Leaf', 'Available', 'true'],
      ['spiffe://cluster.local/ns/shop/sa/sleep', 'Root', 'Available', 'true'],
      ['spiffe://cluster.local/ns/shop/sa/web', 'Leaf', 'Available', 'true'],
      ['spiffe://cluster.local/ns/shop/sa/web', 'Root', 'Available', 'true'],
    ]);
    expect(Object.keys(d.workloadState).sort()).toEqual(['zds-sleep', 'zds-web']);
  });

  it('/config_dump writes a workload, a service and a policy field by field as serde does (state/workload.rs Workload, state/service.rs Service, rbac.rs Authorization)', async () => {
    const d = JSON.parse(await dumpText()) as Record<string, Record<string, unknown>[]>;
    expect(d.workloads!.find((w) => w.name === 'web')).toEqual({
      authorizationPolicies: ['shop/only-sleep'], // the selector policy that selects it, as istiod attaches it
      capacity: 1, clusterId: '', name: 'web', namespace: 'shop', networkMode: 'Standard', node: 'node-1', protocol: 'HBONE',
      serviceAccount: 'web', services: [WEB], status: 'Healthy', trustDomain: 'cluster.local', uid: 'u-web', workloadIps: ['10.0.0.2'],
    });
    // skip_serializing_if: no node, no waypoint, no policies, no services -> absent; status and clusterId always there
    const old = d.workloads!.find((w) => w.name === 'web-old')!;
    expect(old).not.toHaveProperty('node');
    expect(old).not.toHaveProperty('waypoint');
    expect(old.status).toBe('Unhealthy');
    expect(d.workloads!.find((w) => w.name === 'ratings')!.waypoint).toEqual({ destination: '/10.96.0.100', hboneMtlsPort: 15008 });
    expect(d.services!.find((s) => s.name === 'web')).toEqual({
      name: 'web', namespace: 'shop', hostname: 'web.shop.svc.cluster.local', vips: ['/10.96.0.10'], ports: { 80: 8080, 443: 8443 },
      endpoints: {
        'u-web': { workloadUid: 'u-web', port: { 80: 8080, 443: 8443 }, status: 'Healthy' },
      },
      subjectAltNames: [], canonical: false, visibility: 'Public',
    });
    expect(d.policies).toEqual([
      { name: 'no-evil', namespace: 'shop', scope: 'Namespace', action: 'Deny', dryRun: false, rules: [[[{ namespaces: [{ Exact: 'evil' }] }]]] },
      {
        name: 'only-sleep', namespace: 'shop', scope: 'WorkloadSelector', action: 'Allow', dryRun: false,
        rules: [[[{ destinationPorts: [8080] }], [{ principals: [{ Exact: 'cluster.local/ns/shop/sa/sleep' }] }]]],
      },
    ]);
  });

  it('/config_dump prints as serde_json prints a Value: every object\'s keys in byte order, two-space indent, no trailing newline (admin.rs handle_config_dump)', async () => {
    const text = await dumpText();
    expect([...text.matchAll(/^ {2}"(\w+)":/gm)].map((m) => m[1])).toEqual([
      'certificates', 'config', 'policies', 'services', 'stagedServices', 'staticConfig', 'version', 'workloadState', 'workloads',
    ]);
    // map keys are strings ordered by bytes: "443" before "80"
    expect(text).toContain('      "ports": {\n        "443": 8443,\n        "80": 8080\n      },\n');
    expect(text).toContain('  "stagedServices": {},\n');
    expect(text.endsWith('}')).toBe(true);
    expect(text).toBe(serdePretty(JSON.parse(text))); // every key of every object in byte order
    const d = JSON.parse(text) as Record<string, unknown>;
    expect(d.staticConfig).toEqual({ workloads: [], policies: [], services: [] }); // no --config
    expect(d.version).toMatchObject({ version: JSON.parse(readFileSync(join(__dirname, '..', '..', 'package.json'), 'utf8')).version, istioVersion: 'unknown' });
    expect(d.config).toMatchObject({
      adminAddr: { SocketAddr: `127.0.0.1:${(servers.admin!.address() as { port: number }).port}` },
      readinessAddr: { SocketAddr: `127.0.0.1:${(servers.readiness!.address() as { port: number }).port}` },
      inboundAddr: '[::]:15008', inpodUds: '/var/run/ztunnel/ztunnel.sock', selfTerminationDeadline: { secs: 25, nanos: 0 }, packetMark: 1337,
    });
    expect(text).not.toMatch(/PRIVATE KEY|keyPem/);
  });

  it('/config_dump shows each served pod and its open connections under workloadState (inpod/admin.rs, proxy/connection_manager.rs), as istioctl ztunnel-config connections prints them', async () => {
    const pod = { uid: 'zds-sleep', name: 'sleep', namespace: 'shop' };
    const out = { direction: 'outbound', transport: 'hbone', src: { ip: '10.0.0.1', port: 40000 }, dst: { ip: '10.0.0.2', port: 8080 }, pod, service: { hostname: 'web.shop.svc.cluster.local', name: 'web', namespace: 'shop' }, originalDst: { ip: '10.96.0.10', port: 80 }, via: { ip: '10.0.0.2', port: 15008 } } as const;
    const inb = { direction: 'inbound', transport: 'hbone', src: { ip: '10.0.0.1', port: 40000, identity: 'spiffe://cluster.local/ns/shop/sa/sleep' }, dst: { ip: '10.0.0.2', port: 8080 }, pod: { uid: 'zds-web', name: 'web', namespace: 'shop' } } as const;
    const reports = [zt.connections.opened(out), zt.connections.opened(inb)];
    const d = prime(await dumpText());
    expect(d.workloadState['zds-sleep']).toEqual({
      state: 'Up',
      connections: { inbound: [], outbound: [{ src: '10.0.0.1:40000', originalDst: '10.96.0.10:80', actualDst: '10.0.0.2:15008', protocol: 'HBONE' }] },
      info: { name: 'sleep', namespace: 'shop', serviceAccount: 'sleep', trustDomain: '' },
    });
    expect(connectionRows(d)).toEqual([
      ['sleep.shop', 'Outbound', 'sleep.shop:40000', 'web.shop:15008', 'web.shop.svc.cluster.local:80', 'HBONE'],
      ['web.shop', 'Inbound', 'web.shop:8080', 'sleep.shop:40000', '', 'HBONE'],
    ]);
    const raw = JSON.parse(await dumpText()) as { workloadState: Record<string, { connections: { inbound: { originalDst: unknown }[] } }> };
    expect(raw.workloadState['zds-web']!.connections.inbound[0]!.originalDst).toBeNull(); // as ztunnel: no service named
    const rec = { startedAt: 0, durationMs: 1, bytesSent: 0, bytesReceived: 0, outcome: 'ok' } as const;
    reports[0]!.closed({ ...out, ...rec });
    reports[1]!.closed({ ...inb, ...rec });
    expect(connectionRows(prime(await dumpText()))).toEqual([]);
  });

  it('certificates: leaf and intermediates in certChain, the roots apart, PEM base64-encoded, serial in decimal, RFC 3339 to the second (admin.rs dump_certs, dump_cert)', async () => {
    const ca = join(dir, 'cacerts');
    execFileSync('sh', ['-c', `mkdir -p ${ca} && cd ${ca} &&
      openssl req -x509 -newkey rsa:2048 -nodes -keyout root-key.pem -out root-cert.pem -days 3 -subj "/O=Istio/CN=Root CA" &&
      printf 'basicConstraints=critical,CA:TRUE\\nkeyUsage=critical,keyCertSign,cRLSign\\n' > ext.cnf &&
      openssl req -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca.csr -subj "/O=Istio/CN=Intermediate CA" &&
      openssl x509 -req -in ca.csr -CA root-cert.pem -CAkey root-key.pem -CAcreateserial -out ca-cert.pem -days 2 -extfile ext.cnf &&
      cat ca-cert.pem root-cert.pem > cert-chain.pem`], { stdio: 'pipe' });
    const local = await LocalCa.open(ca, 'cluster.local');
    const leaf = await local.issue({ trustDomain: 'cluster.local', namespace: 'shop', serviceAccount: 'web' }, 3600_000);
    const [dump] = dumpCerts([leaf], local.rootPem) as { certChain: { pem: string; serialNumber: string; validFrom: string; expirationTime: string }[]; rootCerts: { pem: string }[] }[];
    const der = (pem: string): string => new X509Certificate(pem).raw.toString('base64');
    const pemOf = (b64: string): string => Buffer.from(b64, 'base64').toString();
    expect(dump!.certChain.map((c) => der(pemOf(c.pem)))).toEqual([der(leaf.certPem), der(readFileSync(join(ca, 'ca-cert.pem'), 'utf8'))]);
    expect(dump!.rootCerts.map((c) => der(pemOf(c.pem)))).toEqual([der(readFileSync(join(ca, 'root-cert.pem'), 'utf8'))]);
    const opensslSerial = execFileSync('openssl', ['x509', '-noout', '-serial'], { input: leaf.certPem, encoding: 'utf8' }).trim().replace('serial=', '');
    expect(dump!.certChain[0]!.serialNumber).toBe(BigInt(`0x${opensslSerial}`).toString(10));
    expect(dump!.certChain[0]!.validFrom).toBe(leaf.notBefore.toISOString().replace(/\.\d{3}Z$/, 'Z'));
    expect(dump!.certChain[0]!.expirationTime).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    // istioctl's table: Leaf, Intermediate, Root, all valid, the serial printed in hex
    const rows = secretRows(prime(JSON.stringify({ certificates: [dump] })));
    expect(rows.map((r) => [r[1], r[3]])).toEqual([['Leaf', 'true'], ['Intermediate', 'true'], ['Root', 'true']]);
    expect(rows[0]![4]).toBe(opensslSerial.toLowerCase().replace(/^0+/, ''));
  });

  it('/quitquitquit: POST answers 200 "shutdown now" and starts the shutdown once; other methods 405 (admin.rs handle_server_shutdown)', async () => {
    expect((await fetch(url('admin', '/quitquitquit'))).status).toBe(405);
    expect(shutdowns).toBe(0);
    const r = await fetch(url('admin', '/quitquitquit'), { method: 'POST' });
    expect([r.status, r.headers.get('content-type'), await r.text()]).toEqual([200, 'text/plain', 'shutdown now\n']);
    await expect.poll(() => shutdowns).toBe(1);
    await fetch(url('admin', '/quitquitquit'), { method: 'POST' });
    expect(shutdowns).toBe(1);
  });

  it('/ lists the endpoints as an HTML page (admin.rs handle_dashboard); unknown paths are 404 with no body; /debug/pprof/* 500 as a build without the profiler', async () => {
    const r = await fetch(url('admin', '/'));
    expect(r.headers.get('content-type')).toBe('text/html; charset=utf-8');
    const html = await r.text();
    for (const p of ['config_dump', 'logging', 'quitquitquit']) expect(html).toContain(`<a href="${p}">${p}</a>`);
    const missing = await fetch(url('admin', '/nope'));
    expect([missing.status, await missing.text()]).toEqual([404, '']);
    const prof = await fetch(url('admin', '/debug/pprof/profile'));
    expect([prof.status, await prof.text()]).toEqual([500, expect.stringMatching(/profiling is not available/)]);
  });

  it('/logging: POST says and sets the level, per component too; GET 405; an invalid level 400 and nothing changes; reset goes back (admin.rs handle_logging, change_log_level)', async () => {
    const post = async (q: string): Promise<[number, string]> => {
      const r = await fetch(url('admin', `/logging${q}`), { method: 'POST' });
      return [r.status, await r.text()];
    };
    const get = await fetch(url('admin', '/logging?level=debug'));
    expect([get.status, (await get.text()).split('\n')[0]]).toEqual([405, 'Invalid HTTP method']);
    expect(await post('')).toEqual([200, 'current log level is info\n']);
    expect(await post('?level=')).toEqual([200, 'current log level is info\n']); // istioctl ztunnel-config log, no --level
    const authz = logger('authz');
    const zds = logger('zds');
    expect(await post('?level=debug')).toEqual([200, 'current log level is debug\n']);
    expect(zds.isLevelEnabled('debug')).toBe(true);
    expect(await post('?level=authz=trace,warn')).toEqual([200, 'current log level is authz=trace,warn\n']);
    expect([authz.isLevelEnabled('trace'), zds.isLevelEnabled('info'), zds.isLevelEnabled('warn')]).toEqual([true, false, true]);
    // a logger made after the change gets its component's level
    expect(logger('authz').child({ pod: 'p' }).isLevelEnabled('trace')).toBe(true);
    const [code, body] = await post('?level=loud');
    expect([code, body.split('\n')[0]]).toEqual([400, 'Invalid level provided: loud']);
    expect(await post('')).toEqual([200, 'current log level is authz=trace,warn\n']);
    expect(await post('?reset')).toEqual([200, 'current log level is info\n']);
    expect([authz.isLevelEnabled('debug'), zds.isLevelEnabled('info')]).toEqual([false, true]);
    expect(await post('?level=off')).toEqual([200, 'current log level is off\n']);
    expect(zds.isLevelEnabled('error')).toBe(false);
    await post('?reset');
  });

  it('/healthz/ready: GET 200 "ready" or 500 "not ready, pending: <tasks>" (readiness/server.rs handle_ready); POST 405; other paths 404', async () => {
    const get = async (path = '/healthz/ready', method = 'GET'): Promise<[number, string]> => {
      const r = await fetch(url('readiness', path), { method });
      return [r.status, await r.text()];
    };
    pending = [];
    expect(await get()).toEqual([200, 'ready\n']);
    pending = ['workload proxy manager', 'state manager'];
    expect(await get()).toEqual([500, 'not ready, pending: state manager, workload proxy manager\n']);
    pending = [];
    expect(await get('/healthz/ready', 'POST')).toEqual([405, '']);
    expect(await get('/ready')).toEqual([404, '']);
  });

  it('/memory (inpod): the process\'s RSS, V8 heap per space and glibc\'s arenas as JSON, and how often memory was returned after a load', async () => {
    const r = await fetch(url('admin', '/memory'));
    expect(r.status).toBe(200);
    const m = (await r.json()) as Record<string, unknown> & { heapSpaces: Record<string, number>; malloc: Record<string, number> };
    for (const k of ['rss', 'heapTotal', 'heapUsed', 'external', 'arrayBuffers']) expect(m[k], k).toBeGreaterThan(0);
    expect(m.heapSpaces.new_space).toBeGreaterThan(0);
    expect(m.malloc.uordblks).toBeGreaterThan(0);
    // no returner given to this admin: nothing said about returns
    expect(m.returned).toBeUndefined();
  });

  it('/metrics and /stats/prometheus answer by path whatever the query; other paths 404 (metrics/server.rs)', async () => {
    for (const p of ['/metrics', '/stats/prometheus', '/metrics?x=1']) expect((await fetch(url('metrics', p))).status, p).toBe(200);
    expect((await fetch(url('metrics', '/'))).status).toBe(404);
  });

  it('inpod ztunnel workloads|services|policies|certificates prints the sections of the dump', async () => {
    const addr = `127.0.0.1:${(servers.admin!.address() as { port: number }).port}`;
    expect(((await ztunnelShow('workloads', ['--admin-addr', addr])) as { name: string }[]).map((w) => w.name)).toEqual(['ratings', 'sleep', 'web', 'web-old']);
    expect(((await ztunnelShow('policies', ['--admin-addr', addr])) as { name: string }[]).map((p) => p.name)).toEqual(['no-evil', 'only-sleep']);
    expect(((await ztunnelShow('services', ['--admin-addr', addr])) as { name: string }[]).map((s) => s.name)).toEqual(['waypoint', 'web']);
    expect(((await ztunnelShow('certificates', ['--admin-addr', addr])) as { identity: string }[]).map((c) => c.identity)).toHaveLength(2);
  });

  it('stops taking connections at the drain, as ztunnel\'s servers do (hyper_util.rs Server::serve)', async () => {
    const u = url('readiness', '/healthz/ready');
    servers.stop();
    await expect.poll(() => fetch(u).then(() => 'answered', () => 'refused')).toBe('refused');
  });
});
