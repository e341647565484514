/** `inpod redirect` as a user runs it: a separate process, exit codes and messages. */
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inpod } from '../cli.js';

const run = promisify(execFile);

describe('inpod redirect command line', () => {
  const ns = `cli${randomBytes(2).toString('hex')}`;
  let tmp: string;
  beforeAll(async () => {
    tmp = mkdtempSync(join(tmpdir(), 'inpod-cli-'));
    await run('ip', ['netns', 'add', ns]);
    await run('ip', ['-n', ns, 'addr', 'add', '10.200.254.2/24', 'dev', 'lo']);
  });
  afterAll(async () => {
    await run('ip', ['netns', 'del', ns]).catch(() => {});
    rmSync(tmp, { recursive: true, force: true });
  });

  it('refuses a pin root that is not on bpffs, says how to fix it, and creates nothing', async () => {
    const pinRoot = join(tmp, 'pins');
    const r = await inpod('redirect', 'enroll', '--netns', `/run/netns/${ns}`, '--pin-root', pinRoot, '--state-dir', tmp);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/is not a bpf filesystem.*mount -t bpf bpf \/sys\/fs\/bpf.*\[INPOD_ERR_BPFFS\]/s);
    expect(existsSync(pinRoot)).toBe(false);
  });

  it('names a netns path that does not exist', async () => {
    const r = await inpod('redirect', 'enroll', '--netns', '/run/netns/no-such-pod', '--state-dir', tmp);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/\/run\/netns\/no-such-pod does not exist.*\[INPOD_ERR_NETNS\]/s);
  });

  it('rejects a path that is not a network namespace', async () => {
    const r = await inpod('redirect', 'enroll', '--netns', '/etc/hostname', '--state-dir', tmp);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/\/etc\/hostname is not a network namespace/);
  });

  it('exits 2 with usage on a bad backend, a missing --netns or an unknown flag', async () => {
    expect((await inpod('redirect', 'enroll', '--netns', '/x', '--backend', 'ipvs')).code).toBe(2);
    const missing = await inpod('redirect', 'enroll');
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/needs --netns PATH/);
    expect((await inpod('redirect', 'enroll', '--bogus')).code).toBe(2);
    expect((await inpod('frobnicate')).code).toBe(2);
  });

  it('lists nothing for a pin root with no state', async () => {
    const r = await inpod('redirect', 'list', '--backend', 'ebpf', '--pin-root', `/sys/fs/bpf/${ns}none`, '--state-dir', tmp);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual([]);
  });
});
