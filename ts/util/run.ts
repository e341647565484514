/** Runs a program (optionally with stdin) and collects its output; the exit code decides. */
import { spawn } from 'node:child_process';

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export type Runner = (cmd: string, args: string[], input?: string, env?: NodeJS.ProcessEnv) => Promise<RunResult>;

export const runProgram: Runner = (cmd, args, input, env) =>
  new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], ...(env ? { env } : {}) });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? 1, stdout, stderr }));
    child.stdin.on('error', () => {}); // a program that exits without reading its input
    if (input) child.stdin.end(input);
    else child.stdin.end();
  });
