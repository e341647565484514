/**
 * Another host behind the simulated node: a netns wired to the node netns by a veth and routed
 * through it, as another node (or anything off-node) is. Its connections to pods are packets the
 * node forwards, never sockets of the node's own. With `masquerade`, the node rewrites their
 * source to its own address on the bridge, the address its own probes come from. Names carry the
 * lab's prefix; `destroy()` removes the netns (the node side goes with the lab's node netns).
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { until, type Lab } from './lab.js';

const run = promisify(execFile);

/** Outside every lab subnet (10.200.1-250.0/24), inside the tests' 10.200.0.0/16. */
const NODE_SIDE = '10.200.253.1';
const OUTSIDE = '10.200.253.2';
/** The same in fd00:200::/64, outside every lab node's /80 (fd00:200::<1-fa>:0:0:0/80). */
const NODE_SIDE6 = 'fd00:200::fe:0:0:1';
const OUTSIDE6 = 'fd00:200::fe:0:0:2';

export interface Outside {
  netnsPath: string;
  ip: string;
  ip6: string;
  destroy(): Promise<void>;
}

export async function routedOutside(lab: Lab, o: { masquerade: boolean }): Promise<Outside> {
  const name = `${lab.prefix}ext`;
  const [nodeIf, extIf] = [`${lab.prefix}xn`, `${lab.prefix}xe`];
  const inNode = (...argv: string[]) => run('nsenter', [`--net=${lab.nodeNetnsPath}`, ...argv]);
  const inExt = (...argv: string[]) => run('ip', ['-n', name, ...argv]);
  await run('ip', ['netns', 'add', name]);
  const destroy = async (): Promise<void> => void (await run('ip', ['netns', 'del', name]).catch(() => {}));
  try {
    await run('ip', ['link', 'add', nodeIf, 'netns', lab.node.nodeNetns, 'type', 'veth', 'peer', 'name', extIf, 'netns', name]);
    await inNode('ip', 'addr', 'add', `${NODE_SIDE}/30`, 'dev', nodeIf);
    await inNode('ip', 'link', 'set', nodeIf, 'up');
    await inNode('sysctl', '-qw', 'net.ipv4.ip_forward=1');
    await inExt('link', 'set', 'lo', 'up');
    await inExt('addr', 'add', `${OUTSIDE}/30`, 'dev', extIf);
    await inExt('link', 'set', extIf, 'up');
    await inExt('route', 'add', 'default', 'via', NODE_SIDE);
    // IPv6 beside it (nodad: usable at once), for the lab's IPv6 and dual-stack pods
    await inNode('ip', '-6', 'addr', 'add', `${NODE_SIDE6}/126`, 'dev', nodeIf, 'nodad');
    await inNode('sysctl', '-qw', 'net.ipv6.conf.all.forwarding=1');
    await inExt('-6', 'addr', 'add', `${OUTSIDE6}/126`, 'dev', extIf, 'nodad');
    await inExt('-6', 'route', 'add', 'default', 'via', NODE_SIDE6);
    if (o.masquerade) {
      await inNode('iptables', '-w', '-t', 'nat', '-A', 'POSTROUTING', '-s', `${OUTSIDE}/32`, '-o', lab.node.bridge, '-j', 'MASQUERADE');
      await inNode('ip6tables', '-w', '-t', 'nat', '-A', 'POSTROUTING', '-s', `${OUTSIDE6}/128`, '-o', lab.node.bridge, '-j', 'MASQUERADE');
    }
    // usable once the node side answers over both families (a fresh veth can drop the first
    // packets while it comes up; a test's first connection must not be what finds that out)
    // packets while it comes up; a test's first connection must not be what finds that out):
    // the node's RST to a closed port is the answer
    const sh = await lab.shell(`/run/netns/${name}`, { inCgroup: false });
    const answers = async (host: string): Promise<boolean> => {
      const r = await sh.connect({ host, port: 9, timeoutMs: 1000 });
      return !r.ok && r.error === 'ECONNREFUSED';
    };
    try {
      await until('the outside netns to reach the node over IPv4 and IPv6', async () => (await answers(NODE_SIDE)) && (await answers(NODE_SIDE6)));
    } finally {
      sh.kill();
    }
  } catch (e) {
    await destroy();
    throw e;
  }
  return { netnsPath: `/run/netns/${name}`, ip: OUTSIDE, ip6: OUTSIDE6, destroy };
}
