/**
 * The one fd watcher (addon/src/epoll.cc): ZDS's readable watches and the fast path's hang-up
 * watches share its design; every watchReadable in the process shares one thread.
 */
import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { EPOLLHUP, EPOLLIN, EPOLLRDHUP, HupWatcher, recvFds, sendFds, socketPair, watchReadable, type Fd } from '../../ts/native/index.js';
import { until } from '../netns/lab.js';

const threads = (): number => readdirSync('/proc/self/task').length;
const fdCount = (): number => readdirSync('/proc/self/fd').length;

/** Runs test/native/fixtures/keepalive.ts; its output and exit code (null: killed after 15 s). */
function fixture(mode: string): Promise<{ out: string; code: number | null }> {
  const bin = join(__dirname, '..', '..', 'node_modules', '.bin', 'vite-node');
  const child = spawn(bin, [join(__dirname, 'fixtures', 'keepalive.ts'), mode], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const kill = setTimeout(() => child.kill('SIGKILL'), 15_000);
  return new Promise((resolve) => child.on('exit', (code) => {
    clearTimeout(kill);
    resolve({ out, code });
  }));
}

describe('watchReadable', () => {
  it('delivers every message of many sockets, all watched by one thread that ends with the last watch', async () => {
    const baseThreads = threads();
    const baseFds = fdCount();
    const pairs: [Fd, Fd][] = Array.from({ length: 16 }, () => socketPair('seqpacket'));
    const got: string[][] = pairs.map(() => []);
    const stops = pairs.map(([r], i) => watchReadable(r.fd, () => {
      for (let m = recvFds(r.fd, 64, 0); m; m = recvFds(r.fd, 64, 0)) got[i]!.push(m.data.toString());
    }));
    expect(threads()).toBe(baseThreads + 1);
    for (const [i, [, w]] of pairs.entries()) for (const n of [1, 2, 3]) sendFds(w.fd, Buffer.from(`${i}:${n}`));
    await until('all messages', () => got.every((g) => g.length === 3));
    // re-armed after each drain: later messages arrive too
    for (const [i, [, w]] of pairs.entries()) sendFds(w.fd, Buffer.from(`${i}:4`));
    await until('the later messages', () => got.every((g) => g.length === 4));
    expect(got).toEqual(pairs.map((_, i) => [1, 2, 3, 4].map((n) => `${i}:${n}`)));
    for (const s of stops) s();
    for (const [r, w] of pairs) (r.close(), w.close());
    await until('the watcher thread to exit', () => threads() === baseThreads);
    expect(fdCount()).toBe(baseFds);
  });

  it('says nothing more about a socket once stopped, and reports its peer hanging up while watched', async () => {
    const [r1, w1] = socketPair('seqpacket');
    const [r2, w2] = socketPair('seqpacket');
    const events: string[] = [];
    const stop1 = watchReadable(r1.fd, () => {
      events.push('r1');
      recvFds(r1.fd, 64, 0);
    });
    let hup = 0;
    const stop2 = watchReadable(r2.fd, (ev) => {
      if (recvFds(r2.fd, 64, 0)?.data.length) return events.push('r2');
      if (ev & EPOLLHUP) hup = ev;
    });
    stop1();
    stop1(); // idempotent
    sendFds(w1.fd, Buffer.from('after stop'));
    sendFds(w2.fd, Buffer.from('to r2'));
    await until('r2 to be read', () => events.includes('r2'));
    w2.close();
    await until('the hang-up', () => hup !== 0);
    expect(hup & EPOLLIN).toBe(EPOLLIN); // EOF is readable too
    expect(events).toEqual(['r2']);
    stop2();
    for (const f of [r1, w1, r2]) f.close();
  });

  it('keeps the process alive while a socket is watched, and lets it exit once the watch stops', async () => {
    expect(await fixture('readable')).toEqual({ out: 'got x\n', code: 0 });
  });
});

describe('HupWatcher', () => {
  it('reports a peer FIN once, then only a full hang-up after rearmErrors', async () => {
    const [a, b] = socketPair('stream');
    const seen: [number, number][] = [];
    const w = new HupWatcher((token, events) => seen.push([token, events]));
    w.watch(a.fd, 7);
    sendFds(b.fd, Buffer.from('data does not wake it'));
    b.close();
    await until('the FIN', () => seen.length === 1);
    expect(seen[0]![0]).toBe(7);
    expect(seen[0]![1] & EPOLLRDHUP).toBe(EPOLLRDHUP);
    w.rearmErrors(a.fd, 8);
    await until('the hang-up', () => seen.length === 2); // both directions are closed: EPOLLHUP
    expect(seen[1]).toEqual([8, expect.any(Number)]);
    expect(seen[1]![1] & EPOLLHUP).toBe(EPOLLHUP);
    expect(w.unwatch(a.fd)).toBe(true);
    w.close();
    expect(w.unwatch(a.fd)).toBe(false);
    expect(() => w.watch(a.fd, 9)).toThrow(/epoll watcher closed/);
    a.close();
  });

  it('does not keep the process alive', async () => {
    expect(await fixture('hup')).toEqual({ out: 'watching\n', code: 0 });
  });
});
