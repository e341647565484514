/**
 * `inpod demo`: capture shown end to end on this host, no cluster. Two pods as network
 * namespaces wired by the CNI bridge plugin, both enrolled with the eBPF backend; a stand-in
 * proxy (this process) listens on 15001/15006 inside the pods and forwards with mark 0x539 the way
 * the real proxy does. The programs attach to a child cgroup this process creates and joins,
 * never to the host's cgroup2 root. Everything is removed at the end, also on failure.
 */
import net from 'node:net';
import { mkdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { SimNode } from '../sim/node.js';
import { EbpfBackend } from '../redirect/ebpf.js';
import { cgroup2Mount } from '../redirect/preflight.js';
import { origDst, socketIn, type SockAddr } from '../native/index.js';

const say = (s: string): void => void process.stdout.write(`${s}\n`);
const fmt = (a: SockAddr): string => `${a.ip}:${a.port}`;

/** Wraps a native fd (connected or connecting) in a Node socket. */
function wrap(fd: number): net.Socket {
  return new net.Socket({ fd, readable: true, writable: true });
}

function listenIn(netnsPath: string, port: number, onConn: (s: net.Socket) => void): Promise<net.Server> {
  const l = socketIn(netnsPath, { family: 4, bind: { ip: '0.0.0.0', port }, listen: 64, reuseAddr: true });
  const server = net.createServer({ pauseOnConnect: false }, onConn);
  return new Promise((resolve) => server.listen({ fd: l.release() }, () => resolve(server)));
}

function fdOf(s: net.Socket): number {
  return (s as unknown as { _handle: { fd: number } })._handle.fd;
}

/** Stand-in proxy: accept, read the original destination, connect there marked 0x539, pipe. */
async function standInProxy(pod: { name: string; netnsPath: string }, port: number, transparent: boolean): Promise<net.Server> {
  return listenIn(pod.netnsPath, port, (down) => {
    const orig = origDst(fdOf(down));
    say(`  [${pod.name} pod] proxy :${port} accepted ${down.remoteAddress}:${down.remotePort}, SO_ORIGINAL_DST ${fmt(orig)}`);
    const spec = transparent
      ? { family: 4 as const, mark: 0x539, transparent: true, bind: { ip: down.remoteAddress!, port: 0 }, connect: orig }
      : { family: 4 as const, mark: 0x539, connect: orig };
    const up = wrap(socketIn(pod.netnsPath, spec).release());
    down.pipe(up).pipe(down);
    const end = (): void => {
      down.destroy();
      up.destroy();
    };
    up.on('error', end);
    down.on('error', end);
  });
}

function request(netnsPath: string, to: SockAddr, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = wrap(socketIn(netnsPath, { family: 4, connect: to }).release());
    let got = '';
    s.setTimeout(5000, () => s.destroy(new Error(`no answer from ${fmt(to)} in 5 s`)));
    s.on('data', (d) => (got += d));
    s.on('end', () => resolve(got));
    s.on('error', reject);
    s.write(text);
  });
}

export async function demo(): Promise<void> {
  const prefix = `demo${process.pid % 1000}`;
  const cgRoot = cgroup2Mount(readFileSync('/proc/mounts', 'utf8'));
  if (!cgRoot) throw new Error('no cgroup2 mount found in /proc/mounts');
  const cg = join(cgRoot, `${prefix}cg`);
  const originalCg = readFileSync('/proc/self/cgroup', 'utf8').split('\n').find((l) => l.startsWith('0::'))?.slice(3) ?? '/';
  const stateDir = `/run/${prefix}-state`;
  const backend = new EbpfBackend({ pinRoot: `/sys/fs/bpf/${prefix}`, cgroupPath: cg, stateDir });
  const servers: net.Server[] = [];
  let node: SimNode | undefined;
  say('inpod demo: in-pod capture with eBPF on this host (no cluster)');
  try {
    mkdirSync(cg, { recursive: true });
    writeFileSync(join(cg, 'cgroup.procs'), String(process.pid)); // this process plays the pods' processes
    node = await SimNode.create({ prefix });
    const client = await node.addPod('client');
    const server = await node.addPod('server');
    say(`  node netns ${node.nodeNetns}, bridge ${node.subnet} (CNI bridge + host-local)`);
    say(`  pods: client ${client.ip}, server ${server.ip}`);
    for (const p of [client, server]) {
      const e = await backend.enroll(p.netnsPath);
      say(`  enrolled ${p.name} (ebpf, netns cookie ${e.cookie})`);
    }
    say(`  programs attached at ${cg}, pinned under /sys/fs/bpf/${prefix}`);
    servers.push(await standInProxy(client, 15001, false));
    servers.push(await standInProxy(server, 15006, true));
    servers.push(await listenIn(server.netnsPath, 8080, (s) => {
      s.once('data', (d) => {
        say(`  [server app] :8080 got "${d.toString().trim()}" from ${s.remoteAddress} (the client's own IP)`);
        s.end(`hello ${s.remoteAddress}, from the server app\n`);
      });
    }));
    say(`client app -> ${server.ip}:8080`);
    const reply = await request(client.netnsPath, { ip: server.ip, port: 8080 }, 'hello\n');
    say(`client app <- "${reply.trim()}"`);

    say('unenroll server: new inbound connections go straight to the app');
    await backend.unenroll(server.netnsPath);
    servers[1]!.close();
    const again = await request(client.netnsPath, { ip: server.ip, port: 8080 }, 'hello again\n');
    say(`client app <- "${again.trim()}" (outbound still captured by the client pod, inbound direct)`);
  } finally {
    for (const s of servers) s.close();
    await backend.uninstall().catch((e: Error) => say(`  cleanup: ${e.message}`));
    await node?.destroy();
    rmSync(stateDir, { recursive: true, force: true });
    writeFileSync(join(cgRoot, originalCg.replace(/^\//, ''), 'cgroup.procs'), String(process.pid));
    try {
      rmdirSync(cg);
    } catch (e) {
      say(`  cleanup: ${(e as Error).message}`);
    }
    say('cleaned up: namespaces, cgroup, pins');
  }
}
