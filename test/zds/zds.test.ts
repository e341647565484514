/**
 * ZDS end to end over real SOCK_SEQPACKET sockets with real netns fds: round trips in one
 * process and across two, reconnects on either side, and bad input from either side.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Fd, recvFds, socketInNs, sendFds, unixConnect, unixSocket, accept, openPath, netnsCookie, netnsCookieOfFd, type Received } from '../../ts/native/index.js';
import { openNetns } from '../../ts/redirect/netns.js';
import { ZdsServer, type ZdsPod } from '../../ts/zds/server.js';
import { ZdsClient, type ZdsHandler } from '../../ts/zds/client.js';
import { ZdsProtocolError, decodeRequest, encodeAck } from '../../ts/zds/messages.js';
import { FakeAgent, type FakeAgentConn } from './fixtures/agent.js';
import { until } from '../netns/lab.js';

const run = promisify(execFile);
const prefix = `z${randomBytes(2).toString('hex')}`;
const netns = [`${prefix}a`, `${prefix}b`];
const nsPath = (n: string): string => `/run/netns/${n}`;
let dir: string;
const fdCount = (): number => readdirSync('/proc/self/fd').length;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), `${prefix}-`));
  for (const n of netns) {
    execFileSync('ip', ['netns', 'add', n]);
    execFileSync('ip', ['-n', n, 'link', 'set', 'lo', 'up']);
  }
});
afterAll(() => {
  for (const n of netns) execFileSync('ip', ['netns', 'del', n]);
  rmSync(dir, { recursive: true, force: true });
});

/** A handler that serves a TCP listener on 7777 inside each pod netns it is given. */
class ListenerHandler implements ZdsHandler {
  readonly pods = new Map<string, { fd: Fd; listener: Fd }>();
  readonly log: string[] = [];
  seen: Set<string> | null = null;
  connected(): void {
    this.seen = new Set();
    this.log.push('connected');
  }
  async add(uid: string, _info: unknown, ns: Fd): Promise<void> {
    this.log.push(`add ${uid}`);
    this.seen?.add(uid);
    if (this.pods.has(uid)) {
      ns.close(); // already served: keep as is
      return;
    }
    if (uid.startsWith('fail')) throw new Error(`cannot serve ${uid}`);
    // reuseAddr, as the real proxy's listeners: a re-add right after a del must be able to bind again
    try {
      this.pods.set(uid, { fd: ns, listener: socketInNs(ns.fd, { family: 4, bind: { ip: '127.0.0.1', port: 7777 }, listen: 8, reuseAddr: true }) });
    } catch (e) {
      this.log.push(`add ${uid} failed: ${(e as Error).message}`); // shows in the log assertions
      throw e;
    }
  }
  del(uid: string): void {
    this.log.push(`del ${uid}`);
    const p = this.pods.get(uid);
    p?.listener.close();
    p?.fd.close();
    this.pods.delete(uid);
  }
  keep(uid: string): void {
    this.log.push(`keep ${uid}`);
    this.seen?.add(uid);
  }
  snapshotSent(): void {
    this.log.push('snapshot');
    for (const uid of [...this.pods.keys()]) if (this.seen && !this.seen.has(uid)) this.del(uid);
    this.seen = null;
  }
  close(): void {
    for (const uid of [...this.pods.keys()]) this.del(uid);
  }
}

const reachable = async (ns: string): Promise<boolean> =>
  run('nsenter', [`--net=${nsPath(ns)}`, 'bash', '-c', 'exec 3<>/dev/tcp/127.0.0.1/7777']).then(() => true, () => false);

const pod = (uid: string, ns: string): ZdsPod => ({ uid, info: { name: uid, namespace: 'default', serviceAccount: 'sa' }, netnsPath: nsPath(ns) });

