/**
 * The lease that makes one agent active per node (ts/agent/handover.ts): a second agent gets it
 * only after the first has finished its work and handed over; a holder that dies frees it.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { AgentLease, leaseName } from '../../ts/agent/handover.js';
import { until } from '../netns/lab.js';

const log = pino({ level: 'silent' });

/** Is someone listening on the lease name? (A connection is also a request to hand over; the holders here ignore repeats.) */
const held = (n: string): Promise<boolean> => new Promise((resolve) => {
  const s = net.connect(n);
  s.once('connect', () => (s.destroy(), resolve(true)));
  s.once('error', () => resolve(false));
});
const name = (): string => leaseName(`/tmp/inpod-lease-test-${randomBytes(4).toString('hex')}`);

describe('agent lease', () => {
  it('is handed to a newer agent only once the holder has finished handing over', async () => {
    const n = name();
    const events: string[] = [];
    let finish!: () => void;
    const first = await AgentLease.acquire(n, {
      log,
      handOver: () => {
        events.push('asked');
        return new Promise<void>((r) => (finish = r));
      },
    });
    const second = AgentLease.acquire(n, { log, handOver: async () => {} }).then((l) => {
      events.push('second holds it');
      return l;
    });
    await until('the holder to be asked', () => events.includes('asked'), { timeoutMs: 5000 });
    expect(await held(n)).toBe(true); // still the first one's while it hands over
    expect(events).toEqual(['asked']);
    events.push('handed over');
    finish();
    (await second).release();
    expect(events).toEqual(['asked', 'handed over', 'second holds it']);
    first.release();
  });

  it('is free at once when its holder dies without handing over (crash, SIGKILL)', async () => {
    const n = name();
    const holder = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(n)}, () => console.log('held'))`], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise((r) => holder.stdout!.once('data', r));
    let took = false;
    const taking = AgentLease.acquire(n, { log, handOver: async () => {} }).then((l) => ((took = true), l));
    expect(await held(n)).toBe(true); // the other process has it (and never answers the request)
    expect(took).toBe(false);
    holder.kill('SIGKILL');
    const lease = await taking;
    lease.release();
    expect(await held(n)).toBe(false);
  });

  it('gives up waiting when its agent is stopped first (SIGTERM before the hand-over), and the holder keeps the lease', async () => {
    const n = name();
    let finish!: () => void;
    const first = await AgentLease.acquire(n, { log, handOver: () => new Promise<void>((r) => (finish = r)) });
    const stopping = new AbortController();
    const waiting = AgentLease.acquire(n, { log, handOver: async () => {}, signal: stopping.signal });
    await until('the holder to be asked', () => finish !== undefined, { timeoutMs: 5000 });
    stopping.abort();
    await expect(waiting).rejects.toMatchObject({ code: 'INPOD_ERR_AGENT', message: expect.stringMatching(/stopped while waiting/) });
    finish(); // the holder goes on handing over (its own choice) and frees the name
    await until('the name to be free', async () => !(await held(n)), { timeoutMs: 5000 });
    first.release();
  });

  it('names the lease after the state directory, so agents of different state directories do not meet', () => {
    expect(leaseName('/var/run/inpod')).toBe(leaseName('/var/run/inpod/'));
    expect(leaseName('/var/run/inpod')).not.toBe(leaseName('/tmp/other'));
    expect(leaseName('/var/run/inpod').startsWith('\0')).toBe(true);
  });
});
