/**
 * `inpod demo`: the whole path on this host, no cluster. A manifest directory plays the API
 * server (a namespace labelled ambient, two pods); the agent (eBPF backend) and the proxy run
 * as their own processes; pods are dual-stack network namespaces created through the real CNI
 * chain (bridge + host-local with an IPv4 and an IPv6 range + inpod-cni), so ADD returns only
 * once a pod is captured and handed to the proxy. A request goes over HBONE mTLS on each family;
 * their access log lines and metrics are shown; then the namespace label is flipped and the next
 * requests go direct. Everything is removed at the end.
 * Programs attach to a child cgroup the demo creates (never the host's cgroup2 root); the demo
 * process joins it to play the pods' apps.
 */
import net from 'node:net';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SimNode, type SimPod } from '../sim/node.js';
import { EbpfBackend } from '../redirect/ebpf.js';
import { cgroup2Mount } from '../redirect/preflight.js';
import { withFd, type SockAddr } from '../native/index.js';
import { connectIn, listenIn } from '../proxy/sockets.js';
import { freePorts } from '../util/ports.js';
import { canonicalIp } from '../util/sockaddr.js';
import { until as poll } from '../util/until.js';

const CLI = join(dirname(fileURLToPath(import.meta.url)), 'main.js');
const say = (s: string): void => void process.stdout.write(`${s}\n`);

/** A listener inside the pod netns (the proxy's helper, given the netns by path). */
function listenInPod(netnsPath: string, port: number, onConn: (s: net.Socket) => void): Promise<net.Server> {
  return withFd(netnsPath, (ns) => listenIn(ns, port, onConn));
}

/** One request from inside the pod netns, as its app would make it (no mark). */
async function request(netnsPath: string, to: SockAddr, text: string): Promise<string> {
  const s = await withFd(netnsPath, (ns) => connectIn(ns, to, { mark: 0, timeoutMs: 5000 }));
  return new Promise((resolve, reject) => {
    let got = '';
    s.setTimeout(5000, () => s.destroy(new Error(`no answer from ${to.ip}:${to.port} in 5 s`)));
    s.on('data', (d) => (got += d));
    s.on('end', () => {
      s.end(); // the proxy's sockets allow half-open: close our side too, or both ends linger
      resolve(got);
    });
    s.on('error', reject);
    s.write(text);
  });
}

/** The fields of ztunnel's access-log line, in its order (istio/ztunnel src/proxy/metrics.rs record_internal). */
const ZTUNNEL_FIELDS = ['src.addr', 'src.workload', 'src.namespace', 'src.identity', 'src.cluster', 'dst.addr', 'dst.hbone_addr', 'dst.service', 'dst.workload',
  'dst.namespace', 'dst.identity', 'dst.cluster', 'direction', 'bytes_sent', 'bytes_recv', 'duration', 'error'];

/** A JSON access-log line as ztunnel's text format writes it: the message, then k=v, strings quoted except addresses. */
function ztunnelText(l: Record<string, unknown>): string {
  const kv = ZTUNNEL_FIELDS.filter((k) => l[k] !== undefined)
    .map((k) => `${k}=${typeof l[k] === 'number' || k.endsWith('.addr') || k === 'dst.hbone_addr' ? String(l[k]) : JSON.stringify(l[k])}`);
  return `${String(l.msg)} ${kv.join(' ')}`;
}

/** The labels the demo prints of each series. */
const SHOWN = ['reporter', 'source_workload', 'source_canonical_service', 'source_principal', 'destination_workload', 'destination_canonical_service',
  'destination_canonical_revision', 'connection_security_policy', 'response_flags'];

function shortSeries(line: string): string {
  const m = /^(\w+)\{(.*)\} (\S+)$/.exec(line);
  if (!m) return line;
  const labels = [...m[2]!.matchAll(/(\w+)="([^"]*)"/g)].filter((x) => SHOWN.includes(x[1]!)).map((x) => `${x[1]}="${x[2]}"`);
  return `${m[1]}{${labels.join(',')}} ${m[3]}`;
}

/** Waits for `cond`; on timeout the error carries `context()` (the processes' last output). */
const until = (what: string, cond: () => boolean, context: () => string): Promise<void> =>
  poll(`demo: ${what}`, cond, { timeoutMs: 20_000, intervalMs: 50, context });

