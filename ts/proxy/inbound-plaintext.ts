/**
 * The inbound plaintext listener (15006, ztunnel's src/proxy/inbound_passthrough.rs): a
 * connection from a client outside the mesh, captured on its way to the pod's app. And `admit`,
 * the inbound half every path into the app shares (this listener, HBONE on 15008 in inbound.ts,
 * same-node delivery): this pod's policy decides, then the app is reached from inside the pod,
 * transparently from the client's IP.
 */
import type net from 'node:net';
import { MARKS } from '../istio.js';
import { MeshError } from '../util/errors.js';
import type { ConnContext } from './hooks.js';
import { capturedDestination, podRef, type PodInputs } from './inputs.js';
import { ConnectionResult } from './result.js';
import type { Addr } from './route.js';
import { connectIn, upstreamFd } from './sockets.js';
import { socketAddr } from '../util/sockaddr.js';

/** Serves one connection accepted on 15006 (paused: the fast path may take it unread). */
export async function inboundPlaintext(pi: PodInputs, down: net.Socket): Promise<void> {
  const started = Date.now();
  down.on('error', () => {});
  const captured = capturedDestination(pi, down, 'inbound');
  if (!captured) return;
  const { src, dst } = captured;
  const conn = new ConnectionResult(pi.observer, { direction: 'inbound', transport: 'plaintext', src, dst: { ip: dst.ip, port: dst.port, identity: pi.uri }, pod: podRef(pi) }, started);
  let up: net.Socket;
  try {
    up = await admit(pi, conn.ctx, dst);
  } catch (e) {
    conn.failed(e as Error);
    down.resetAndDestroy();
    return;
  }
  pi.fastPath.relay(down, up, (r) => conn.relayed(r));
}

/**
 * Admits `ctx` (already reported opened) to the app at `app`: this pod's authorizer decides, then
 * the app is connected from inside this pod from the client's IP (IP_TRANSPARENT, the proxy's
 * mark). The socket comes back paused (never read: the fast path may take it; a userspace relay
 * resumes it). Throws MeshError INPOD_ERR_POLICY_DENIED (the message is the policy's reason) or
 * INPOD_ERR_UPSTREAM_CONNECT (the app cannot be reached). While the app's socket is open the
 * connection is held by the policy watcher: a policy update that denies it closes that socket,
 * and the relay then resets the client's side too.
 */
export async function admit(pi: PodInputs, ctx: ConnContext, app: Addr): Promise<net.Socket> {
  authorized(pi, ctx);
  let up: net.Socket;
  try {
    up = await connectIn(pi.netns.fd, app, { mark: MARKS.proxy, transparentFrom: ctx.src.ip, paused: true });
  } catch (e) {
    throw unreachable(app, e);
  }
  if (pi.policyWatch) up.once('close', pi.policyWatch.admitted({ ctx, log: pi.log, close: () => up.resetAndDestroy() }));
  return up;
}

/** This pod's policy lets `ctx` in, or MeshError INPOD_ERR_POLICY_DENIED (the message is the policy's reason). */
function authorized(pi: PodInputs, ctx: ConnContext): void {
  const d = pi.authorizer.authorize(ctx);
  if (!d.allow) throw new MeshError('INPOD_ERR_POLICY_DENIED', d.reason ?? 'denied by policy');
}

/**
 * `admit` for the native byte path: the same decision, and the app's socket made inside this pod
 * from the client's IP with its connect() started, for the engine to own (it answers the CONNECT
 * once the app has accepted, or 503). Throws what `admit` throws. The caller holds the connection
 * in the policy watcher (the engine resets it) and counts the socket as the proxy's upstream.
 */
export function admitFd(pi: PodInputs, ctx: ConnContext, app: Addr): number {
  authorized(pi, ctx);
  try {
    return upstreamFd(pi.netns.fd, app, { mark: MARKS.proxy, transparentFrom: ctx.src.ip });
  } catch (e) {
    throw unreachable(app, e);
  }
}

/** MeshError INPOD_ERR_UPSTREAM_CONNECT: the app at `app` could not be reached (`e` says why). */
export function unreachable(app: Addr, e: unknown): MeshError {
  return new MeshError('INPOD_ERR_UPSTREAM_CONNECT', `app ${socketAddr(app)} unreachable: ${(e as Error).message}`, { cause: e });
}
