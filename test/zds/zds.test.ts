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
import { Fd, listen, recvFds, socketInNs, sendFds, unixBind, unixSocket, accept, watchReadable, openPath, netnsCookie, netnsCookieOfFd } from '../../ts/native/index.js';
import { openNetns } from '../../ts/redirect/netns.js';
import { ZdsServer, type ZdsPod } from '../../ts/zds/server.js';
import { ZdsClient, type ZdsHandler } from '../../ts/zds/client.js';
import { encodeRequest } from '../../ts/zds/messages.js';
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
    await expect(server.addPod(pod('fail-1', netns[1]!))).rejects.toThrow(/the proxy refused add for pod fail-1: cannot serve fail-1/);
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

  it('keeps every connected proxy, as during a proxy rollout: each gets the snapshot, Add goes to the newest, Del to all', async () => {
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
  /** A fake agent that sends `messages` (data + fds) right after the hello, then serves normally. */
  async function fakeAgent(path: string, send: (sock: number) => void): Promise<{ close: () => void; hellos: () => number }> {
    const l = unixSocket('seqpacket');
    unixBind(l.fd, path);
    listen(l.fd, 4);
    let hellos = 0;
    const conns: Fd[] = [];
    const stops: (() => void)[] = [];
    stops.push(watchReadable(l.fd, () => {
      for (let c = accept(l.fd); c; c = accept(l.fd)) {
        conns.push(c);
        const sock = c;
        const stop: () => void = watchReadable(sock.fd, () => {
          const m = (() => {
            try {
              return recvFds(sock.fd, 1024, 2);
            } catch {
              return null;
            }
          })();
          if (m && m.data.length === 2 && m.data[0] === 0x08) {
            hellos++;
            send(sock.fd);
          } else if (!m || m.data.length === 0) {
            stop(); // the client went away: stop watching before EOF keeps it readable
          }
        });
        stops.push(stop);
      }
    }));
    return {
      hellos: () => hellos,
      close: () => {
        for (const s of stops) s();
        for (const c of conns) if (!c.closed) c.close();
        l.close();
        rmSync(path, { force: true });
      },
    };
  }

  it.each([
    ['an oversize (truncated) message', (s: number) => sendFds(s, Buffer.alloc(2000, 0x0a)), /over 1024 bytes|truncated/],
    ['garbage', (s: number) => sendFds(s, Buffer.from([0x0a, 0x7f, 0x01])), /invalid WorkloadRequest/],
    ['an unknown oneof', (s: number) => sendFds(s, Buffer.from([0x22, 0x00])), /no known payload/],
    ['Add without its fd', (s: number) => sendFds(s, encodeRequest({ kind: 'add', uid: 'x', info: { name: 'x', namespace: 'y', serviceAccount: 'z' } })), /add came with 0 fd\(s\), expected 1/],
    ['Add with two fds', (s: number) => {
      const a = openPath(nsPath(netns[0]!));
      const b = openPath(nsPath(netns[1]!));
      sendFds(s, encodeRequest({ kind: 'add', uid: 'x', info: { name: 'x', namespace: 'y', serviceAccount: 'z' } }), [a.fd, b.fd]);
      a.close();
      b.close();
    }, /add came with 2 fd\(s\), expected 1/],
    ['a fd on Del', (s: number) => {
      const a = openPath(nsPath(netns[0]!));
      sendFds(s, encodeRequest({ kind: 'del', uid: 'x' }), [a.fd]);
      a.close();
    }, /del came with 1 fd\(s\), expected 0/],
  ])('resets the connection on %s, closes stray fds, and reconnects', async (_name, send, message) => {
    const path = join(dir, `bad${randomBytes(2).toString('hex')}.sock`);
    const baseline = fdCount();
    const agent = await fakeAgent(path, send);
    const h = new ListenerHandler();
    const client = new ZdsClient({ path, handler: h, minBackoffMs: 20, maxBackoffMs: 50 });
    client.start();
    await until('the client to see the bad input', () => client.errors.length > 0, { timeoutMs: 5000 });
    expect(client.errors[0]!.message).toMatch(message);
    await until('the client to say hello again', () => agent.hellos() >= 2, { timeoutMs: 5000 }); // it came back
    client.stop();
    agent.close();
    h.close();
    await until('the fds to return to the baseline', () => fdCount() <= baseline, { timeoutMs: 5000 }); // nothing leaked (an fd from an earlier test may have closed meanwhile)
    expect(h.pods.size).toBe(0);
  });

  it('refuses a proxy announcing an unknown ZDS version, and still serves the next one', async () => {
    const path = join(dir, 'ver.sock');
    let ready = 0;
    const server = new ZdsServer({ path, pods: () => [], onReady: () => ready++ });
    server.start();
    const h = new ListenerHandler();
    const bad = new ZdsClient({ path, handler: h, version: 7, minBackoffMs: 10_000 });
    bad.start();
    await until('the client to connect', () => h.log.length > 0, { timeoutMs: 5000 });
    // refused: the agent closes the connection instead of sending a snapshot
    await until('the agent to close the connection', () => !bad.connected, { timeoutMs: 5000 });
    expect(ready).toBe(0);
    bad.stop();
    const good = new ZdsClient({ path, handler: h });
    good.start();
    await until('the snapshot to be taken', () => ready === 1, { timeoutMs: 5000 });
    good.stop();
    server.close();
  });
});
