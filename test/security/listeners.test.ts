/**
 * The proxy's pod listeners share their ports (SO_REUSEPORT) so that a proxy rollout hands them
 * over without a gap (ts/proxy/sockets.ts podListenerFd). What that must not open: an app in the
 * pod, running as its own user, joining the proxy's listeners and taking connections meant for
 * the proxy (around the policy check, or the mTLS of 15008). The kernel admits a socket into a
 * SO_REUSEPORT group only from the same user as the group's first socket (the proxy's: root),
 * as with ztunnel's in-pod listeners (src/inpod/config.rs).
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BackendName } from '../../ts/redirect/backend.js';
import { PORTS } from '../../ts/istio.js';
import { TestMesh } from './mesh.js';
import { until } from '../netns/lab.js';

const run = promisify(execFile);
/** the system's python (a per-user one, e.g. under /root, is not runnable as user 1000) */
const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

/** As user 1000 inside `netns`: a TCP socket with SO_REUSEPORT bound to 0.0.0.0:`port` and listening; prints "listening" or the errno name. */
async function bindAsApp(netns: string, port: number): Promise<string> {
  const py = 'import socket, errno\n' +
    's = socket.socket()\n' +
    's.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n' +
    'try:\n' +
    `    s.bind(("0.0.0.0", ${port})); s.listen(8); print("listening")\n` +
    'except OSError as e:\n' +
    '    print(errno.errorcode[e.errno])\n';
  const { stdout } = await run('nsenter', [`--net=${netns}`, 'setpriv', '--reuid=1000', '--regid=1000', '--clear-groups', PYTHON, '-c', py]);
  return stdout.trim();
}

describe.each(['ebpf', 'iptables'] as BackendName[])('an app cannot join the proxy\'s listeners, %s backend', (backend) => {
  let m: TestMesh;

  beforeAll(async () => {
    m = await TestMesh.create(backend, [{ name: 'server', namespace: 'default', serviceAccount: 'web' }]);
    await m.sh.server!.listen({ port: 8080, tag: 'app' });
  }, 60_000);
  afterAll(async () => {
    await m?.close();
  });

  it('binds 15001, 15006 and 15008 with SO_REUSEPORT as the pod\'s user (uid 1000): refused with EADDRINUSE, and connections still reach the proxy', async () => {
    const pod = m.pods.server!;
    for (const port of [PORTS.outbound, PORTS.inboundPlaintext, PORTS.hbone]) {
      expect(await bindAsApp(pod.netnsPath, port), `port ${port}`).toBe('EADDRINUSE');
    }
    // a port the proxy does not hold: the same app binds it (the refusal above is the proxy's group, not the sandbox)
    expect(await bindAsApp(pod.netnsPath, 18080)).toBe('listening');
    const from = m.records.length;
    const s = await m.fromNode(pod.ip, 8080);
    const reply = await new Promise<string>((resolve, reject) => {
      s.once('data', (d) => resolve(d.toString()));
      s.once('error', reject);
      s.write('hi');
    });
    s.destroy();
    expect(reply).toBe('app:hi');
    // it went through the proxy's inbound listener, which logged it
    await until('the inbound access-log line', () => m.logs(from, (l) => l.direction === 'inbound' && l.transport === 'plaintext').length > 0);
  });
});
