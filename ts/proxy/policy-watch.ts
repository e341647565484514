/**
 * Open inbound connections decided again when the policies change, as ztunnel's PolicyWatcher
 * (src/proxy/connection_manager.rs): every connection `admit` lets through to an app is held here
 * while it is open; on each state update that brings other policies (a new, changed or removed
 * Authorization, or the local config's), each is authorized again with the attributes it was
 * admitted with, and those now denied are closed (the relay then resets both sides), logged as
 * ztunnel logs it. A connection admitted before a DENY never outlives the DENY's arrival.
 *
 * `revoked` is the decision (pure); `PolicyWatcher` holds the connections and does the closing.
 */
import type { StateSnapshot, StateStore } from '../state/store.js';
import type { Logger } from '../util/log.js';
import type { Authorizer, ConnContext } from './hooks.js';

/** One admitted connection: what it was admitted as, and how to end it. */
export interface Admitted {
  ctx: ConnContext;
  /** ends the connection (both sides); called at most once */
  close(): void;
  /** the served pod's logger */
  log: Logger;
}

/** Those of `open` that `authorizer` no longer allows, each with the reason. Pure. */
export function revoked<T extends { ctx: ConnContext }>(open: Iterable<T>, authorizer: Authorizer): { conn: T; reason: string }[] {
  const out: { conn: T; reason: string }[] = [];
  for (const conn of open) {
    const d = authorizer.authorize(conn.ctx);
    if (!d.allow) out.push({ conn, reason: d.reason ?? 'denied by policy' });
  }
  return out;
}

export class PolicyWatcher {
  readonly #open = new Set<Admitted>();
  #policies: unknown;
  #authorizations: unknown;
  readonly #onUpdate = (snap: StateSnapshot): void => {
    const { policies, authorizations } = snap.state;
    if (policies === this.#policies && authorizations === this.#authorizations) return;
    this.#policies = policies;
    this.#authorizations = authorizations;
    this.recheck();
  };

  /** Watches `state` from now on (until close()); `authorizer` decides against its current snapshot. */
  constructor(private readonly state: StateStore, private readonly authorizer: Authorizer) {
    this.#policies = state.snapshot.state.policies;
    this.#authorizations = state.snapshot.state.authorizations;
    state.on('update', this.#onUpdate);
  }

  /** Holds `c` until the returned function is called (when the connection has ended). */
  admitted(c: Admitted): () => void {
    this.#open.add(c);
    return () => void this.#open.delete(c);
  }

  /** How many admitted connections are held (open). */
  get size(): number {
    return this.#open.size;
  }

  /** Decides every held connection again; closes those now denied. Returns how many it closed. */
  recheck(): number {
    const denied = revoked(this.#open, this.authorizer);
    for (const { conn, reason } of denied) {
      this.#open.delete(conn);
      const { src, dst } = conn.ctx;
      conn.log.info({ src, dst, reason }, 'connection closed because it is no longer allowed after a policy update');
      conn.close();
    }
    return denied.length;
  }

  /** Stops watching the state. */
  close(): void {
    this.state.off('update', this.#onUpdate);
    this.#open.clear();
  }
}
