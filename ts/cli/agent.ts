/**
 * `inpod agent`: the node agent. Installs the CNI plugin (binary + conflist entry), watches the
 * cluster (or a manifest directory), captures pods with the chosen backend, serves ZDS to the
 * proxy and the plugin socket to inpod-cni. On SIGTERM it removes the CNI pieces when its
 * DaemonSet is being deleted or no longer schedules to this node, and keeps them on an upgrade
 * or reboot (ts/agent/lifecycle.ts); `inpod agent uninstall` removes them by hand.
 */
import http from 'node:http';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Agent } from '../agent/agent.js';
import { ManifestSource } from '../agent/manifests.js';
import { createBackend } from '../redirect/factory.js';
import { installBinary, installConf, uninstallCni, PLUGIN_TYPE } from '../cni/conflist.js';
import { shutdownVerdict, type OwnerLookup } from '../agent/lifecycle.js';
import { DEFAULT_AGENT_SOCKET, pluginBinary, type PluginSettings } from '../cni/plugin.js';
import { DEFAULT_ZDS_SOCKET } from '../zds/server.js';
import { logger } from '../util/log.js';
import { MeshError } from '../util/errors.js';
import type { BackendName } from '../redirect/backend.js';
import { openNetns } from '../redirect/netns.js';

export const AGENT_USAGE = `  inpod agent    [--backend ebpf|iptables] [--kubeconfig F | --manifests DIR] [--node NAME] [--cgroup PATH]
                 [--zds SOCKET] [--cni-socket SOCKET] [--cni-bin-dir DIR] [--cni-conf-dir DIR] [--state-dir DIR]
                 [--pin-root DIR] [--health-addr HOST:PORT] [--host-netns PATH|none] [--pod-name NAME --pod-namespace NS]
                 [--mesh-view FILE] [--exclude-namespaces NS,NS] [--ipv6 | --no-ipv6]
                 (dual-stack and IPv6-only pods are captured by default, as Istio's chart (ambient.ipv6);
                 --no-ipv6, or AMBIENT_IPV6=false, refuses a pod with IPv6 addresses at CNI ADD instead)
                 (its own pod, POD_NAME / POD_NAMESPACE by default: read at shutdown to tell an
                 uninstall, which removes inpod-cni, from an upgrade or reboot, which keeps it)
  inpod agent uninstall [--cni-bin-dir DIR] [--cni-conf-dir DIR]`;

const OPTIONS = {
  backend: { type: 'string', default: 'ebpf' },
  kubeconfig: { type: 'string' },
  manifests: { type: 'string' },
  node: { type: 'string' },
  cgroup: { type: 'string' },
  zds: { type: 'string', default: DEFAULT_ZDS_SOCKET },
  'cni-socket': { type: 'string', default: DEFAULT_AGENT_SOCKET },
  'cni-bin-dir': { type: 'string', default: '/opt/cni/bin' },
  'cni-conf-dir': { type: 'string', default: '/etc/cni/net.d' },
  'state-dir': { type: 'string', default: '/var/run/inpod' },
  'pin-root': { type: 'string' },
  'health-addr': { type: 'string', default: '127.0.0.1:15022' },
  'pod-name': { type: 'string' },
  'pod-namespace': { type: 'string' },
  // the node's netns: its local sockets (kubelet's probes) reach pods uncaptured; "none": captured too
  'host-netns': { type: 'string' },
  /** the plugin's view of who is in the mesh (default <state-dir>/meshview.json) */
  'mesh-view': { type: 'string' },
  /** pods there never concern the mesh (default kube-system and the agent's own namespace, else inpod-system) */
  'exclude-namespaces': { type: 'string' },
  /** capture pods' IPv6 (istio-cni's ambient.ipv6; default AMBIENT_IPV6, else on) */
  ipv6: { type: 'boolean' },
  /** refuse pods with IPv6 addresses instead */
  'no-ipv6': { type: 'boolean' },
} as const;

/** The host's netns as the agent (hostPID) sees it: init's. */
export const DEFAULT_HOST_NETNS = '/proc/1/ns/net';

