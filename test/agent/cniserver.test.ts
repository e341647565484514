/**
 * The agent's end of the plugin during an agent rollout (ts/agent/cniserver.ts): the newer
 * agent takes the socket path over, and a request that still reaches the older one is passed
 * on to the newer one instead of being lost.
 */
import http from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CniServer } from '../../ts/agent/cniserver.js';
import type { PodEvent } from '../../ts/cni/plugin.js';
import { until } from '../netns/lab.js';

const dir = mkdtempSync(join(tmpdir(), 'inpod-cniserver-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** An agent's CNI server that answers which agent it is. */
const agentServer = (path: string, who: string, seen: string[]): CniServer => new CniServer(path, {
  add: async (ev: PodEvent) => {
    seen.push(`${who} add ${ev.podName}`);
    return { enrolled: true, reason: who };
  },
  del: async () => {},
});

describe('CNI server, agent rollout', () => {
  it('passes a request that reached the old agent after it handed over on to the new one', async () => {
    const path = join(dir, 'plugin.sock');
    const seen: string[] = [];
    const old = agentServer(path, 'old', seen);
    await old.start();
    // a plugin connects to the old agent and is slow to send its event
    const body = JSON.stringify({ podName: 'slow', podNamespace: 'mesh', podUid: 'u1', netns: '/x', containerId: 'c' });
    let answer = '';
    const done = new Promise<number>((resolve, reject) => {
      const req = http.request({ socketPath: path, path: '/cmd/add', method: 'POST', headers: { 'content-length': Buffer.byteLength(body) } }, (res) => {
        res.on('data', (d) => (answer += d));
        res.on('end', () => resolve(res.statusCode ?? 0));
      });
      req.on('error', reject);
      req.write(body.slice(0, 5));
      // the new agent takes the path, the old one hands over, then the rest of the event arrives
      void (async () => {
        const next = agentServer(path, 'new', seen);
        await next.start();
        await old.handOver();
        req.end(body.slice(5));
        await until('the request to be answered', () => answer !== '', { timeoutMs: 5000 });
        await old.close();
        await next.close();
      })().catch(reject);
    });
    expect(await done).toBe(200);
    expect(JSON.parse(answer)).toEqual({ enrolled: true, reason: 'new' });
    expect(seen).toEqual(['new add slow']);
  });

  it('answers what its own handlers took before the hand-over itself, and handOver() waits for it', async () => {
    const path = join(dir, 'plugin2.sock');
    let release!: () => void;
    const old = new CniServer(path, {
      add: () => new Promise((r) => (release = () => r({ enrolled: true, reason: 'old' }))),
      del: async () => {},
    });
    await old.start();
    const body = JSON.stringify({ podName: 'p', podNamespace: 'mesh', podUid: 'u2', netns: '/x', containerId: 'c' });
    const answered = new Promise<string>((resolve, reject) => {
      let a = '';
      http.request({ socketPath: path, path: '/cmd/add', method: 'POST', headers: { 'content-length': Buffer.byteLength(body) } }, (res) => {
        res.on('data', (d) => (a += d));
        res.on('end', () => resolve(a));
      }).on('error', reject).end(body);
    });
    await until('the handler to have the request', () => release !== undefined, { timeoutMs: 5000 });
    let handedOver = false;
    const handing = old.handOver().then(() => (handedOver = true));
    await new Promise((r) => setImmediate(r));
    expect(handedOver).toBe(false); // the request it took is not answered yet
    release();
    await handing;
    expect(JSON.parse(await answered)).toEqual({ enrolled: true, reason: 'old' });
    await old.close();
  });
});
