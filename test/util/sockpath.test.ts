/**
 * A unix socket path passed from one process to the next without a gap (ts/util/sockpath.ts):
 * a client always reaches one of the two, and the older one's close never removes the newer
 * one's socket.
 */
import { spawn } from 'node:child_process';
import net from 'node:net';
import { mkdtempSync, rmSync, writeFileSync, existsSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { SocketPath } from '../../ts/util/sockpath.js';
import { until } from '../netns/lab.js';

const dir = mkdtempSync(join(tmpdir(), 'inpod-sockpath-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A server answering its own name to each connection, taking `path` over. */
async function server(path: string, name: string): Promise<{ sp: SocketPath; srv: net.Server }> {
  const srv = net.createServer((c) => c.end(name));
  const sp = await SocketPath.take(path, 'INPOD_ERR_AGENT', (tmp) => new Promise<void>((r) => srv.listen(tmp, () => r())));
  return { sp, srv };
}
const ask = (path: string): Promise<string> => new Promise((resolve, reject) => {
  let got = '';
  net.connect(path).on('data', (d) => (got += d)).on('end', () => resolve(got)).on('error', reject);
});

describe('SocketPath', () => {
  it('lets a newer server take the path over: clients reach it, the older one no longer owns the path and leaves it at close', async () => {
    const path = join(dir, 'a.sock');
    const old = await server(path, 'old');
    expect(await ask(path)).toBe('old');
    expect(statSync(path).mode & 0o777).toBe(0o600);
    const next = await server(path, 'new');
    expect(await ask(path)).toBe('new');
    expect([old.sp.owned, next.sp.owned]).toEqual([false, true]);
    old.sp.release();
    await new Promise((r) => old.srv.close(r)); // Node removes the name it bound: the temporary one, gone already
    expect(await ask(path)).toBe('new');
    next.sp.release();
    await new Promise((r) => next.srv.close(r));
    expect(existsSync(path)).toBe(false);
  });

  it('never leaves the path naming nothing while it is taken over (a client connecting all along, in another process, always gets an answer)', async () => {
    const path = join(dir, 'b.sock');
    const servers = [await server(path, 's0')];
    // connects in a loop until told to stop, then prints what it got
    const client = spawn(process.execPath, ['-e', `
      const net = require('net');
      const out = { answers: {}, failures: {} };
      let stop = false;
      process.on('SIGTERM', () => (stop = true));
      console.log('running');
      (async () => {
        while (!stop) {
          await new Promise((done) => {
            let got = '';
            net.connect(${JSON.stringify(path)}).on('data', (d) => (got += d))
              .on('end', () => { out.answers[got] = (out.answers[got] || 0) + 1; done(); })
              .on('error', (e) => { out.failures[e.code] = (out.failures[e.code] || 0) + 1; done(); });
          });
        }
        console.log(JSON.stringify(out));
      })();`], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    client.stdout!.on('data', (d) => (out += d));
    await until('the client to run', () => out.startsWith('running'), { timeoutMs: 5000 });
    // each server keeps listening: a connection made to it just before it was replaced is still
    // answered (an agent that hands over keeps its listener too: ts/agent/cniserver.ts handOver)
    for (let i = 1; i <= 30; i++) {
      servers.push(await server(path, `s${i}`));
      await until(`the client to reach s${i}`, () => ask(path).then((a) => a === `s${i}`), { timeoutMs: 5000 });
    }
    client.kill('SIGTERM');
    await new Promise((r) => client.once('exit', r));
    const seen = JSON.parse(out.slice('running'.length)) as { answers: Record<string, number>; failures: Record<string, number> };
    expect(seen.failures).toEqual({});
    expect(Object.keys(seen.answers).length).toBeGreaterThan(1);
    for (const s of servers) s.srv.close();
  });

  it('refuses to replace a file that is not a socket', async () => {
    const path = join(dir, 'c.sock');
    writeFileSync(path, 'not a socket');
    await expect(server(path, 'x')).rejects.toMatchObject({ code: 'INPOD_ERR_AGENT', message: expect.stringMatching(/exists and is not a socket/) });
  });
});
