/**
 * A simulated Kubernetes node on one host: a "node" network namespace holding a bridge, and pods
 * as network namespaces wired to it by the real Debian CNI plugins (bridge + host-local), run the
 * way a container runtime runs them. The host's own network namespace is never touched. Used by
 * the demo, the benchmark and the real-namespace tests.
 */
import { execFile } from 'node:child_process';
import { runProgram } from '../util/run.js';
import { mkdirSync, rmSync } from 'node:fs';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import { PROBE_SOURCE } from '../istio.js';

const run = promisify(execFile);

export const CNI_PATH = process.env.INPOD_CNI_PATH ?? '/usr/lib/cni:/opt/cni/bin';

export interface SimPod {
  name: string;
  netnsName: string;
  netnsPath: string;
  ip: string;
  containerId: string;
}

export interface SimNodeOptions {
  /** Prefix for every name this node creates (netns, bridge, IPAM state): unique per run. */
  prefix?: string;
  /** The /24 to use; random in 10.200.0.0/16 by default. */
  subnet?: string;
}

/** Runs a CNI plugin with the runtime's environment inside `netnsName` (the node). */
export async function runCniPlugin(
  plugin: string,
  command: 'ADD' | 'DEL' | 'CHECK' | 'VERSION',
  conf: object,
  env: Record<string, string>,
  inNetns: string,
  cniPath = CNI_PATH,
): Promise<unknown> {
  const pluginPath = cniPath.split(':').map((d) => `${d}/${plugin}`);
  const script = `for p in ${pluginPath.join(' ')}; do [ -x "$p" ] && exec "$p"; done; echo "CNI plugin ${plugin} not found in ${cniPath}" >&2; exit 127`;
  const r = await runProgram('nsenter', [`--net=/run/netns/${inNetns}`, 'sh', '-c', script], JSON.stringify(conf),
    { ...process.env, CNI_COMMAND: command, CNI_PATH: cniPath, ...env });
  const out = r.stdout;
  if (r.code !== 0) throw Object.assign(new Error(`CNI ${plugin} ${command} failed (${r.code}): ${out || r.stderr}`), { cniOutput: out });
  return out ? JSON.parse(out) : null;
}

export class SimNode {
  readonly prefix: string;
  readonly nodeNetns: string;
  readonly bridge: string;
  readonly subnet: string;
  readonly gateway: string;
  readonly pods = new Map<string, SimPod>();
  readonly #ipamDir: string;

  private constructor(prefix: string, subnet: string) {
    this.prefix = prefix;
    this.nodeNetns = `${prefix}node`;
    this.bridge = `${prefix}br`;
    this.subnet = subnet;
    this.gateway = subnet.replace(/\.0\/24$/, '.1');
    this.#ipamDir = `/run/${prefix}-ipam`;
  }