export async function agentCommand(argv: string[]): Promise<void> {
  const uninstall = argv[0] === 'uninstall';
  const { values: v } = parseArgs({ args: uninstall ? argv.slice(1) : argv, options: OPTIONS, strict: true });
  const log = logger('agent');
  if (uninstall) {
    const removed = uninstallCni(v['cni-bin-dir']!, v['cni-conf-dir']!);
    log.info({ confDir: v['cni-conf-dir'], binDir: v['cni-bin-dir'], ...removed }, 'inpod-cni removed from the CNI config');
    return;
  }
  const backendName = v.backend as BackendName;
  if (backendName !== 'ebpf' && backendName !== 'iptables') throw new MeshError('INPOD_ERR_USAGE', `--backend ${v.backend}: use ebpf or iptables`);
  const node = v.node ?? process.env.NODE_NAME ?? '';
  if (!v.manifests && !node) throw new MeshError('INPOD_ERR_USAGE', 'inpod agent needs --node NAME (or NODE_NAME) to watch this node\'s pods');
  const podName = v['pod-name'] ?? process.env.POD_NAME ?? '';
  const podNamespace = v['pod-namespace'] ?? process.env.POD_NAMESPACE ?? '';
  if (!v.manifests && (!podName || !podNamespace)) {
    throw new MeshError('INPOD_ERR_USAGE', `inpod agent needs its own pod's ${!podName ? 'name' : 'namespace'} to decide at shutdown whether its DaemonSet is being removed (then it removes inpod-cni) or rolled (then it keeps it): ` +
      'set POD_NAME and POD_NAMESPACE from the downward API (fieldRef metadata.name and metadata.namespace, as deploy/agent-daemonset.yaml does) or pass --pod-name and --pod-namespace');
  }
  // the Kubernetes client (~70 MB resident) is loaded only when the state comes from the API
  const kube = v.manifests ? undefined : await import('../agent/kube.js').then(async ({ KubeSource, loadKubeConfig }) => {
    const kc = loadKubeConfig(v.kubeconfig);
    const { SelfOwner } = await import('../agent/selfowner.js');
    return { source: new KubeSource(kc, node), owner: new SelfOwner(kc, { podName, podNamespace, nodeName: node }) };
  });
  const source = kube?.source ?? new ManifestSource(v.manifests!, node || undefined);
  const hostNetns = hostNetnsSetting(v['host-netns'], log);
  if (v.ipv6 && v['no-ipv6']) throw new MeshError('INPOD_ERR_USAGE', '--ipv6 and --no-ipv6 contradict each other: give one');
  const ipv6 = ipv6Setting(v['no-ipv6'] ? false : v.ipv6, process.env.AMBIENT_IPV6);
  const backend = await createBackend(backendName, { cgroupPath: v.cgroup, pinRoot: v['pin-root'], stateDir: v['state-dir'], hostNetns, ipv6 });
  await backend.install();
  if (ipv6 && !backend.ipv6) log.warn({ backend: backend.name }, 'IPv6 capture asked for, but this backend does not capture IPv6: pods with IPv6 addresses are refused at CNI ADD');

  const excludeNamespaces = v['exclude-namespaces'] !== undefined ? v['exclude-namespaces'].split(',').map((x) => x.trim()).filter(Boolean) : ['kube-system', podNamespace || 'inpod-system'];
  const badNs = excludeNamespaces.find((n) => !/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(n));
  if (badNs !== undefined) throw new MeshError('INPOD_ERR_USAGE', `--exclude-namespaces: ${JSON.stringify(badNs)} is not a namespace name`);
  const plugin: PluginSettings = { agentSocket: v['cni-socket']!, meshView: v['mesh-view'] ?? join(v['state-dir']!, 'meshview.json'), excludeNamespaces };
  // The plugin entry stays across our restarts so new pods of the mesh wait for us instead of
  // starting uncaptured; it goes only when this node will get no agent again (shutdown below).
  const stopInstalling = installCni(v['cni-bin-dir']!, v['cni-conf-dir']!, plugin, log);
  const signalled = new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });

  // During a rollout (two agents on the node, ARCHITECTURE.md "Upgrades") the older one holds the
  // health port until it hands over; this one's health server binds as soon as it is free.
  let health: { close(): void } = { close: () => {} };
  const agent = new Agent({
    source, backend, stateDir: v['state-dir']!, zdsPath: v.zds!, pluginSocket: v['cni-socket']!,
    meshView: plugin.meshView, excludeNamespaces: plugin.excludeNamespaces,
    onHandedOver: () => health.close(),
    onOrphaned: () => {
      log.error('exiting so that the kubelet restarts this agent and it serves the node again');
      process.exit(1);
    },
  });
  health = startHealth(v['health-addr']!, agent, log);
  if (kube) void kube.owner.remember();
  await Promise.race([agent.start(), signalled]);
  const signal = await signalled;

  // As istio-cni on shutdown (cni/pkg/cmd/root.go): decide, remove the plugin if no agent comes
  // back here, then stop serving (a pod whose ADD is under way is still answered meanwhile).
  stopInstalling();
  const lookup: OwnerLookup = kube ? await kube.owner.lookup() : { state: 'no-api' };
  const verdict = shutdownVerdict(lookup);
  if (verdict.cleanup) {
    const removed = uninstallCni(v['cni-bin-dir']!, v['cni-conf-dir']!);
    log.info({ signal, reason: verdict.reason, ...removed }, 'shutting down: inpod-cni removed; running pods keep their capture until they go');
  } else {
    log.info({ signal, reason: verdict.reason }, 'shutting down: inpod-cni stays installed');
  }
  agent.stop();
  health.close();
}

