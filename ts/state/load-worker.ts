/**
 * Worker-thread entry of `loadConfigFileOffThread` (configfile.ts): loads one local-config file,
 * then hands the validated state over in slices, one slice per request from the main thread, so
 * the main thread copies a few thousand entries at a time between the requests it serves (a
 * message port delivers every queued message in one go; pulling keeps each copy short). The
 * text, the parsed YAML and every intermediate object die with this thread.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { loadConfigFile, LOAD_SLICE, type LoadOptions, type LoadReply } from './configfile.js';
import type { MeshState } from './types.js';

const { path, opts } = workerData as { path: string; opts: LoadOptions };
const port = parentPort!;

/** Answers each request with the next slice, then `end`; the thread ends when the port closes. */
function handOver(state: MeshState): void {
  const kinds = ['workloads', 'services', 'policies', 'authorizations'] as const;
  const of = (k: (typeof kinds)[number]): unknown[] => state[k] ?? [];
  let kind = 0;
  let at = 0;
  port.on('message', () => {
    while (kind < kinds.length && at >= of(kinds[kind]!).length) {
      kind++;
      at = 0;
    }
    if (kind === kinds.length) {
      port.postMessage({ type: 'end' } satisfies LoadReply);
      port.close();
      return;
    }
    const k = kinds[kind]!;
    const items = of(k).slice(at, at + LOAD_SLICE);
    at += items.length;
    port.postMessage({ type: 'slice', kind: k, items } satisfies LoadReply);
  });
  port.postMessage({ type: 'loaded', workloads: state.workloads.length, services: state.services.length, policies: state.policies.length + of('authorizations').length } satisfies LoadReply);
}

let state: MeshState | undefined;
try {
  state = loadConfigFile(path, opts);
} catch (e) {
  const err = e as Error & { code?: string };
  const code = typeof err.code === 'string' && err.code.startsWith('INPOD_ERR_') ? err.code : 'INPOD_ERR_CONFIG';
  port.postMessage({ type: 'failed', code, message: err.message } satisfies LoadReply);
  port.close();
}
if (state) handOver(state);
