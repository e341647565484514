#!/usr/bin/env node
/**
 * `inpod-cni` (also `inpod cni`): the CNI plugin entry, as a container runtime executes it.
 * Whatever happens, the runtime gets what the spec promises: on stdout one result or one CNI
 * error object, and an exit code (0 or 1); never a stack trace.
 */
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { runPlugin, type CniOutput } from './plugin.js';
import { CNI_ERR, CniFailure, MAX_STDIN_BYTES } from './input.js';

/** A runtime writes the configuration and closes stdin at once; waiting longer means nobody will. */
export const STDIN_DEADLINE_MS = 10_000;

/** All of stdin as UTF-8, at most `max` bytes, within `deadlineMs`. Rejects with CniFailure 5 or 6. */
export function readStdin(stream: NodeJS.ReadableStream, max = MAX_STDIN_BYTES, deadlineMs = STDIN_DEADLINE_MS): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let len = 0;
    const done = (f: () => void): void => {
      clearTimeout(timer);
      stream.removeAllListeners('data');
      f();
    };
    const timer = setTimeout(
      () => done(() => reject(new CniFailure(CNI_ERR.IO, `inpod-cni: no network configuration on stdin within ${deadlineMs / 1000} s`, 'the runtime writes the configuration to stdin and closes it'))),
      deadlineMs,
    );
    timer.unref();
    stream.on('data', (c: Buffer | string) => {
      const b = typeof c === 'string' ? Buffer.from(c) : c;
      len += b.length;
      if (len > max) {
        done(() => reject(new CniFailure(CNI_ERR.DECODE, `inpod-cni: the network configuration on stdin is larger than ${max} bytes`, 'a real configuration is a few KiB')));
        (stream as NodeJS.ReadStream).destroy?.();
        return;
      }
      chunks.push(b);
    });
    stream.once('end', () => done(() => resolve(Buffer.concat(chunks).toString('utf8'))));
    stream.once('error', (e: Error) => done(() => reject(new CniFailure(CNI_ERR.IO, `inpod-cni: cannot read stdin: ${e.message}`))));
  });
}

function failure(e: unknown): CniOutput {
  const f = e instanceof CniFailure ? e : new CniFailure(CNI_ERR.INTERNAL, `inpod-cni: internal error: ${(e as Error)?.message ?? String(e)}`);
  return { code: 1, stdout: JSON.stringify({ cniVersion: '1.0.0', code: f.cniCode, msg: f.message, ...(f.details ? { details: f.details } : {}) }) };
}

/** Reads the network config from stdin and the CNI_* environment; returns the exit code. Never throws. */
export async function cniMain(): Promise<number> {
  let out: CniOutput;
  try {
    const env = process.env;
    const stdin = env.CNI_COMMAND === 'VERSION' ? '' : await readStdin(process.stdin);
    out = await runPlugin({
      command: env.CNI_COMMAND ?? '',
      containerId: env.CNI_CONTAINERID ?? '',
      netns: env.CNI_NETNS ?? '',
      ifname: env.CNI_IFNAME ?? '',
      args: env.CNI_ARGS ?? '',
      stdin,
    });
  } catch (e) {
    out = failure(e);
  }
  if (out.stderr) process.stderr.write(out.stderr);
  process.stdout.write(out.stdout);
  return out.code;
}

const self = fileURLToPath(import.meta.url);
if (process.argv[1] && realpathSync(process.argv[1]) === self) {
  // a defect anywhere must still end as a CNI error, not a stack trace
  const last = (e: unknown): void => {
    process.stdout.write(failure(e).stdout);
    process.exit(1);
  };
  process.on('uncaughtException', last);
  process.on('unhandledRejection', last);
  void cniMain().then((code) => process.exit(code));
}