/**
 * --ipv6 / --no-ipv6, else AMBIENT_IPV6 (istio-cni's configmap key for the chart's ambient.ipv6,
 * which defaults to true: manifests/charts/istio-cni/values.yaml): "true"/"1" on, "false"/"0"
 * off, unset or empty on. Any other value stops the agent with an error naming it, rather than
 * guessing which side the operator meant. Pure.
 */
export function ipv6Setting(flag: boolean | undefined, env: string | undefined): boolean {
  if (flag !== undefined) return flag;
  const e = (env ?? '').trim();
  if (e === '' || /^(true|1)$/i.test(e)) return true;
  if (/^(false|0)$/i.test(e)) return false;
  throw new MeshError('INPOD_ERR_USAGE', `AMBIENT_IPV6=${JSON.stringify(env)} is neither true nor false; set it to "true" (capture IPv6, the default) or "false" (refuse pods with IPv6 addresses)`);
}

/**
 * --host-netns: a path given must open (else the agent stops with the error); "none" names no
 * netns. Without the flag, init's netns, unless it cannot be opened (no hostPID, a sandbox that
 * hides pid 1): then none, with a warning. Either "none" leaves the node's probes captured, as
 * they were before inpod knew the host netns: never a wider pass than asked for.
 */
function hostNetnsSetting(flag: string | undefined, log: ReturnType<typeof logger>): string | undefined {
  if (flag === 'none') return undefined;
  if (flag !== undefined) return flag;
  try {
    openNetns(DEFAULT_HOST_NETNS).close();
    return DEFAULT_HOST_NETNS;
  } catch (e) {
    log.warn({ err: (e as Error).message, path: DEFAULT_HOST_NETNS }, 'host netns not readable: kubelet probes to mesh pods stay captured ' +
      '(run the agent with hostPID, or pass --host-netns)');
    return undefined;
  }
}


/** Installs the plugin, retrying every 5 s until the node's own CNI config exists; returns a stop. */
function installCni(binDir: string, confDir: string, plugin: PluginSettings, log: ReturnType<typeof logger>): () => void {
  let timer: NodeJS.Timeout | undefined;
  const attempt = (): void => {
    try {
      installBinary(binDir, pluginBinary());
      const file = installConf(confDir, { type: PLUGIN_TYPE, ...plugin });
      log.info({ file }, 'inpod-cni chained into the CNI config');
    } catch (e) {
      log.warn({ err: (e as Error).message }, 'CNI install not possible yet; retrying in 5 s');
      timer = setTimeout(attempt, 5000).unref();
    }
  };
  attempt();
  return () => clearTimeout(timer);
}

/**
 * Readiness (ready once the agent serves) and metrics on `addr`. While the port is taken (the
 * agent this one takes over from still has it) it tries again every second.
 */
function startHealth(addr: string, agent: Agent, log: ReturnType<typeof logger>): { close(): void } {
  const [host, port] = [addr.slice(0, addr.lastIndexOf(':')), Number(addr.slice(addr.lastIndexOf(':') + 1))];
  let closed = false;
  let retry: NodeJS.Timeout | undefined;
  const server = http.createServer((req, res) => {
    if (req.url === '/healthz/ready') {
      res.writeHead(agent.ready ? 200 : 503).end(agent.ready ? 'ready\n' : 'starting\n');
    } else if (req.url === '/metrics') {
      agent.registry.metrics().then((m) => res.writeHead(200, { 'content-type': agent.registry.contentType }).end(m));
    } else res.writeHead(404).end();
  });
  let warned = false;
  server.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code !== 'EADDRINUSE' || closed) return void log.error({ addr, err: e.message }, 'health endpoint unavailable');
    if (!warned) log.info({ addr }, 'health port in use (the agent before this one has it until it hands over); trying again every second');
    warned = true;
    retry = setTimeout(() => server.listen(port, host), 1000);
    retry.unref();
  });
  server.listen(port, host);
  return {
    close: () => {
      closed = true;
      clearTimeout(retry);
      server.close();
    },
  };
}
