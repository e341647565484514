/** test/setup/fetch.ts: a test's requests never ride a kept-alive connection the server may be closing. */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

describe("the tests' fetch", () => {
  const seen: { port: number; connection?: string; a?: string; b?: string }[] = [];
  const server = http.createServer((req, res) => {
    const h = req.headers as Record<string, string | undefined>;
    seen.push({ port: req.socket.remotePort!, connection: h.connection, a: h['x-a'], b: h['x-b'] });
    res.end('ok');
  });
  beforeAll(() => new Promise<void>((r) => server.listen(0, '127.0.0.1', r)));
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  it('opens a connection per request and says so (connection: close), headers of its own kept', async () => {
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
    expect(await (await fetch(url)).text()).toBe('ok');
    expect(await (await fetch(url, { headers: { 'x-a': '1' } })).text()).toBe('ok');
    expect(await (await fetch(new Request(url, { headers: { 'x-b': '2' } }))).text()).toBe('ok');
    expect(seen.map((s) => [s.connection, s.a, s.b])).toEqual([['close', undefined, undefined], ['close', '1', undefined], ['close', undefined, '2']]);
    expect(new Set(seen.map((s) => s.port)).size).toBe(3);
  });
});