describe('ZDS agent and proxy', () => {
  const cleanups: (() => void | Promise<void>)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  it('snapshots the enrolled pods to a proxy that connects; the proxy opens a listener inside each received netns', async () => {
    // the addon keeps each thread's own netns open from its first call into another netns
    // (netns_guard.h): once per thread, not per call, so it belongs to the baseline
    netnsCookie(nsPath(netns[0]!));
    const baseline = fdCount();
    const path = join(dir, 'a.sock');
    let ready = 0;
    const server = new ZdsServer({ path, pods: () => [pod('p1', netns[0]!)], onReady: () => ready++ });
    server.start();
    const h = new ListenerHandler();
    const client = new ZdsClient({ path, handler: h });
    client.start();
    await until('the snapshot to be taken', () => ready === 1, { timeoutMs: 5000 });
    expect(h.log).toEqual(['connected', 'add p1', 'snapshot']);
    expect(await reachable(netns[0]!)).toBe(true);
    // streamed after the snapshot, acknowledged before addPod resolves
    await server.addPod(pod('p2', netns[1]!));
    expect(await reachable(netns[1]!)).toBe(true);
    await expect(server.addPod(pod('fail-1', netns[1]!))).rejects.toThrow(/the proxy refused add for pod fail-1: failure to start proxy : cannot serve fail-1/);
    await server.removePod('p2');
    expect(await reachable(netns[1]!)).toBe(false);
    client.stop();
    server.close();
    h.close();
    await until('the fds to return to the baseline', () => fdCount() <= baseline, { timeoutMs: 5000 }); // nothing leaked (an fd from an earlier test may have closed meanwhile)
  });

  it("sends the netns the agent holds, not what its path names now: a path reused by another netns changes nothing", async () => {
    // the pod's sandbox netns, held open by the agent; then the runtime reuses its path for a new one
    const name = `${prefix}r`;
    execFileSync('ip', ['netns', 'add', name]);
    const held = openNetns(nsPath(name));
    let reused: bigint | undefined;
    try {
      execFileSync('ip', ['netns', 'del', name]);
      execFileSync('ip', ['netns', 'add', name]);
      reused = netnsCookie(nsPath(name));
      expect(reused).not.toBe(held.cookie);
      const path = join(dir, 'held.sock');
      let ready = 0;
      const heldPod = { uid: 'h1', info: { name: 'h1', namespace: 'default', serviceAccount: 'sa' }, netnsPath: nsPath(name), netns: held };
      const server = new ZdsServer({ path, pods: () => [heldPod], onReady: () => ready++ });
      server.start();
      const got: bigint[] = []; // the netns of each Add, as the proxy received it
      const h: ZdsHandler = {
        connected: () => {},
        add: async (_uid, _info, ns) => {
          got.push(netnsCookieOfFd(ns.fd));
          ns.close();
        },
        del: () => {},
        keep: () => {},
        snapshotSent: () => {},
      };
      const client = new ZdsClient({ path, handler: h });
      client.start();
      cleanups.push(() => {
        client.stop();
        server.close();
      });
      await until('the snapshot to be taken', () => ready === 1, { timeoutMs: 5000 });
      await server.addPod({ ...heldPod, uid: 'h2' });
      expect(got).toEqual([held.cookie, held.cookie]); // the snapshot's Add and the live one
      expect(held.closed).toBe(false); // the agent's to close, not the server's
    } finally {
      held.close();
      execFileSync('ip', ['netns', 'del', name]);
    }
  });

  it('keeps every connected proxy, as during a proxy rollout: each gets the snapshot, Add goes to the newest, Del to all (istio cni/pkg/nodeagent/ztunnelserver.go connMgr, PodAdded, PodDeleted)', async () => {
    const path = join(dir, 'two.sock');
    const pods = [pod('p1', netns[0]!)];
    let ready = 0;
    const server = new ZdsServer({ path, pods: () => pods, onReady: () => ready++ });
    server.start();
    // proxies that open nothing: two real ones would share the listeners (SO_REUSEPORT), tested in test/netns/rollout.test.ts
    const recorder = (): ZdsHandler & { log: string[] } => {
      const log: string[] = [];
      return {
        log,
        connected: () => log.push('connected'),
        add: async (uid, _info, ns) => {
          ns.close();
          log.push(`add ${uid}`);
        },
        del: (uid) => void log.push(`del ${uid}`),
        keep: (uid) => void log.push(`keep ${uid}`),
        snapshotSent: () => void log.push('snapshot'),
      };
    };
    const [old, next] = [recorder(), recorder()];
    const oldClient = new ZdsClient({ path, handler: old });
    const nextClient = new ZdsClient({ path, handler: next });
    cleanups.push(() => {
      oldClient.stop();
      nextClient.stop();
      server.close();
    });
    oldClient.start();
    await until('the old proxy to take its snapshot', () => ready === 1, { timeoutMs: 5000 });
    nextClient.start();
    await until('the new proxy to take its snapshot', () => ready === 2, { timeoutMs: 5000 });
    expect(server.connections).toBe(2);
    expect(oldClient.connected).toBe(true); // not replaced
    await server.addPod(pod('p2', netns[1]!));
    await server.removePod('p1');
    expect(old.log).toEqual(['connected', 'add p1', 'snapshot', 'del p1']);
    expect(next.log).toEqual(['connected', 'add p1', 'snapshot', 'add p2', 'del p1']);
    // the new proxy goes away (it crashed mid-rollout): Adds go to the one before it again
    nextClient.stop();
    await until('the agent to see the new proxy gone', () => server.connections === 1, { timeoutMs: 5000 });
    await server.addPod(pod('p3', netns[0]!));
    expect(old.log.at(-1)).toBe('add p3');
  });

  it('rejects addPod with a clear error while no proxy is connected', async () => {
    const server = new ZdsServer({ path: join(dir, 'b.sock'), pods: () => [] });
    server.start();
    cleanups.push(() => server.close());
    await expect(server.addPod(pod('p1', netns[0]!))).rejects.toMatchObject({ code: 'INPOD_ERR_ZDS', message: expect.stringMatching(/no proxy is connected/) });
  });

  it('works across two processes', async () => {
    const path = join(dir, 'c.sock');
    let ready = false;
    const server = new ZdsServer({ path, pods: () => [pod('p1', netns[0]!)], onReady: () => (ready = true) });
    server.start();
    const child: ChildProcess = spawn(join(__dirname, '..', '..', 'node_modules', '.bin', 'vite-node'), [join(__dirname, 'fixtures', 'proxy.ts'), path], { stdio: ['ignore', 'pipe', 'inherit'] });
    cleanups.push(async () => {
      // the child's listeners must be gone before the next test binds the same ports
      const exited = child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await exited;
      server.close();
    });
    let out = '';
    child.stdout!.on('data', (d) => (out += d));
    await until('the child proxy to take the snapshot', () => ready, { timeoutMs: 20_000 });
    expect(await reachable(netns[0]!)).toBe(true);
    await server.addPod(pod('p2', netns[1]!));
    expect(await reachable(netns[1]!)).toBe(true);
    await until('the child proxy to log add p2', () => out.includes('add p2'), { timeoutMs: 5000 });
    expect(out).toMatch(/add p1\n.*snapshot\n.*add p2/s);
  }, 30_000);

  it('resends the whole snapshot to a restarted proxy, and a reconnecting proxy keeps its pods and their connections', async () => {
    const path = join(dir, 'd.sock');
    let pods = [pod('p1', netns[0]!), pod('p2', netns[1]!)];
    let ready = 0;
    let server = new ZdsServer({ path, pods: () => pods, onReady: () => ready++ });
    server.start();
    const h = new ListenerHandler();
    let client = new ZdsClient({ path, handler: h, minBackoffMs: 20 });
    client.start();
    await until('the snapshot to be taken', () => ready === 1, { timeoutMs: 5000 });
    // proxy restart: a new client gets Add for every pod
    client.stop();
    h.close();
    h.log.length = 0;
    client = new ZdsClient({ path, handler: h, minBackoffMs: 20 });
    client.start();
    await until('the second snapshot to be taken', () => ready === 2, { timeoutMs: 5000 });
    expect(h.log).toEqual(['connected', 'add p1', 'add p2', 'snapshot']);
    await until('p1 to be served', () => h.pods.has('p1'), { timeoutMs: 5000 });
    const listenerFd = h.pods.get('p1')!.listener.fd;
    // a connection through p1's listener, left in its backlog across the agent's restart
    const early = socketInNs(h.pods.get('p1')!.fd.fd, { family: 4, connect: { ip: '127.0.0.1', port: 7777 } });
    // agent restart; p2 was deleted meanwhile
    server.close();
    pods = [pod('p1', netns[0]!)];
    h.log.length = 0;
    server = new ZdsServer({ path, pods: () => pods, onReady: () => ready++ });
    server.start();
    await until('the third snapshot to be taken', () => ready === 3, { timeoutMs: 5000 });
    expect(h.log).toEqual(['connected', 'add p1', 'snapshot', 'del p2']);
    expect(h.pods.get('p1')!.listener.fd).toBe(listenerFd); // the same listener, undisturbed
    // and the connection made before the restart is still there to be accepted
    let accepted: Fd | null = null;
    await until('the connection from before the restart to be accepted', () => (accepted = accept(listenerFd)) !== null, { timeoutMs: 2000 });
    accepted!.close();
    early.close();
    client.stop();
    server.close();
    h.close();
  });
});

