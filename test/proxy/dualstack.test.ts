/**
 * The pod listeners on both families (issue 18): one dual-stack socket per port, as ztunnel binds
 * `[::]` (src/config.rs bind_wildcard), that takes IPv4 and IPv6 clients; addresses read off it
 * canonical (ztunnel's to_canonical: an IPv4 client is `10.x`, never `::ffff:10.x`); and the
 * original destination of a redirected connection of either family, as conntrack answers it
 * (SOL_IP SO_ORIGINAL_DST for IPv4, SOL_IPV6 IP6T_SO_ORIGINAL_DST for IPv6; ztunnel's
 * src/socket.rs orig_dst_addr). Real kernel: a netns of its own with ::1 and fd00:200::a, the
 * redirect by iptables / ip6tables REDIRECT in OUTPUT, as Istio's in-pod rules redirect an app's
 * connection.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import type net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openPath, sockName, type Fd } from '../../ts/native/index.js';
import { connectIn, fdOf, listenIn, originalDestination } from '../../ts/proxy/sockets.js';
import { peerOf, localOf } from '../../ts/util/sockaddr.js';

const ns = `px6${randomBytes(2).toString('hex')}`;
const POD6 = 'fd00:200::a';
const POD4 = '10.200.254.10';

function inNs(...argv: string[]): void {
  execFileSync('ip', ['netns', 'exec', ns, ...argv]);
}

describe('pod listeners on both families', () => {
  let nsFd: Fd;
  let server: net.Server;
  let port: number;
  const accepted: net.Socket[] = [];
  const waiters: ((s: net.Socket) => void)[] = [];
  const next = (): Promise<net.Socket> => new Promise((r) => waiters.push(r));

  beforeAll(async () => {
    execFileSync('ip', ['netns', 'add', ns]);
    inNs('ip', 'link', 'set', 'lo', 'up');
    // a veth pair inside the netns stands for the pod's eth0 (no dummy module everywhere)
    inNs('ip', 'link', 'add', 'd0', 'type', 'veth', 'peer', 'name', 'd1');
    inNs('ip', 'link', 'set', 'd0', 'up');
    inNs('ip', 'link', 'set', 'd1', 'up');
    inNs('ip', 'addr', 'add', `${POD4}/24`, 'dev', 'd0');
    inNs('ip', '-6', 'addr', 'add', `${POD6}/64`, 'dev', 'd0', 'nodad');
    nsFd = openPath(`/run/netns/${ns}`);
    // as pod.ts opens 15001 and 15006 (no host: dual-stack), on an ephemeral port
    server = await listenIn(nsFd.fd, 0, (s) => {
      accepted.push(s);
      waiters.shift()?.(s);
    });
    port = (server.address() as net.AddressInfo).port;
    // Istio's REDIRECT of an app's connection to port 8080, for each family
    inNs('iptables', '-t', 'nat', '-A', 'OUTPUT', '-p', 'tcp', '--dport', '8080', '-j', 'REDIRECT', '--to-ports', String(port));
    inNs('ip6tables', '-t', 'nat', '-A', 'OUTPUT', '-p', 'tcp', '--dport', '8080', '-j', 'REDIRECT', '--to-ports', String(port));
    // Istio's return path for the proxy's transparent upstream (cni/pkg/iptables: the proxy's mark
    // 0x539 saved on the connection as 0x111, restored on the app's replies, routed to lo), for IPv6
    inNs('ip6tables', '-t', 'mangle', '-A', 'PREROUTING', '-m', 'mark', '--mark', '0x539/0xfff', '-j', 'CONNMARK', '--set-xmark', '0x111/0xfff');
    inNs('ip6tables', '-t', 'mangle', '-A', 'OUTPUT', '-m', 'connmark', '--mark', '0x111/0xfff', '-j', 'CONNMARK', '--restore-mark');
    inNs('ip', '-6', 'rule', 'add', 'fwmark', '0x111/0xfff', 'pref', '32764', 'lookup', '133');
    inNs('ip', '-6', 'route', 'add', 'local', '::/0', 'dev', 'lo', 'table', '133');
  });

  afterAll(async () => {
    for (const s of accepted) s.destroy();
    if (server) await new Promise((r) => server.close(r));
    nsFd?.close();
    execFileSync('ip', ['netns', 'del', ns]);
  });

  it('is one IPv6 socket bound to [::] that takes IPv4 too', () => {
    expect(sockName(fdOf(server as unknown as net.Socket))).toEqual({ ip: '::', port });
  });

  it.each([
    ['IPv4', '127.0.0.1'],
    ['IPv6', '::1'],
    ['IPv4 pod address', POD4],
    ['IPv6 pod address', POD6],
  ])('accepts an %s client and reports its address canonical (%s)', async (_fam, ip) => {
    const got = next();
    const c = await connectIn(nsFd.fd, { ip, port });
    const s = await got;
    expect(peerOf(s)).toEqual({ ip, port: localOf(c).port });
    expect(localOf(s)).toEqual({ ip, port });
    c.destroy();
  });

  it.each([
    ['IPv4', POD4],
    ['IPv6', POD6],
  ])('answers the original destination of a redirected %s connection', async (_fam, ip) => {
    const got = next();
    const c = await connectIn(nsFd.fd, { ip, port: 8080 }, { mark: 0 });
    const s = await got;
    expect(originalDestination(s)).toEqual({ ip, port: 8080 });
    c.destroy();
  });

  it('connects the app from an IPv6 client address transparently, and refuses mixing families', async () => {
    const got = next();
    const c = await connectIn(nsFd.fd, { ip: POD6, port }, { transparentFrom: 'fd00:200::77' });
    const s = await got;
    expect(peerOf(s).ip).toBe('fd00:200::77');
    c.destroy();
    await expect(connectIn(nsFd.fd, { ip: POD6, port }, { transparentFrom: '10.200.254.77' })).rejects.toMatchObject({ code: 'INPOD_ERR_UPSTREAM_CONNECT' });
    await expect(connectIn(nsFd.fd, { ip: `::ffff:${POD4}`, port }, { transparentFrom: 'fd00:200::77' })).rejects.toMatchObject({ code: 'INPOD_ERR_UPSTREAM_CONNECT' });
  });

  it('still takes IPv4 in a netns whose IPv6 is disabled by sysctl (disable_ipv6 does not refuse a [::] socket)', async () => {
    const off = `${ns}off`;
    execFileSync('ip', ['netns', 'add', off]);
    let offFd: Fd | undefined;
    let srv: net.Server | undefined;
    try {
      execFileSync('ip', ['netns', 'exec', off, 'sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1']);
      execFileSync('ip', ['netns', 'exec', off, 'ip', 'link', 'set', 'lo', 'up']);
      offFd = openPath(`/run/netns/${off}`);
      let got!: (s: net.Socket) => void;
      const accepted = new Promise<net.Socket>((r) => (got = r));
      srv = await listenIn(offFd.fd, 0, (s) => got(s));
      const c = await connectIn(offFd.fd, { ip: '127.0.0.1', port: (srv.address() as net.AddressInfo).port });
      const s = await accepted;
      expect(peerOf(s).ip).toBe('127.0.0.1');
      s.destroy();
      c.destroy();
    } finally {
      if (srv) await new Promise((r) => srv!.close(r));
      offFd?.close();
      execFileSync('ip', ['netns', 'del', off]);
    }
  });
});
