/**
 * `inpod agent`: the node agent. Installs the CNI plugin (binary + conflist entry), watches the
 * cluster (or a manifest directory), captures pods with the chosen backend, serves ZDS to the
 * proxy and the plugin socket to inpod-cni. `inpod agent uninstall` removes the CNI pieces.
 */
import http from 'node:http';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Agent } from '../agent/agent.js';
import { ManifestSource } from '../agent/manifests.js';
import { createBackend } from '../redirect/factory.js';
import { installBinary, installConf, uninstallBinary, uninstallConf, PLUGIN_TYPE } from '../cni/conflist.js';
import { DEFAULT_AGENT_SOCKET, pluginBinary, type PluginSettings } from '../cni/plugin.js';
import { DEFAULT_ZDS_SOCKET } from '../zds/server.js';
import { logger } from '../util/log.js';
import { MeshError } from '../util/errors.js';
import type { BackendName } from '../redirect/backend.js';

export const AGENT_USAGE = `  inpod agent    [--backend ebpf|iptables] [--kubeconfig F | --manifests DIR] [--node NAME] [--cgroup PATH]
                 [--zds SOCKET] [--cni-socket SOCKET] [--cni-bin-dir DIR] [--cni-conf-dir DIR] [--state-dir DIR]
                 [--pin-root DIR] [--health-addr HOST:PORT] [--mesh-view FILE] [--exclude-namespaces NS,NS]
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
  /** the plugin's view of who is in the mesh (default <state-dir>/meshview.json) */
  'mesh-view': { type: 'string' },
  /** pods there never concern the mesh (default kube-system and $POD_NAMESPACE or inpod-system) */
  'exclude-namespaces': { type: 'string' },
} as const;

export async function agentCommand(argv: string[]): Promise<void> {
  const uninstall = argv[0] === 'uninstall';
  const { values: v } = parseArgs({ args: uninstall ? argv.slice(1) : argv, options: OPTIONS, strict: true });
  const log = logger('agent');
  if (uninstall) {
    uninstallConf(v['cni-conf-dir']!);
    uninstallBinary(v['cni-bin-dir']!);
    log.info({ confDir: v['cni-conf-dir'], binDir: v['cni-bin-dir'] }, 'inpod-cni removed from the CNI config');
    return;
  }
  const backendName = v.backend as BackendName;
  if (backendName !== 'ebpf' && backendName !== 'iptables') throw new MeshError('INPOD_ERR_USAGE', `--backend ${v.backend}: use ebpf or iptables`);
  const node = v.node ?? process.env.NODE_NAME ?? '';
  if (!v.manifests && !node) throw new MeshError('INPOD_ERR_USAGE', 'inpod agent needs --node NAME (or NODE_NAME) to watch this node\'s pods');
  // the Kubernetes client (~70 MB resident) is loaded only when the state comes from the API
  const source = v.manifests
    ? new ManifestSource(v.manifests, node || undefined)
    : await import('../agent/kube.js').then(({ KubeSource, loadKubeConfig }) => new KubeSource(loadKubeConfig(v.kubeconfig), node));
  const backend = await createBackend(backendName, { cgroupPath: v.cgroup, pinRoot: v['pin-root'], stateDir: v['state-dir'] });
  await backend.install();

  const excludeNamespaces = v['exclude-namespaces'] !== undefined ? v['exclude-namespaces'].split(',').map((x) => x.trim()).filter(Boolean) : ['kube-system', process.env.POD_NAMESPACE || 'inpod-system'];
  const badNs = excludeNamespaces.find((n) => !/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(n));
  if (badNs !== undefined) throw new MeshError('INPOD_ERR_USAGE', `--exclude-namespaces: ${JSON.stringify(badNs)} is not a namespace name`);
  const plugin: PluginSettings = { agentSocket: v['cni-socket']!, meshView: v['mesh-view'] ?? join(v['state-dir']!, 'meshview.json'), excludeNamespaces };
  // The plugin entry stays across our restarts so new pods of the mesh wait for us instead of starting uncaptured.
  if (v['cni-conf-dir']) installCni(v['cni-bin-dir']!, v['cni-conf-dir']!, plugin, log);

  const agent = new Agent({ source, backend, stateDir: v['state-dir']!, zdsPath: v.zds!, pluginSocket: v['cni-socket']!, meshView: plugin.meshView, excludeNamespaces: plugin.excludeNamespaces });
  const health = startHealth(v['health-addr']!, agent);
  await agent.start();
  await new Promise<void>((resolve) => {
    const stop = (): void => {
      agent.stop();
      health.close();
      resolve();
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
}

function installCni(binDir: string, confDir: string, plugin: PluginSettings, log: ReturnType<typeof logger>): void {
  const attempt = (): void => {
    try {
      installBinary(binDir, pluginBinary());
      const file = installConf(confDir, { type: PLUGIN_TYPE, ...plugin });
      log.info({ file }, 'inpod-cni chained into the CNI config');
    } catch (e) {
      log.warn({ err: (e as Error).message }, 'CNI install not possible yet; retrying in 5 s');
      setTimeout(attempt, 5000).unref();
    }
  };
  attempt();
}

function startHealth(addr: string, agent: Agent): http.Server {
  const [host, port] = [addr.slice(0, addr.lastIndexOf(':')), Number(addr.slice(addr.lastIndexOf(':') + 1))];
  const server = http.createServer((req, res) => {
    if (req.url === '/healthz/ready') {
      res.writeHead(agent.ready ? 200 : 503).end(agent.ready ? 'ready\n' : 'starting\n');
    } else if (req.url === '/metrics') {
      agent.registry.metrics().then((m) => res.writeHead(200, { 'content-type': agent.registry.contentType }).end(m));
    } else res.writeHead(404).end();
  });
  server.listen(port, host);
  return server;
}
