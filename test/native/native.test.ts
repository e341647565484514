import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import {
  SyscallError,
} from '../../ts/util/errors.js';
import {
  accept,
  getMark,
  netnsCookie,
  origDst,
  recvFds,
  sendFds,
  socketIn,
  socketPair,
  sockName,
  statfsType,
  NSFS_MAGIC,
  unixBind,
  unixConnect,
  unixSocket,
  listen,
  withFd,
  addon,
  netnsAddrsOfFd,
  netnsLocalRouteOfFd,
  netnsWriteOfFd,
  openPath,
  socketInNs,
  type Fd,
} from '../../ts/native/index.js';

const ns = `nat${randomBytes(2).toString('hex')}`;
const nsPath = `/run/netns/${ns}`;

beforeAll(() => {
  execFileSync('ip', ['netns', 'add', ns]);
  execFileSync('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
});
afterAll(() => {
  execFileSync('ip', ['netns', 'del', ns]);
});

function openFdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

describe('native addon', () => {
  it('gives each netns its own cookie, the same on every call', () => {
    const a = netnsCookie(nsPath);
    expect(a).toBe(netnsCookie(nsPath));
    expect(a).not.toBe(netnsCookie('/proc/self/ns/net'));
    expect(statfsType(nsPath)).toBe(NSFS_MAGIC);
  });

  it('opens a listener inside another netns and leaves the caller in its own', () => {
    const before = readlinkSync('/proc/thread-self/ns/net');
    const l = socketIn(nsPath, { family: 4, bind: { ip: '127.0.0.1', port: 0 }, listen: 8, mark: 0x539 });
    expect(readlinkSync('/proc/thread-self/ns/net')).toBe(before);
    const { port } = sockName(l.fd);
    // reachable from inside that netns only
    const out = execFileSync('nsenter', [`--net=${nsPath}`, 'bash', '-c', `exec 3<>/dev/tcp/127.0.0.1/${port} && echo connected`]).toString();
    expect(out.trim()).toBe('connected');
    expect(getMark(l.fd)).toBe(0x539);
    const c = accept(l.fd);
    expect(c).not.toBeNull();
    c!.close();
    l.close();
  });

  it('reports failures with the errno code and the syscall', () => {
    const a = socketIn(nsPath, { family: 4, bind: { ip: '127.0.0.1', port: 0 }, listen: 1 });
    const { port } = sockName(a.fd);
    let err: unknown;
    try {
      socketIn(nsPath, { family: 4, bind: { ip: '127.0.0.1', port } });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(SyscallError);
    expect(err).toMatchObject({ code: 'EADDRINUSE', syscall: 'bind', errno: 98 });
    // SO_ORIGINAL_DST on a socket nothing redirected
    expect(() => origDst(a.fd)).toThrow(expect.objectContaining({ code: 'ENOENT', syscall: 'getsockopt(SO_ORIGINAL_DST)' }));
    a.close();
    expect(() => a.fd).toThrow(/closed/);
  });

  it('passes a netns fd over SOCK_SEQPACKET with SCM_RIGHTS and the receiver can use it', () => {
    const [s, r] = socketPair('seqpacket');
    const fdsBefore = openFdCount();
    withFd(nsPath, (nsfd) => sendFds(s.fd, Buffer.from('add'), [nsfd]));
    const m = recvFds(r.fd, 1024, 4);
    expect(m).not.toBeNull();
    expect(m!.data.toString()).toBe('add');
    expect(m!.fds).toHaveLength(1);
    expect(m!.truncated).toBe(false);
    // the received fd names the same namespace
    const cookie = addon().netnsCookie(m!.fds[0]!.fd);
    expect(cookie).toBe(netnsCookie(nsPath));
    m!.fds[0]!.close();
    expect(openFdCount()).toBe(fdsBefore);
    expect(recvFds(r.fd, 1024, 4)).toBeNull(); // nothing more: EAGAIN is not an error
    s.close();
    r.close();
  });

  it('flags a message larger than the buffer as truncated, keeping message boundaries', () => {
    const [s, r] = socketPair('seqpacket');
    sendFds(s.fd, Buffer.alloc(2000, 1));
    sendFds(s.fd, Buffer.from('next'));
    const m = recvFds(r.fd, 1024, 1)!;
    expect(m.truncated).toBe(true);
    expect(recvFds(r.fd, 1024, 1)!.data.toString()).toBe('next');
    s.close();
    r.close();
  });

  it('connects unix sockets by path, SOCK_STREAM too', () => {
    const path = `/tmp/${ns}.sock`;
    const l = unixSocket('stream');
    unixBind(l.fd, path);
    listen(l.fd, 4);
    const c = unixSocket('stream');
    unixConnect(c.fd, path);
    const a = accept(l.fd)!;
    withFd(nsPath, (nsfd) => sendFds(c.fd, Buffer.from('x'), [nsfd]));
    const m = recvFds(a.fd, 16, 2)!;
    expect(m.fds).toHaveLength(1);
    m.fds[0]!.close();
    for (const f of [l, c, a]) f.close();
    execFileSync('rm', ['-f', path]);
  });
});

describe('entering a pod netns (NetnsGuard)', () => {
  /** The netns this (JavaScript) thread is in. */
  const here = (): string => readlinkSync('/proc/thread-self/ns/net');
  const inNs = (cmd: string[]): string => execFileSync('nsenter', [`--net=${nsPath}`, ...cmd]).toString();
  let home: string;
  let notNetns: Fd;
  beforeAll(() => {
    home = here();
    notNetns = openPath('/dev/null'); // setns refuses it: EINVAL
  });
  afterAll(() => notNetns.close());

  /** Runs `fn`, returns its error (or null); the thread must be home either way. */
  function comesBack(fn: () => unknown): unknown {
    let err: unknown = null;
    try {
      fn();
    } catch (e) {
      err = e;
    }
    expect(here()).toBe(home);
    return err;
  }

  it('comes back from socketIn after success, a failed bind, a bad address and a refused setns', () => {
    const l = socketIn(nsPath, { family: 4, bind: { ip: '127.0.0.1', port: 0 }, listen: 1 });
    expect(here()).toBe(home);
    const { port } = sockName(l.fd);
    expect(comesBack(() => socketIn(nsPath, { family: 4, bind: { ip: '127.0.0.1', port } }))).toMatchObject({ code: 'EADDRINUSE', syscall: 'bind' });
    expect(comesBack(() => socketIn(nsPath, { family: 4, connect: { ip: 'not-an-ip', port: 1 } }))).toMatchObject({ code: 'EINVAL', syscall: 'inet_pton' });
    expect(comesBack(() => socketInNs(notNetns.fd, { family: 4, listen: 1 }))).toMatchObject({ code: 'EINVAL', syscall: 'setns' });
    l.close();
  });

  it('reads the socket spec before entering the netns: JavaScript it triggers runs in the caller\'s netns', () => {
    const seen: string[] = [];
    const spec = { family: 4 as const, listen: 1 };
    Object.defineProperty(spec, 'bind', { enumerable: true, get: () => (seen.push(here()), { ip: '127.0.0.1', port: 0 }) });
    const l = socketIn(nsPath, spec);
    expect(seen).toEqual([home]);
    // and the socket itself was made in the pod's netns
    const { port } = sockName(l.fd);
    expect(inNs(['bash', '-c', `exec 3<>/dev/tcp/127.0.0.1/${port} && echo connected`]).trim()).toBe('connected');
    l.close();
  });

  it('comes back from netnsCookie and netnsAddrs, also when setns is refused', () => {
    expect(comesBack(() => netnsCookie(nsPath))).toBeNull();
    expect(comesBack(() => expect(withFd(nsPath, (fd) => netnsAddrsOfFd(fd))).toEqual({ ipv4: [], ipv6: [] }))).toBeNull();
    expect(comesBack(() => addon().netnsCookie(notNetns.fd))).toBeNull(); // a status, not a throw
    expect(addon().netnsCookie(notNetns.fd)).toEqual({ errno: 22, syscall: 'setns' });
    expect(addon().netnsAddrs(notNetns.fd)).toEqual({ errno: 22, syscall: 'setns' });
    expect(here()).toBe(home);
  });

  it('writes a sysctl of the pod netns only, and comes back when the file is missing', () => {
    const file = '/proc/sys/net/ipv4/fwmark_reflect';
    const hostBefore = readFileSync(file, 'utf8');
    expect(comesBack(() => withFd(nsPath, (fd) => netnsWriteOfFd(fd, file, hostBefore.trim() === '1' ? '0' : '1')))).toBeNull();
    expect(inNs(['cat', file]).trim()).toBe(hostBefore.trim() === '1' ? '0' : '1');
    expect(readFileSync(file, 'utf8')).toBe(hostBefore);
    expect(comesBack(() => withFd(nsPath, (fd) => netnsWriteOfFd(fd, '/proc/sys/net/ipv4/no_such_sysctl', '1')))).toMatchObject({ code: 'ENOENT', syscall: 'open' });
    expect(addon().netnsWrite(notNetns.fd, file, '1')).toEqual({ errno: 22, syscall: 'setns' });
    expect(here()).toBe(home);
  });

  it('adds and removes the fwmark rule inside the pod netns only', () => {
    const mark = 0x7e57;
    const rule = /fwmark 0x7e57 lookup 177/;
    expect(comesBack(() => withFd(nsPath, (fd) => netnsLocalRouteOfFd(fd, mark, 177, 32111, true)))).toBeNull();
    expect(inNs(['ip', 'rule', 'show'])).toMatch(rule);
    expect(inNs(['ip', 'route', 'show', 'table', '177'])).toMatch(/local default dev lo/);
    expect(execFileSync('ip', ['rule', 'show']).toString()).not.toMatch(rule);
    expect(comesBack(() => withFd(nsPath, (fd) => netnsLocalRouteOfFd(fd, mark, 177, 32111, false)))).toBeNull();
    expect(inNs(['ip', 'rule', 'show'])).not.toMatch(rule);
    expect(addon().netnsLocalRoute(notNetns.fd, mark, 177, 32111, true, 2)).toEqual({ errno: 22, syscall: 'setns' });
    expect(here()).toBe(home);
  });
});
