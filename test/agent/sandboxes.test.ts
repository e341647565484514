import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SandboxStore, delTargets, newest, type Sandbox } from '../../ts/agent/sandboxes.js';
import { fakeNetns } from './fakes.js';

// Netns "paths" are plain files here; their cookie is what `cookies` says (a missing entry: not a netns).
describe('pod sandbox records', () => {
  let dir: string;
  let cookies: Map<string, string>;
  const path = (n: string): string => join(dir, n);
  const store = (boot = 'boot-1'): SandboxStore =>
    new SandboxStore(join(dir, 'pods'), {
      bootId: boot,
      open: (p) => {
        const c = cookies.get(p);
        if (c === undefined) throw new Error('not a netns');
        return fakeNetns(p, BigInt(c));
      },
    });
  const netns = (n: string, cookie: string): string => {
    writeFileSync(path(n), '');
    cookies.set(path(n), cookie);
    return path(n);
  };

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'inpod-sb-'));
    cookies = new Map();
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('keeps one record per (uid, netns): a second sandbox of a pod is the newest, and both survive a restart', () => {
    const s = store();
    s.add({ uid: 'u1', namespace: 'shop', name: 'web', netns: netns('a', '11'), cookie: '11', containerId: 'c1' });
    s.add({ uid: 'u1', namespace: 'shop', name: 'web', netns: netns('b', '12'), cookie: '12', containerId: 'c2' });
    const again = store();
    again.load();
    expect(again.ofPod('u1').map((x) => x.containerId)).toEqual(['c1', 'c2']);
    expect(newest(again.ofPod('u1'))!.cookie).toBe('12');
    // the next ADD after a restart is still the newest
    const c = again.add({ uid: 'u1', namespace: 'shop', name: 'web', netns: path('a'), cookie: '11', containerId: 'c1' });
    expect(newest(again.ofPod('u1'))).toBe(c);
    expect(again.ofPod('u1')).toHaveLength(2);
  });

  it('migrates a record of the format before sandboxes (one per uid, no cookie) with the cookie its netns has now', () => {
    mkdirSync(join(dir, 'pods'));
    writeFileSync(join(dir, 'pods', 'u1.json'), JSON.stringify({ uid: 'u1', namespace: 'shop', name: 'web', netns: netns('a', '21') }));
    writeFileSync(join(dir, 'pods', 'u2.json'), JSON.stringify({ uid: 'u2', namespace: 'shop', name: 'gone', netns: path('nothing-here') }));
    const s = store();
    s.load();
    expect(s.all()).toMatchObject([{ uid: 'u1', namespace: 'shop', name: 'web', netns: path('a'), cookie: '21', containerId: '', boot: 'boot-1' }]);
    expect(readdirSync(join(dir, 'pods'))).toEqual(['u1@21.json']); // the old files are gone
    const again = store();
    again.load();
    expect(again.all()).toEqual(s.all());
  });

  it('drops records of another boot (cookies name nothing after a reboot) and unreadable ones', () => {
    store('boot-0').add({ uid: 'u1', namespace: 'shop', name: 'web', netns: netns('a', '1'), cookie: '1', containerId: 'c1' });
    writeFileSync(join(dir, 'pods', 'junk.json'), '{not json');
    const s = store('boot-1');
    s.load();
    expect(s.all()).toEqual([]);
    expect(readdirSync(join(dir, 'pods'))).toEqual([]);
  });

  it('tells a live sandbox from one whose path is gone or names another netns now', () => {
    const s = store();
    const a = s.add({ uid: 'u1', namespace: 'shop', name: 'web', netns: netns('a', '31'), cookie: '31', containerId: 'c1' });
    expect(s.alive(a)).toBe(true);
    cookies.set(path('a'), '99'); // the path was reused by another netns
    expect(s.alive(a)).toBe(false);
    rmSync(path('a'));
    expect(s.alive(a)).toBe(false);
    expect(s.cookieAt(path('a'))).toBeNull();
    s.forget(a);
    expect(existsSync(join(dir, 'pods', 'u1@31.json'))).toBe(false);
  });
});

describe('which sandboxes a CNI DEL names', () => {
  const sb = (cookie: string, containerId: string, seq: number): Sandbox => ({ uid: 'u1', namespace: 'shop', name: 'web', netns: `/run/netns/${containerId}`, cookie, containerId, seq, boot: 'b' });
  const old = sb('1', 'c-old', 1);
  const cur = sb('2', 'c-new', 2);
  const aliveAll = (): boolean => true;

  it('with a netns: exactly the sandbox of that netns, whatever the container id says', () => {
    expect(delTargets([old, cur], { containerId: 'c-new', netns: '/run/netns/c-old' }, '1', aliveAll)).toEqual([old]);
    expect(delTargets([old, cur], { containerId: 'c-old', netns: '/run/netns/c-new' }, '2', aliveAll)).toEqual([cur]);
  });

  it('with a netns the agent never saw: nothing', () => {
    expect(delTargets([old, cur], { containerId: 'c-x', netns: '/run/netns/x' }, '7', aliveAll)).toEqual([]);
  });

  it('without a netns: the sandbox of that container id, and any whose netns is gone; never another live one', () => {
    expect(delTargets([old, cur], { containerId: 'c-old', netns: '' }, null, aliveAll)).toEqual([old]);
    expect(delTargets([old, cur], { containerId: '', netns: '' }, null, aliveAll)).toEqual([]);
    expect(delTargets([old, cur], { containerId: 'c-x', netns: '' }, null, (s) => s !== old)).toEqual([old]);
  });

  it('a migrated record (no container id) goes with a DEL that names its netns', () => {
    const migrated = { ...old, containerId: '' };
    expect(delTargets([migrated, cur], { containerId: 'c-anything', netns: migrated.netns }, '1', aliveAll)).toEqual([migrated]);
  });

  it('the newest sandbox is the one with the highest ADD order', () => {
    expect(newest([cur, old])).toBe(cur);
    expect(newest([])).toBeUndefined();
  });
});
