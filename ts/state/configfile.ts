/**
 * Loading the proxy's local-config file: a bounded read, then parse and validate, all or
 * nothing. `loadConfigFile` runs on the calling thread (at start, before anything is served);
 * `loadConfigFileOffThread` runs the same code in a worker thread (load-worker.ts), so a large
 * file never stalls the admin, readiness or data path, and hands back only the validated state.
 */
import { Worker } from 'node:worker_threads';
import { MeshError } from '../util/errors.js';
import { readBoundedFile } from '../util/yaml.js';
import { parseLocalConfig, type ParseOptions } from './localconfig.js';
import type { MeshState } from './types.js';

/** The largest local-config file read: ~230k workloads of the ztunnel format. */
export const MAX_CONFIG_BYTES = 32 << 20;
/** Heap of the loading worker: reading a file at the cap takes about a third of it. */
export const LOAD_WORKER_HEAP_MB = 768;

export interface LoadOptions extends ParseOptions {
  maxBytes?: number;
}

/** Reads, parses and validates `path`. Throws MeshError INPOD_ERR_CONFIG naming the file and the field. */
export function loadConfigFile(path: string, opts: LoadOptions = {}): MeshState {
  const text = readBoundedFile(path, opts.maxBytes ?? MAX_CONFIG_BYTES);
  try {
    return parseLocalConfig(text, path, opts);
  } catch (e) {
    // field errors name the field ("workloads[3].namespace: ..."); say which file as well
    if (e instanceof MeshError && !e.message.startsWith(path)) throw new MeshError(e.code, `${path}: ${e.message}`, { cause: e });
    throw e;
  }
}

/** Entries copied per message from the loading worker: ~10 ms of the main thread each. */
export const LOAD_SLICE = 2000;

/**
 * The worker's messages: `failed` (why there is no state), or `loaded` and then one `slice`
 * per request of the main thread until `end`.
 */
export type LoadReply =
  | { type: 'failed'; code: string; message: string }
  | { type: 'loaded'; workloads: number; services: number; policies: number }
  | { type: 'slice'; kind: keyof MeshState; items: unknown[] }
  | { type: 'end' };

/** Under the test runner this module is the TypeScript source; the worker always runs the built JS. */
function workerScript(): URL {
  const here = new URL(import.meta.url);
  return here.pathname.endsWith('.ts') ? new URL('../../dist/state/load-worker.js', here) : new URL('./load-worker.js', here);
}

/**
 * `loadConfigFile` in a worker thread with a bounded heap. Resolves with the validated state;
 * rejects with the same MeshError the file would give on this thread, or one saying the load
 * ran out of memory. Only the result crosses back, LOAD_SLICE entries per message, each slice
 * asked for on a later turn of the event loop, so no single step of the copy holds this thread.
 */
export function loadConfigFileOffThread(path: string, opts: LoadOptions = {}): Promise<MeshState> {
  return new Promise((resolve, reject) => {
    const state: MeshState = { workloads: [], services: [], policies: [], authorizations: [] };
    let settled = false;
    const settle = (f: () => void): void => {
      if (settled) return;
      settled = true;
      f();
    };
    const worker = new Worker(workerScript(), {
      workerData: { path, opts },
      resourceLimits: { maxOldGenerationSizeMb: LOAD_WORKER_HEAP_MB },
      stdout: true, // the worker logs nothing; keep anything it prints off our own stdout
      stderr: true,
    });
    const next = (): void => void setImmediate(() => !settled && worker.postMessage('next'));
    worker.on('message', (m: LoadReply) => {
      if (m.type === 'failed') settle(() => reject(new MeshError(m.code as 'INPOD_ERR_CONFIG', m.message)));
      else if (m.type === 'end') settle(() => resolve(state));
      else {
        if (m.type === 'slice') for (const x of m.items) ((state[m.kind] ??= []) as unknown[]).push(x);
        next();
      }
    });
    worker.once('error', (e: Error & { code?: string }) =>
      settle(() =>
        reject(
          e.code === 'ERR_WORKER_OUT_OF_MEMORY'
            ? new MeshError('INPOD_ERR_CONFIG', `${path}: reading it needs more than ${LOAD_WORKER_HEAP_MB} MB; split the file or remove entries`, { cause: e })
            : new MeshError('INPOD_ERR_CONFIG', `${path}: could not be loaded: ${e.message}`, { cause: e }),
        ),
      ),
    );
    worker.once('exit', (code) => settle(() => reject(new MeshError('INPOD_ERR_CONFIG', `${path}: the loading thread exited (${code}) before handing over the state`))));
  });
}
