/**
 * ztunnel's TCP keepalive on the proxy's sockets (src/config.rs SocketConfig: 180 s idle, 180 s
 * between probes, 9 probes): every socket it connects (src/proxy.rs
 * DefaultSocketFactory::setup_socket) and every connection its outbound and plaintext-inbound
 * listeners accept (src/socket.rs Listener::accept). Read back from the kernel with getsockopt,
 * over loopback in this process's netns.
 */
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addon, openPath, SOL_SOCKET, type Fd } from '../../ts/native/index.js';
import { connectIn, fdOf, listenIn, TCP_KEEPALIVE } from '../../ts/proxy/sockets.js';

const SO_KEEPALIVE = 9;
const IPPROTO_TCP = 6;
const TCP_KEEPIDLE = 4;
const TCP_KEEPINTVL = 5;
const TCP_KEEPCNT = 6;

/** [SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT] of a socket, as the kernel holds them. */
function keepalive(s: net.Socket): number[] {
  const fd = fdOf(s);
  return [addon().getsockoptInt(fd, SOL_SOCKET, SO_KEEPALIVE), ...[TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT].map((o) => addon().getsockoptInt(fd, IPPROTO_TCP, o))];
}

describe("the proxy's sockets keep ztunnel's TCP keepalive", () => {
  let selfNs: Fd;
  let server: net.Server;
  let accepted: Promise<net.Socket>;
  const cleanup: net.Socket[] = [];

  beforeAll(async () => {
    selfNs = openPath('/proc/self/ns/net');
    let take!: (s: net.Socket) => void;
    accepted = new Promise((resolve) => (take = resolve));
    // as pod.ts makes 15001 and 15006, on an ephemeral loopback port
    server = await listenIn(selfNs.fd, 0, (s) => {
      cleanup.push(s);
      take(s);
    }, '127.0.0.1');
  });

  afterAll(() => {
    for (const s of cleanup) s.destroy();
    server?.close();
    selfNs?.close();
  });

  it('is 180 s idle, 180 s between probes, 9 probes, as ztunnel SocketConfig::default', () => {
    expect(TCP_KEEPALIVE).toEqual({ timeS: 180, intervalS: 180, retries: 9 });
  });

  it('on a socket the proxy connects (HBONE to 15008, the app, a passthrough upstream: all through connectIn), and on the connection a captured listener accepts', async () => {
    const port = (server.address() as net.AddressInfo).port;
    const up = await connectIn(selfNs.fd, { ip: '127.0.0.1', port }, { mark: 0 });
    cleanup.push(up);
    expect(keepalive(up)).toEqual([1, 180, 180, 9]);
    // and Nagle off, set in the same native call (TCP_NODELAY = 1)
    expect(addon().getsockoptInt(fdOf(up), IPPROTO_TCP, 1)).not.toBe(0);
    // accepted sockets inherit it from the listener (the kernel clones them from it)
    expect(keepalive(await accepted)).toEqual([1, 180, 180, 9]);
  });

  it("not on a socket made without them (the kernel's defaults: off, 7200 s), so the values above are the proxy's doing", async () => {
    const port = (server.address() as net.AddressInfo).port;
    const plain = net.connect({ host: '127.0.0.1', port });
    cleanup.push(plain);
    await new Promise((resolve) => plain.once('connect', resolve));
    const [on, idle] = keepalive(plain);
    expect(on).toBe(0);
    expect(idle).not.toBe(180);
  });
});
