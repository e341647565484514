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
  /** the pod's first address: its IPv4, or its IPv6 for an IPv6-only pod */
  ip: string;
  /** its IPv4 and IPv6 addresses, when it has one of that family */
  ip4?: string;
  ip6?: string;
  family?: PodFamily;
  containerId: string;
}

/** Which address families a pod gets: IPv4 (the default), IPv6 only, or both (dual-stack). */
export type PodFamily = 'ipv4' | 'ipv6' | 'dual';

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
  /** the IPv6 range of this node's pods, inside fd00:200::/64 (a /80 per node, as the IPv4 /24) */
  readonly subnet6: string;
  readonly gateway6: string;
  readonly pods = new Map<string, SimPod>();
  readonly #ipamDir: string;

  private constructor(prefix: string, subnet: string) {
    this.prefix = prefix;
    this.nodeNetns = `${prefix}node`;
    this.bridge = `${prefix}br`;
    this.subnet = subnet;
    this.gateway = subnet.replace(/\.0\/24$/, '.1');
    const third = Number(subnet.split('.')[2]).toString(16);
    // as the kernel prints them (RFC 5952: the first of two equal zero runs is the one compressed)
    this.subnet6 = `fd00:200::${third}:0:0:0/80`;
    this.gateway6 = `fd00:200::${third}:0:0:1`;
    this.#ipamDir = `/run/${prefix}-ipam`;
  }

  static async create(opts: SimNodeOptions = {}): Promise<SimNode> {
    const prefix = opts.prefix ?? `s${randomBytes(2).toString('hex')}`;
    const subnet = opts.subnet ?? `10.200.${1 + Math.floor(Math.random() * 250)}.0/24`;
    const node = new SimNode(prefix, subnet);
    await run('ip', ['netns', 'add', node.nodeNetns]);
    await node.inNode('ip', 'link', 'set', 'lo', 'up');
    // No duplicate address detection for the node's own addresses (the bridge's IPv6 gateway):
    // nothing else can hold them, and a gateway still tentative for its first second or two
    // would lose the first packets of a pod's IPv6 reply through it.
    await node.inNode('sysctl', '-qw', 'net.ipv6.conf.default.accept_dad=0', 'net.ipv6.conf.all.accept_dad=0');
    mkdirSync(node.#ipamDir, { recursive: true });
    return node;
  }

  /**
   * The CNI network config a pod of this node is added with: IPv4 by default; IPv6 only or
   * dual-stack through host-local's ranges (one per family), each with its default route.
   */
  netConf(family: PodFamily = 'ipv4'): object {
    const v4 = { range: [{ subnet: this.subnet }], route: { dst: '0.0.0.0/0' } };
    const v6 = { range: [{ subnet: this.subnet6 }], route: { dst: '::/0' } };
    const fams = family === 'ipv4' ? [v4] : family === 'ipv6' ? [v6] : [v4, v6];
    const ipam = family === 'ipv4'
      ? { type: 'host-local', subnet: this.subnet, dataDir: this.#ipamDir, routes: [v4.route] }
      : { type: 'host-local', ranges: fams.map((f) => f.range), dataDir: this.#ipamDir, routes: fams.map((f) => f.route) };
    return {
      cniVersion: '1.0.0',
      name: `${this.prefix}net`,
      type: 'bridge',
      bridge: this.bridge,
      isGateway: true,
      ipMasq: false,
      hairpinMode: true,
      ipam,
    };
  }

  /** Runs a command inside the node netns. */
  async inNode(...argv: string[]): Promise<string> {
    const { stdout } = await run('nsenter', [`--net=/run/netns/${this.nodeNetns}`, ...argv]);
    return stdout;
  }

  /** Creates a pod netns and wires it with CNI ADD, as a runtime would (`family`: its addresses). */
  async addPod(name: string, family: PodFamily = 'ipv4'): Promise<SimPod> {
    const netnsName = `${this.prefix}${name}`;
    await run('ip', ['netns', 'add', netnsName]);
    const containerId = `${this.prefix}-${name}`;
    const netnsPath = `/run/netns/${netnsName}`;
    try {
      await run('ip', ['-n', netnsName, 'link', 'set', 'lo', 'up']);
      const result = (await runCniPlugin('bridge', 'ADD', this.netConf(family), {
        CNI_CONTAINERID: containerId,
        CNI_NETNS: netnsPath,
        CNI_IFNAME: 'eth0',
      }, this.nodeNetns)) as { ips?: { address: string }[] };
      const ips = (result.ips ?? []).map((a) => a.address.split('/')[0]!);
      const ip = ips[0];
      if (!ip) throw new Error(`CNI ADD for ${name} returned no IP`);
      if (!this.#probeReady) await this.#firstPodSetup();
      const pod: SimPod = { name, netnsName, netnsPath, ip, ip4: ips.find((a) => !a.includes(':')), ip6: ips.find((a) => a.includes(':')), family, containerId };
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
    const ips = ((prev as { ips?: { address: string }[] }).ips ?? []).map((a) => a.address.split('/')[0]!);
    const [ip4, ip6] = [ips.find((a) => !a.includes(':')), ips.find((a) => a.includes(':'))];
    const family: PodFamily = ip4 && ip6 ? 'dual' : ip6 ? 'ipv6' : 'ipv4';
    const pod: SimPod = { name, netnsName, netnsPath, ip: ips[0] ?? '', ip4, ip6, family, containerId };
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

  /** The bridge exists after the first ADD: give it the probe source addresses (kubelet SNAT). */
  async #firstPodSetup(): Promise<void> {
    await this.inNode('ip', 'addr', 'replace', `${PROBE_SOURCE.ipv4}/32`, 'dev', this.bridge);
    await this.inNode('ip', '-6', 'addr', 'replace', `${PROBE_SOURCE.ipv6}/128`, 'dev', this.bridge, 'nodad');
    this.#probeReady = true;
  }

  async removePod(name: string): Promise<void> {
    const pod = this.pods.get(name);
    if (!pod) return;
    this.pods.delete(name);
    await runCniPlugin('bridge', 'DEL', this.netConf(pod.family), {
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
