/**
 * inpod-latency, the bench's fixed-rate client, against an HTTP server on loopback whose answer
 * time this test sets: the latency it reports is the server's answer time (send to last byte), it
 * sends at its rate whatever the answers take, and it says when the server cannot keep up
 * ("late") instead of quietly slowing down. No timing of this machine is asserted: the server's
 * delay is the test's own, and only bounds far from it are checked.
 */
import { execFile } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LATENCY } from '../../ts/bench/env.js';
import { parseLatency } from '../../ts/bench/loads.js';

const run = promisify(execFile);

describe('inpod-latency', () => {
  let server: Server;
  let port: number;
  let delayMs = 0;
  let served = 0;
  const peers = new Set<string>();

  beforeAll(async () => {
    server = createServer((req, res) => {
      served++;
      peers.add(`${req.socket.remoteAddress}:${req.socket.remotePort}`);
      setTimeout(() => res.end('x'.repeat(1024)), delayMs);
    });
    await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(() => new Promise<void>((ok) => server.close(() => ok())));

  const latency = async (seconds: number, rate: number, conns: number) =>
    parseLatency((await run(LATENCY, ['127.0.0.1', String(port), String(seconds), String(rate), String(conns), '/1k'])).stdout);

  it('reports the time from send to the whole answer, over kept-alive connections', async () => {
    delayMs = 20;
    served = 0;
    peers.clear();
    const r = await latency(1, 50, 4);
    expect(r.requests).toBe(50);
    expect(served).toBe(50);
    expect(r.errors).toBe(0);
    expect(r.late).toBe(0); // 4 connections at 50/s leave 80 ms between requests on each
    // every answer took the server's 20 ms, and no answer took 10 times that
    expect(r.p50).toBeGreaterThanOrEqual(20);
    expect(r.p50).toBeLessThan(200);
    expect(peers.size).toBe(4); // kept alive: one TCP connection each, not one per request
  });

  it('keeps its rate when the server is slower than it and counts the requests sent late', async () => {
    delayMs = 50;
    const r = await latency(0.5, 100, 1); // 1 connection, one every 10 ms, each answered in 50 ms
    expect(r.requests).toBe(50); // all sent (queued behind the connection) and answered
    expect(r.late).toBeGreaterThan(25);
    expect(r.p50).toBeGreaterThanOrEqual(50);
  });

  it('fails with the cause when nothing listens', async () => {
    const closed = createServer();
    await new Promise<void>((ok) => closed.listen(0, '127.0.0.1', ok));
    const free = (closed.address() as AddressInfo).port;
    await new Promise<void>((ok) => closed.close(() => ok()));
    await expect(run(LATENCY, ['127.0.0.1', String(free), '1', '10', '1'])).rejects.toThrow(/Connection refused/);
  });
});
