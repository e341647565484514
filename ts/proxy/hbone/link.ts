/**
 * What the pool and the listeners need of an HBONE byte path, whichever moves the bytes: Node's
 * tls and http2 in JavaScript (client.ts, server.ts) or the addon's engine (native.ts, which
 * moves them on its own thread once TypeScript has decided). Everything here is decided in
 * TypeScript on both paths: the peer's identity, the route, the policy, what is reported.
 */
import type net from 'node:net';
import type { Identity } from '../../identity/spiffe.js';
import type { Addr } from '../route.js';
import type { RelayCounts } from '../relay.js';
import type { ConnectHeaders } from './headers.js';

export interface HboneSource {
  /** the sandbox being served (one pod's listeners): connections are never shared across sandboxes */
  owner: string;
  nsFd: number;
  identity: Identity;
  /** the source pod's IP: part of the pool key */
  ip: string;
}

export interface HboneRequest {
  target: Addr;
  authority: Addr;
  identities: string[];
}

/** One CONNECT answered 200: bytes flow once it is given the socket of the other side. */
export interface HboneTunnel {
  /** relays the client's socket `down` through the tunnel; `done` once, when both directions are over (aToB: `down` to the tunnel) */
  relay(down: net.Socket, done: (r: RelayCounts) => void): void;
}

/** One client connection to a peer's 15008, the peer's identity verified. */
export interface HboneLink {
  /** the expected identity the peer presented */
  readonly peerIdentity: string;
  /** true once it takes no new stream (closing or closed) */
  readonly closed: boolean;
  /** no new stream; closes once its streams are over (GOAWAY) */
  close(): void;
  /** closes now, with its streams */
  destroy(): void;
  /** `cb` once, when the connection is gone */
  onClose(cb: () => void): void;
  /**
   * Sends the CONNECT for `req` with `headers` (headers.ts connectRequestHeaders: ztunnel's
   * header block and order) and resolves once the peer answered
   * 200. `done` is called exactly once, when the stream's slot is free again (the stream ended,
   * or none was made). Throws MeshError INPOD_ERR_HBONE_DENIED (401), INPOD_ERR_HBONE (another
   * status, the stream ended first); an error with `unprocessed: true` when the peer did not
   * process the stream (REFUSED_STREAM, a GOAWAY crossing it): safe to retry elsewhere (RFC 9113, 8.7).
   */
  connect(req: HboneRequest, headers: ConnectHeaders, done: () => void): Promise<HboneTunnel>;
}

/** `e`, marked as a stream the peer did not process when `unprocessed`. */
export function markUnprocessed<E>(e: E, unprocessed: boolean): E {
  if (unprocessed && typeof e === 'object' && e !== null) (e as { unprocessed?: boolean }).unprocessed = true;
  return e;
}

/** Was `e` thrown for a stream the peer did not process (markUnprocessed)? */
export function isUnprocessed(e: unknown): boolean {
  return (e as { unprocessed?: boolean } | null)?.unprocessed === true;
}
