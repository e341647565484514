#!/usr/bin/env node
/** `inpod-cni` (also `inpod cni`): the CNI plugin entry, as a container runtime executes it. */
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { runPlugin } from './plugin.js';

/** Reads the network config from stdin and the CNI_* environment; returns the exit code. */
export async function cniMain(): Promise<number> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  const env = process.env;
  const out = await runPlugin({
    command: env.CNI_COMMAND ?? '',
    containerId: env.CNI_CONTAINERID ?? '',
    netns: env.CNI_NETNS ?? '',
    ifname: env.CNI_IFNAME ?? '',
    args: env.CNI_ARGS ?? '',
    stdin: Buffer.concat(chunks).toString(),
  });
  process.stdout.write(out.stdout);
  return out.code;
}

const self = fileURLToPath(import.meta.url);
if (process.argv[1] && realpathSync(process.argv[1]) === self) {
  void cniMain().then((code) => (process.exitCode = code));
}