/** An address as it is written with a port: [v6]:port. */
const at = (ip: string, port: number): string => (ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`);

const nsYaml = (ambient: boolean): string =>
  `apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n${ambient ? '  labels: {istio.io/dataplane-mode: ambient}\n' : ''}`;
const podYaml = (name: string, sa: string): string =>
  `apiVersion: v1\nkind: Pod\nmetadata: {name: ${name}, namespace: demo, uid: uid-${name}}\nspec: {nodeName: demo-node, serviceAccountName: ${sa}}\n`;

export async function demo(): Promise<void> {
  const prefix = `demo${process.pid % 1000}`;
  const cgRoot = cgroup2Mount(readFileSync('/proc/mounts', 'utf8'));
  if (!cgRoot) throw new Error('no cgroup2 mount found in /proc/mounts');
  const cg = join(cgRoot, `${prefix}cg`);
  const originalCg = readFileSync('/proc/self/cgroup', 'utf8').split('\n').find((l) => l.startsWith('0::'))?.slice(3) ?? '/';
  const dir = mkdtempSync(join(tmpdir(), `${prefix}-`));
  const p = (f: string): string => join(dir, f);
  const pinRoot = `/sys/fs/bpf/${prefix}`;
  const [adminPort, metricsPort, readinessPort, healthPort] = await freePorts(4);
  const procs: ChildProcess[] = [];
  const servers: net.Server[] = [];
  let node: SimNode | undefined;
  let proxyLog = '';
  let agentLog = '';
  const pods: SimPod[] = [];
  const tails = (): string => `agent output (last 3000 bytes):\n${agentLog.slice(-3000)}\nproxy output (last 3000 bytes):\n${proxyLog.slice(-3000)}`;
  say('inpod demo: the whole path on this host (pods are network namespaces, no cluster)');
  try {
    mkdirSync(cg);
    writeFileSync(join(cg, 'cgroup.procs'), String(process.pid));
    for (const d of ['manifests', 'net.d', 'bin']) mkdirSync(p(d));
    node = await SimNode.create({ prefix });
    const { cniVersion, name, ...bridge } = node.netConf('dual') as { cniVersion: string; name: string };
    writeFileSync(p('net.d/10-demo.conflist'), JSON.stringify({ cniVersion, name, plugins: [bridge] }));
    writeFileSync(p('manifests/ns.yaml'), nsYaml(true));
    writeFileSync(p('manifests/pods.yaml'), `${podYaml('client', 'sleep')}---\n${podYaml('server', 'web')}`);
    writeFileSync(p('config.yaml'), 'workloads: []\n');

    const proxy = spawn(process.execPath, [CLI, 'ztunnel', '--config', p('config.yaml'), '--zds', p('zds.sock'), '--ca-dir', p('ca'), '--drain-seconds', '1',
      '--admin-addr', `127.0.0.1:${adminPort}`, '--metrics-addr', `127.0.0.1:${metricsPort}`, '--readiness-addr', `127.0.0.1:${readinessPort}`], { stdio: ['ignore', 'pipe', 'pipe'] });
    proxy.stdout!.on('data', (d) => (proxyLog += d));
    proxy.stderr!.on('data', (d) => (proxyLog += d));
    const agent = spawn(process.execPath, [CLI, 'agent', '--backend', 'ebpf', '--manifests', p('manifests'), '--node', 'demo-node', '--cgroup', cg,
      '--pin-root', pinRoot, '--zds', p('zds.sock'), '--cni-socket', p('plugin.sock'), '--cni-bin-dir', p('bin'), '--cni-conf-dir', p('net.d'),
      '--state-dir', p('state'), '--health-addr', `127.0.0.1:${healthPort}`], { stdio: ['ignore', 'pipe', 'pipe'] });
    agent.stdout!.on('data', (d) => (agentLog += d));
    agent.stderr!.on('data', (d) => (agentLog += d));
    procs.push(proxy, agent);
    await until('the agent and the proxy', () => /snapshot sent/.test(agentLog) && /agent ready/.test(agentLog), tails);
    say(`1. agent (eBPF backend) and proxy running; programs attached at ${cg}; inpod-cni chained into ${p('net.d/10-demo.conflist')}`);

    const conflist = JSON.parse(readFileSync(p('net.d/10-demo.conflist'), 'utf8')) as { cniVersion: string; name: string; plugins: object[] };
    const cniPath = `${p('bin')}:/usr/lib/cni:/opt/cni/bin`;
    for (const n of ['client', 'server']) {
      const t = performance.now();
      pods.push(await node.addPodWithChain(n, conflist, { namespace: 'demo', name: n, uid: `uid-${n}` }, cniPath));
      const pod = pods.at(-1)!;
      say(`2. pod ${n} created through bridge + host-local + inpod-cni: ${pod.ip4} and ${pod.ip6}, captured and handed to the proxy before ADD returned (${(performance.now() - t).toFixed(0)} ms)`);
    }
    const [client, server] = pods as [SimPod, SimPod];
    // ztunnel's local config: the canonical service and revision as istiod would derive them from app/version labels
    writeFileSync(p('config.yaml'), `workloads:
  - {uid: uid-client, name: client, namespace: demo, serviceAccount: sleep, workloadIps: ["${client.ip4}", "${client.ip6}"], protocol: HBONE,
     workloadName: client, workloadType: pod, canonicalName: sleep, canonicalRevision: v1, clusterId: Kubernetes}
  - {uid: uid-server, name: server, namespace: demo, serviceAccount: web, workloadIps: ["${server.ip4}", "${server.ip6}"], protocol: HBONE,
     workloadName: server, workloadType: pod, canonicalName: web, canonicalRevision: v2, clusterId: Kubernetes}
`);
    await until('the proxy to load the workloads', () => /"workloads":2/.test(proxyLog), tails);
    servers.push(await listenInPod(server.netnsPath, 8080, (s) => s.once('data', (d) => s.end(`hello ${canonicalIp(s.remoteAddress ?? '')}, you said "${d.toString().trim()}"`))));

    for (const [step, ip] of [['3.', server.ip4!], ['  ', server.ip6!]] as const) {
      const before = proxyLog.length;
      const reply = await request(client.netnsPath, { ip, port: 8080 }, 'hi over the mesh');
      say(`${step} client -> ${at(ip, 8080)} answered: ${reply}`);
      // both ends write their line when the connection closes, in either order
      const complete = (): string[] => proxyLog.slice(before).split('\n').filter((l) => l.includes('"msg":"connection complete"'));
      await until(`the access log of both ends (${at(ip, 8080)})`, () => complete().length >= 2, tails);
      for (const line of complete()) say(`   access log: ${ztunnelText(JSON.parse(line) as Record<string, unknown>)}`);
    }
    const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    say(`   metrics (the destination's series; ${SHOWN.length} of their 27 labels shown):`);
    for (const m of metrics.split('\n').filter((l) => /^istio_tcp_\w+_total\{/.test(l) && l.includes('reporter="destination"'))) say(`   ${shortSeries(m)}`);

    say('4. the namespace label is removed: the agent unenrolls both pods live');
    writeFileSync(p('manifests/ns.yaml'), nsYaml(false));
    const backend = new EbpfBackend({ pinRoot, cgroupPath: cg, stateDir: p('state') });
    await until('live unenrollment', () => /pod unenrolled[\s\S]*pod unenrolled/.test(agentLog), tails);
    say(`   captured pods now: ${(await backend.list()).length}`);
    for (const ip of [server.ip4!, server.ip6!]) {
      const before2 = proxyLog.length;
      const direct = await request(client.netnsPath, { ip, port: 8080 }, 'hi directly');
      await new Promise((r) => setTimeout(r, 300));
      say(`   client -> ${at(ip, 8080)} answered: ${direct} (the proxy saw ${proxyLog.slice(before2).includes('"scope":"access"') ? 'it' : 'nothing'})`);
    }
  } finally {
    for (const s of servers) s.close();
    for (const c of procs) c.kill('SIGKILL');
    if (node) {
      for (const pod of pods) await node.removePod(pod.name);
      await node.destroy();
    }
    await new EbpfBackend({ pinRoot, cgroupPath: cg, stateDir: p('state') }).uninstall().catch(() => {});
    writeFileSync(join(cgRoot, originalCg.replace(/^\//, ''), 'cgroup.procs'), String(process.pid));
    await new Promise((r) => setTimeout(r, 100));
    try {
      rmdirSync(cg);
    } catch (e) {
      say(`   cleanup: ${(e as Error).message}`);
    }
    rmSync(dir, { recursive: true, force: true });
    say('5. cleaned up: namespaces, cgroup, pins, processes');
  }
}
