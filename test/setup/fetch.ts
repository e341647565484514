/**
 * Every test's fetch opens a connection of its own (`connection: close`). With keep-alive, fetch
 * (undici) reuses an idle connection until one second before the server's keep-alive timeout
 * (Node's servers: 5 s); a test worker stalled past that second on a busy CI host sends its
 * request on a connection the server is just closing, and fetch fails with "other side closed"
 * (test/security/input.test.ts did so in CI, polling the proxy's /state). A browser or
 * Prometheus retries such a request; fetch does not, and a test must not depend on the timing.
 */
const fetchOnce = globalThis.fetch;
globalThis.fetch = (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
  const headers = new Headers(init?.headers ?? (input instanceof Request ? input.headers : undefined));
  if (!headers.has('connection')) headers.set('connection', 'close');
  return fetchOnce(input, { ...init, headers });
};