  static async create(opts: SimNodeOptions = {}): Promise<SimNode> {
    const prefix = opts.prefix ?? `s${randomBytes(2).toString('hex')}`;
    const subnet = opts.subnet ?? `10.200.${1 + Math.floor(Math.random() * 250)}.0/24`;
    const node = new SimNode(prefix, subnet);
    await run('ip', ['netns', 'add', node.nodeNetns]);
    await node.inNode('ip', 'link', 'set', 'lo', 'up');
    mkdirSync(node.#ipamDir, { recursive: true });
    return node;
  }

  /** The CNI network config every pod of this node is added with. */
  netConf(): object {
    return {
      cniVersion: '1.0.0',
      name: `${this.prefix}net`,
      type: 'bridge',
      bridge: this.bridge,
      isGateway: true,
      ipMasq: false,
      hairpinMode: true,
      ipam: { type: 'host-local', subnet: this.subnet, dataDir: this.#ipamDir, routes: [{ dst: '0.0.0.0/0' }] },
    };
  }

  /** Runs a command inside the node netns. */
  async inNode(...argv: string[]): Promise<string> {
    const { stdout } = await run('nsenter', [`--net=/run/netns/${this.nodeNetns}`, ...argv]);
    return stdout;
  }

  /** Creates a pod netns and wires it with CNI ADD, as a runtime would. */
  async addPod(name: string): Promise<SimPod> {
    const netnsName = `${this.prefix}${name}`;
    await run('ip', ['netns', 'add', netnsName]);
    const containerId = `${this.prefix}-${name}`;
    const netnsPath = `/run/netns/${netnsName}`;
    try {
      await run('ip', ['-n', netnsName, 'link', 'set', 'lo', 'up']);
      const result = (await runCniPlugin('bridge', 'ADD', this.netConf(), {
        CNI_CONTAINERID: containerId,
        CNI_NETNS: netnsPath,
        CNI_IFNAME: 'eth0',
      }, this.nodeNetns)) as { ips?: { address: string }[] };
      const ip = result.ips?.[0]?.address.split('/')[0];
      if (!ip) throw new Error(`CNI ADD for ${name} returned no IP`);
      if (!this.#probeReady) await this.#firstPodSetup();
      const pod = { name, netnsName, netnsPath, ip, containerId };
      this.pods.set(name, pod);
      return pod;
    } catch (e) {
      await run('ip', ['netns', 'del', netnsName]).catch(() => {});
      throw e;
    }
  }

  /**
   * Creates a pod netns and runs a whole conflist on it, in order, each plugin given the previous
   * result, as a container runtime does (CNI_ARGS carries the Kubernetes pod identity). On a
   * failure the netns stays (the runtime would retry ADD); the error carries the CNI output.
   */
  async addPodWithChain(name: string, conflist: { cniVersion: string; name: string; plugins: object[] }, k8s: { namespace: string; name: string; uid: string }, cniPath: string): Promise<SimPod> {
    const netnsName = `${this.prefix}${name}`;
    const netnsPath = `/run/netns/${netnsName}`;
    const containerId = `${this.prefix}-${name}`;
    if (!this.pods.has(name)) {
      await run('ip', ['netns', 'add', netnsName]);
      await run('ip', ['-n', netnsName, 'link', 'set', 'lo', 'up']);
      this.pods.set(name, { name, netnsName, netnsPath, ip: '', containerId });
    }
    const env = {
      CNI_CONTAINERID: containerId,
      CNI_NETNS: netnsPath,
      CNI_IFNAME: 'eth0',
      CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=${k8s.namespace};K8S_POD_NAME=${k8s.name};K8S_POD_UID=${k8s.uid}`,
    };
    let prev: unknown;
    for (const plugin of conflist.plugins as { type: string }[]) {
      const conf = { cniVersion: conflist.cniVersion, name: conflist.name, ...plugin, ...(prev ? { prevResult: prev } : {}) };
      prev = await runCniPlugin(plugin.type, 'ADD', conf, env, this.nodeNetns, cniPath);
    }
    const ip = (prev as { ips?: { address: string }[] }).ips?.[0]?.address.split('/')[0] ?? '';
    const pod = { name, netnsName, netnsPath, ip, containerId };
    this.pods.set(name, pod);
    if (this.pods.size === 1 || !this.#probeReady) await this.#firstPodSetup();
    return pod;
  }

  /** Runs DEL for the whole conflist in reverse order (as a runtime does); returns each exit. */
  async delPodWithChain(name: string, conflist: { cniVersion: string; name: string; plugins: object[] }, k8s: { namespace: string; name: string; uid: string }, cniPath: string): Promise<void> {
    const pod = this.pods.get(name);
    if (!pod) return;
    const env = {
      CNI_CONTAINERID: pod.containerId,
      CNI_NETNS: pod.netnsPath,
      CNI_IFNAME: 'eth0',
      CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=${k8s.namespace};K8S_POD_NAME=${k8s.name};K8S_POD_UID=${k8s.uid}`,
    };
    for (const plugin of [...(conflist.plugins as { type: string }[])].reverse()) {
      await runCniPlugin(plugin.type, 'DEL', { cniVersion: conflist.cniVersion, name: conflist.name, ...plugin }, env, this.nodeNetns, cniPath);
    }
  }

  #probeReady = false;

  /** The bridge exists after the first ADD: give it the probe source address (kubelet SNAT). */
  async #firstPodSetup(): Promise<void> {
    await this.inNode('ip', 'addr', 'replace', `${PROBE_SOURCE.ipv4}/32`, 'dev', this.bridge);
    this.#probeReady = true;
  }

  async removePod(name: string): Promise<void> {
    const pod = this.pods.get(name);
    if (!pod) return;
    this.pods.delete(name);
    await runCniPlugin('bridge', 'DEL', this.netConf(), {
      CNI_CONTAINERID: pod.containerId,
      CNI_NETNS: pod.netnsPath,
      CNI_IFNAME: 'eth0',
    }, this.nodeNetns).catch(() => {});
    await run('ip', ['netns', 'del', pod.netnsName]).catch(() => {});
  }

  /** Removes every pod, the bridge and the node netns. Safe to call twice. */
  async destroy(): Promise<void> {
    for (const name of [...this.pods.keys()]) await this.removePod(name);
    await run('ip', ['netns', 'del', this.nodeNetns]).catch(() => {});
    rmSync(this.#ipamDir, { recursive: true, force: true });
  }
}
