/**
 * The fast path's eBPF object (bpf/fastpath.bpf.c, maps in bpf/include/fastpath_maps.h): loaded
 * by the proxy with its one setting in .rodata, its maps owned by the proxy process (not pinned),
 * and the map operations a splice needs. No decisions: splice.ts says when.
 */
import type net from 'node:net';
import { BpfObject, progAttach, socketCookie, tcpWritten, type BpfMap } from '../../native/index.js';
import { decodeFpFlow, encodeFpConfig, encodeFpFlow, encodeU64, type FpFlow } from '../../native/structs.js';
import { MeshError } from '../../util/errors.js';
import { fdOf } from '../sockets.js';

/**
 * Redirected bytes not yet taken by the receiving socket past which the program hands a flow
 * back to the proxy (struct inpod_fp_config.max_inflight): bounds the kernel memory a fast
 * sender can queue behind a slow receiver. ARCHITECTURE.md ("Back-pressure") has the trade-off.
 */
export const FP_MAX_INFLIGHT = 4 * 1024 * 1024;

/** Indexes of inpod_fp_stats (enum inpod_fp_stat, bpf/include/types.h). */
export const FP_STAT = { bytes: 0, segs: 1, drop: 2, throttle: 3, lost: 4 } as const;

/** One direction's sockets as the maps know them: X's fd and cookie (its key), Y's fd. */
export interface Ends {
  fromFd: number;
  toFd: number;
  cookie: bigint;
  key: Buffer;
}

/** What join() did: the directions the kernel took, and why it refused the others. */
export interface Joined {
  /** both directions' ends, once they could be read (so their flows can be forgotten) */
  ends?: [Ends, Ends];
  taken: [boolean, boolean];
  /** the first refusal (a SyscallError; EOPNOTSUPP: the socket is no longer ESTABLISHED) */
  refused?: unknown;
}

export class FastPathMaps {
  readonly #obj: BpfObject;
  readonly #srcs: BpfMap;
  readonly #dsts: BpfMap;
  readonly #flows: BpfMap;
  readonly #stats: BpfMap;
  /** the ring buffer of throttled flows (for the watcher) */
  readonly events: BpfMap;

  /**
   * Loads the object and attaches the verdict program to inpod_fp_srcs. Throws (SyscallError or
   * MeshError INPOD_ERR_CONFIG) when the kernel cannot have it; nothing is left loaded then.
   */
  static load(maxInflight = FP_MAX_INFLIGHT): FastPathMaps {
    if (!Number.isSafeInteger(maxInflight) || maxInflight <= 0) {
      throw new MeshError('INPOD_ERR_CONFIG', `fast path: max in-flight bytes ${maxInflight} is not a positive integer`);
    }
    const obj = BpfObject.open('fastpath', '/sys/fs/bpf', encodeFpConfig({ maxInflight }));
    try {
      obj.load();
      return new FastPathMaps(obj);
    } catch (e) {
      obj.destroy();
      throw e;
    }
  }

  private constructor(obj: BpfObject) {
    this.#obj = obj;
    this.#srcs = obj.map('inpod_fp_srcs');
    this.#dsts = obj.map('inpod_fp_dsts');
    this.#flows = obj.map('inpod_fp_flows');
    this.#stats = obj.map('inpod_fp_stats');
    this.events = obj.map('inpod_fp_events');
    const prog = obj.prog('inpod_fp_verdict');
    progAttach(prog.fd, this.#srcs.fd, prog.attachType);
  }

  /**
   * Puts a connection's sockets in the maps, `a -> b` first: both as targets, both flows naming
   * their peer (with the peer's baseline), then each socket into the verdict map, which switches
   * that direction on. Both sockets must have been read to empty (or never read), and every
   * userspace write to them must be in the kernel already. When neither direction can go, every
   * entry made is removed again.
   */
  join(a: net.Socket, b: net.Socket): Joined {
    let ends: [Ends, Ends] | undefined;
    try {
      const fa = fdOf(a);
      const fb = fdOf(b);
      ends = [this.#ends(fa, fb), this.#ends(fb, fa)];
      for (const e of ends) this.#dsts.update(e.key, encodeU64(BigInt(e.fromFd)));
      const [ab, ba] = ends;
      // peerBase: what Y had taken before anything could be redirected into it
      this.#flows.update(ab.key, encodeFpFlow({ peer: ba.cookie, bytes: 0, segs: 0, peerBase: tcpWritten(ab.toFd), throttled: 0 }));
      this.#flows.update(ba.key, encodeFpFlow({ peer: ab.cookie, bytes: 0, segs: 0, peerBase: tcpWritten(ba.toFd), throttled: 0 }));
    } catch (e) {
      this.#undo(ends);
      return { ends, taken: [false, false], refused: e };
    }
    const taken: [boolean, boolean] = [false, false];
    let refused: unknown;
    for (const i of [0, 1] as const) {
      try {
        this.#srcs.update(ends[i].key, encodeU64(BigInt(ends[i].fromFd)));
        taken[i] = true;
      } catch (e) {
        refused ??= e;
      }
    }
    if (!taken[0] && !taken[1]) this.#undo(ends);
    return { ends, taken, refused };
  }

  #ends(fromFd: number, toFd: number): Ends {
    const cookie = socketCookie(fromFd);
    return { fromFd, toFd, cookie, key: encodeU64(cookie) };
  }

  #undo(ends?: [Ends, Ends]): void {
    for (const e of ends ?? []) {
      this.#srcs.delete(e.key);
      this.#dsts.delete(e.key);
      this.#flows.delete(e.key);
    }
  }

  /** A direction's flow: the bytes the program redirected, its baseline, whether it stopped. */
  flow(e: Ends): FpFlow | null {
    const v = this.#flows.lookup(e.key);
    return v ? decodeFpFlow(v) : null;
  }

  /** Removes a direction's flow (the sockets leave the SOCKHASHes when they close). */
  forget(e: Ends): void {
    this.#flows.delete(e.key);
  }

  /** A kernel-wide counter (FP_STAT), summed over the CPUs. */
  counter(idx: number): bigint {
    return this.#stats.sumPerCpu(idx);
  }

  /** Entries in the maps (what a leak test counts). */
  entries(): { srcs: number; dsts: number; flows: number } {
    return { srcs: this.#srcs.keys().length, dsts: this.#dsts.keys().length, flows: this.#flows.keys().length };
  }

  /** Unloads the object; spliced sockets still open fall out of the maps with it. */
  close(): void {
    this.#obj.destroy();
  }
}
