/**
 * Same-node delivery (`--same-node direct`): the destination of an HBONE route is a pod this
 * proxy serves too, so both identities are known here and verified as HBONE would verify them.
 * The destination's inbound policy is checked with the client's identity, the app is reached
 * from inside the destination pod (transparently, from the client's IP, as the HBONE inbound
 * does), and the two sockets are spliced: no TLS, no HTTP/2, no byte on the veths. Both sides
 * report, as with HBONE. ztunnel has no such path; see ARCHITECTURE.md for why it is off by default.
 */
import type net from 'node:net';
import { admit } from './inbound-plaintext.js';
import { podRef, type PodInputs } from './inputs.js';
import { ConnectionResult } from './result.js';
import type { Addr } from './route.js';

/**
 * Delivers `down` (accepted on the client pod's 15001, `out` already reported opened) to `app`
 * in the pod `dst`. A refusal (the destination's policy, or an app that cannot be reached)
 * resets the client and is reported by both sides.
 */
export async function sameNode(pi: PodInputs, down: net.Socket, out: ConnectionResult, app: Addr, dst: PodInputs): Promise<void> {
  out.ctx.transport = 'local';
  out.ctx.via = undefined; // no tunnel: the app is reached directly
  out.ctx.dst.identity = dst.uri;
  const inbound = new ConnectionResult(dst.observer, {
    direction: 'inbound', transport: 'local', src: { ...out.ctx.src }, dst: { ...app, identity: out.ctx.dst.identity }, pod: podRef(dst), traceId: out.ctx.traceId,
  }, out.started);
  let up: net.Socket;
  try {
    up = await admit(dst, inbound.ctx, app);
  } catch (e) {
    inbound.failed(e as Error);
    out.failed(e as Error);
    down.resetAndDestroy();
    return;
  }
  pi.fastPath.relay(down, up, (r) => {
    inbound.relayed(r);
    out.relayed(r);
  });
}
