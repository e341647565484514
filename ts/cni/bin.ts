#!/usr/bin/env node
/**
 * `inpod cni` (and the package's `inpod-cni` bin): runs the static plugin of this build
 * (build/inpod-cni) with this process's stdin, stdout, stderr and CNI_* environment, and exits
 * as it does. The plugin is C so that the host can run it alone (ARCHITECTURE.md, "CNI"); this
 * entry only keeps the command working for scripts that call it.
 */
import { spawnSync } from 'node:child_process';
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { pluginBinary } from './plugin.js';

/** Runs the plugin; returns its exit code (1 with a CNI error result if it cannot run). */
export function cniMain(): number {
  let r: ReturnType<typeof spawnSync> | undefined;
  let why = '';
  try {
    r = spawnSync(pluginBinary(), [], { stdio: 'inherit' });
    why = r.error?.message ?? (r.signal ? `killed by ${r.signal}` : '');
  } catch (e) {
    why = (e as Error).message;
  }
  if (r && !why) return r.status ?? 1;
  process.stdout.write(JSON.stringify({ cniVersion: '1.0.0', code: 100, msg: `inpod-cni: internal error: ${why}` }));
  return 1;
}

const self = fileURLToPath(import.meta.url);
if (process.argv[1] && realpathSync(process.argv[1]) === self) process.exitCode = cniMain();
