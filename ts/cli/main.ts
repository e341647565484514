#!/usr/bin/env -S MALLOC_ARENA_MAX=2 node --max-semi-space-size=1
/**
 * The `inpod` command line (shared/DESIGN.md "Command line"). Each command's module is imported
 * only when that command runs: the proxy must not carry the agent's Kubernetes client, nor the
 * agent the proxy's TLS and HTTP/2 stack.
 *
 * The first line is how every `inpod` process starts (the image's /usr/local/bin/inpod links
 * here; `inpod bench` starts a proxy with what this line says): V8's young generation is kept to
 * 1 MiB per semi-space. Node's default lets it grow to 16 MiB per semi-space under allocation,
 * 32 MiB of RSS the proxy keeps once grown (`inpod bench --memory`, issue 19); the young objects
 * of a connection are few and short-lived, so scavenges stay cheap at 1 MiB. It must be given at
 * start: V8 sizes its heap when the isolate is made, and a later v8.setFlagsFromString has no
 * effect on it.
 */
import { MeshError } from '../util/errors.js';

async function usage(): Promise<string> {
  const [{ AGENT_USAGE }, { ZTUNNEL_USAGE }, { REDIRECT_USAGE }, { BENCH_USAGE }] = await Promise.all([import('./agent.js'), import('./ztunnel.js'), import('./redirect.js'), import('../bench/index.js')]);
  return `inpod: node data plane of a sidecar-less service mesh

${AGENT_USAGE}
${ZTUNNEL_USAGE}
${REDIRECT_USAGE}
${BENCH_USAGE}
  inpod doctor   [--bpffs DIR] [--cni-conf-dir DIR] [--netns PATH]... [--json]   checks this host, each failure with its fix
  inpod demo          capture on this host: two pods as network namespaces, one connection captured`;
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    switch (cmd) {
      case 'redirect':
        process.stdout.write(`${JSON.stringify(await (await import('./redirect.js')).redirectCommand(rest), null, 2)}\n`);
        return 0;
      case 'agent':
        await (await import('./agent.js')).agentCommand(rest);
        return 0;
      case 'cni':
        return (await import('../cni/bin.js')).cniMain();
      case 'ztunnel': {
        const zt = await import('./ztunnel.js');
        const what = zt.SHOW.find((s) => s === rest[0]);
        if (what) {
          process.stdout.write(`${JSON.stringify(await zt.ztunnelShow(what, rest.slice(1)), null, 2)}\n`);
          return 0;
        }
        await zt.ztunnelCommand(rest);
        return 0;
      }
      case 'bench':
        await (await import('../bench/index.js')).bench(rest);
        return 0;
      case 'doctor':
        return await (await import('./doctor.js')).doctorCommand(rest);
      case 'demo':
        await (await import('./demo.js')).demo();
        return 0;
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        process.stdout.write(`${await usage()}\n`);
        return cmd === undefined ? 2 : 0;
      default:
        process.stderr.write(`inpod: unknown command "${cmd}"\n${await usage()}\n`);
        return 2;
    }
  } catch (e) {
    const err = e as Error & { code?: string };
    if ((e instanceof MeshError && e.code === 'INPOD_ERR_USAGE') || err.code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`inpod: ${err.message}\n`);
      return 2;
    }
    process.stderr.write(`inpod: ${err.message}${err.code ? ` [${err.code}]` : ''}\n`);
    return 1;
  }
}

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