describe('ZDS bad input', () => {
  const cleanups: (() => void | Promise<void>)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  it.each([
    ['an oversize (truncated) message', (c: FakeAgentConn) => c.sendRaw(Buffer.alloc(2000, 0x0a)), /over 1024 bytes|truncated/],
    ['garbage', (c: FakeAgentConn) => c.sendRaw(Buffer.from([0x0a, 0x7f, 0x01])), /invalid WorkloadRequest/],
    ['an unknown oneof', (c: FakeAgentConn) => c.sendRaw(Buffer.from([0x22, 0x00])), /no known payload/],
    ['Add without its fd', (c: FakeAgentConn) => c.send({ kind: 'add', uid: 'x', info: { name: 'x', namespace: 'y', serviceAccount: 'z' } }), /add came with 0 fd\(s\), expected 1/],
    ['Add with two fds', (c: FakeAgentConn) => {
      const a = openPath(nsPath(netns[0]!));
      const b = openPath(nsPath(netns[1]!));
      const r = c.send({ kind: 'add', uid: 'x', info: { name: 'x', namespace: 'y', serviceAccount: 'z' } }, [a.fd, b.fd]);
      a.close();
      b.close();
      return r;
    }, /add came with 2 fd\(s\), expected 1|truncated/],
    ['a fd on Del', (c: FakeAgentConn) => {
      const a = openPath(nsPath(netns[0]!));
      const r = c.send({ kind: 'del', uid: 'x' }, [a.fd]);
      a.close();
      return r;
    }, /del came with 1 fd\(s\), expected 0/],
  ])('answers %s with an error Ack, closes stray fds, ends the connection and connects again (ztunnel protocol.rs get_workload_data, workloadmanager.rs process)', async (_name, send, message) => {
    // before, the proxy closed the connection without answering: the agent waited out its 5 s for an Ack
    const path = join(dir, `bad${randomBytes(2).toString('hex')}.sock`);
    const baseline = fdCount();
    const agent = new FakeAgent(path);
    const h = new ListenerHandler();
    const client = new ZdsClient({ path, handler: h, minBackoffMs: 20, maxBackoffMs: 50 });
    client.start();
    const first = await agent.conn(0);
    const ack = await send(first);
    expect(ack).toMatch(/^failure to read message : /);
    expect(ack).toMatch(message);
    await first.hungUp();
    expect(client.errors[0]!.message).toMatch(message);
    const again = await agent.conn(1); // it came back
    expect(await again.send({ kind: 'snapshotSent' })).toBe('');
    client.stop();
    agent.close();
    h.close();
    await until('the fds to return to the baseline', () => fdCount() <= baseline, { timeoutMs: 5000 }); // nothing leaked (an fd from an earlier test may have closed meanwhile)
    expect(h.pods.size).toBe(0);
  });

  it('answers a protocol error of the agent with an error Ack, ends the connection and stops talking ZDS (ztunnel workloadmanager.rs run_internal, app.rs: exit 1)', async () => {
    const path = join(dir, 'proto.sock');
    const agent = new FakeAgent(path);
    const fatal: Error[] = [];
    const h: ZdsHandler = {
      connected: () => {},
      add: async (_uid, _info, ns) => ns.close(),
      del: () => {},
      keep: () => {
        throw new ZdsProtocolError('pod keep received after snapshot');
      },
      snapshotSent: () => {},
    };
    const client = new ZdsClient({ path, handler: h, minBackoffMs: 20, maxBackoffMs: 50, onFatal: (e) => fatal.push(e) });
    cleanups.push(() => {
      client.stop();
      agent.close();
    });
    client.start();
    const c = await agent.conn(0);
    expect(await c.send({ kind: 'snapshotSent' })).toBe('');
    expect(await c.send({ kind: 'keep', uid: 'u1' })).toMatch(/^failure to process message : ZDS protocol error: pod keep received after snapshot/);
    await c.hungUp();
    expect(fatal.map((e) => (e as ZdsProtocolError).code)).toEqual(['INPOD_ERR_ZDS_PROTOCOL']);
    expect(client.stopped).toBe(true); // no reconnect: the process exits (ts/cli/ztunnel.ts onFatal)
    expect(client.connected).toBe(false);
  });

  it.each([
    ['version 2', Buffer.from([0x08, 0x02])],
    ['version 0 written out', Buffer.from([0x08, 0x00])],
  ])('takes a proxy whose hello says %s and sends it the snapshot, as istio-cni handleConn (it logs the version)', async (_name, hello) => {
    // before, the agent closed the connection: that proxy never got a pod
    const path = join(dir, `ver${hello[1]}.sock`);
    let ready = 0;
    const server = new ZdsServer({ path, pods: () => [pod('p1', netns[0]!)], onReady: () => ready++ });
    server.start();
    cleanups.push(() => server.close());
    const sock = unixSocket('seqpacket');
    cleanups.push(() => sock.close());
    unixConnect(sock.fd, path);
    sendFds(sock.fd, hello);
    let got: Received | null = null;
    await until('the snapshot\'s first Add', () => (got = recvFds(sock.fd, 1024, 2)) !== null, { timeoutMs: 5000 });
    const add = got as unknown as Received;
    expect(decodeRequest(add.data)).toMatchObject({ kind: 'add', uid: 'p1' });
    expect(add.fds).toHaveLength(1);
    for (const f of add.fds) f.close();
    sendFds(sock.fd, encodeAck());
    await until('SnapshotSent', () => (got = recvFds(sock.fd, 1024, 2)) !== null, { timeoutMs: 5000 });
    expect(decodeRequest((got as unknown as Received).data)).toEqual({ kind: 'snapshotSent' });
    sendFds(sock.fd, encodeAck());
    await until('the agent to count the snapshot taken', () => ready === 1, { timeoutMs: 5000 });
    expect(server.connections).toBe(1);
  });
});
