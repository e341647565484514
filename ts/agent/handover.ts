/**
 * One active agent per node: the lease that an agent rollout (maxSurge 1, two agents on the node
 * for a moment) passes from the old agent to the new one, so the two never enroll, unenroll or
 * answer the plugin at the same time. The lease is an abstract unix socket named after the state
 * directory: listening on it is holding it, and the kernel frees the name when its holder exits,
 * crashed or not, so a lease is never left behind. (Both agents run on the host network, as
 * deploy/agent-daemonset.yaml has them, so they see the same abstract names.)
 *
 * A new agent that finds the lease held connects to it: that is the request to hand over. The
 * holder finishes what is under way (`handOver`), stops listening, and drops the connection; the
 * new agent then takes the lease. istio-cni has no such step (its DaemonSet replaces the agent
 * with maxUnavailable 1: the old one is gone before the new one starts, and pods that start
 * meanwhile wait); here the plugin always finds an agent (ARCHITECTURE.md, "Upgrades").
 */
import net from 'node:net';
import { createHash } from 'node:crypto';
import { resolve } from 'node:path';
import { MeshError } from '../util/errors.js';
import type { Logger } from '../util/log.js';

export interface LeaseOptions {
  log: Logger;
  /** called once when a newer agent asks for the lease; it is handed over when this settles */
  handOver: () => Promise<void>;
  /** how long to wait before looking again while the lease is being freed (default 50 ms) */
  retryMs?: number;
  /** gives up waiting (the agent is stopped before it got the lease) */
  signal?: AbortSignal;
}

/** The abstract socket name of the lease of the agents sharing `stateDir`. */
export function leaseName(stateDir: string): string {
  return `\0inpod-agent-${createHash('sha256').update(resolve(stateDir)).digest('hex').slice(0, 24)}`;
}

export class AgentLease {
  #released = false;

  private constructor(readonly name: string, private readonly server: net.Server) {}

  /**
   * Takes the lease, asking its holder to hand over first if there is one, and waiting for as
   * long as that takes (the holder finishes its in-flight pod work first). Resolves holding it.
   */
  static async acquire(name: string, o: LeaseOptions): Promise<AgentLease> {
    for (let asked = false; ;) {
      if (o.signal?.aborted) throw new MeshError('INPOD_ERR_AGENT', 'stopped while waiting for the running agent to hand over');
      const server = await listen(name).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'EADDRINUSE') throw e;
        return null;
      });
      if (server && o.signal?.aborted) {
        server.close();
        continue; // and give up, above
      }
      if (server) {
        const lease = new AgentLease(name, server);
        lease.#serve(o);
        if (asked) o.log.info('the previous agent handed over; this agent is the active one now');
        return lease;
      }
      if (!asked) o.log.info('another agent is active on this node: asking it to hand over');
      asked = true;
      await requestHandover(name, o.retryMs ?? 50, o.signal);
    }
  }

  /** Gives the lease up (a stopping agent); idempotent. */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    this.server.close();
  }

  #serve(o: LeaseOptions): void {
    const waiting: net.Socket[] = [];
    let handing = false;
    this.server.on('connection', (sock) => {
      sock.on('error', () => {});
      waiting.push(sock);
      if (handing) return;
      handing = true;
      o.log.info('a newer agent asks for the lease: handing over once the work under way is done');
      void o.handOver()
        .catch((e: Error) => o.log.error({ err: e.message }, 'handing over failed; giving the lease up anyway'))
        .finally(() => {
          this.release(); // the name is free from here on
          for (const s of waiting) s.destroy();
        });
    });
  }
}

/**
 * Is the lease held now? Found by trying to take it for a moment (connecting would ask its
 * holder to hand over). Used by an agent that handed over, to learn that the newer agent went
 * away without ever taking it.
 */
export async function leaseHeld(name: string): Promise<boolean> {
  const server = await listen(name).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'EADDRINUSE') return null;
    throw e;
  });
  if (!server) return true;
  await new Promise((r) => server.close(r));
  return false;
}

function listen(name: string): Promise<net.Server> {
  return new Promise((ok, fail) => {
    const server = net.createServer();
    server.once('error', fail);
    server.listen(name, () => {
      server.off('error', fail);
      ok(server);
    });
  });
}

/**
 * Connects to the lease holder (the request) and resolves once it dropped the connection, or
 * after `retryMs` when nobody answered (the name was being freed, or taken again meanwhile), or
 * at once when `signal` aborts.
 */
function requestHandover(name: string, retryMs: number, signal?: AbortSignal): Promise<void> {
  return new Promise((done) => {
    const sock = net.connect(name);
    let connected = false;
    const abort = (): void => void sock.destroy();
    signal?.addEventListener('abort', abort, { once: true });
    sock.once('connect', () => (connected = true));
    sock.on('error', () => {});
    sock.once('close', () => {
      signal?.removeEventListener('abort', abort);
      if (connected || signal?.aborted) done();
      else setTimeout(done, retryMs);
    });
  });
}
