import { describe, expect, it } from 'vitest';
import { runPlugin, type AgentCall, type CniInput } from '../../ts/cni/plugin.js';

const prevResult = { cniVersion: '1.0.0', interfaces: [{ name: 'eth0' }], ips: [{ address: '10.200.1.5/24', gateway: '10.200.1.1', interface: 0 }] };
const conf = { cniVersion: '1.0.0', name: 'k8s', type: 'inpod-cni', agentSocket: '/x.sock', prevResult };
const input = (o: Partial<CniInput> = {}): CniInput => ({
  command: 'ADD', containerId: 'c1', netns: '/run/netns/p', ifname: 'eth0',
  args: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_UID=abc', stdin: JSON.stringify(conf), ...o,
});

describe('inpod-cni', () => {
  it('ADD asks the agent with the pod identity and passes prevResult through unchanged', async () => {
    const calls: unknown[] = [];
    const call: AgentCall = async (socket, path, body) => {
      calls.push({ socket, path, body });
      return { enrolled: true };
    };
    const out = await runPlugin(input(), call);
    expect(out.code).toBe(0);
    expect(JSON.parse(out.stdout)).toEqual(prevResult);
    expect(calls).toEqual([{ socket: '/x.sock', path: '/cmd/add', body: { podName: 'web-0', podNamespace: 'shop', podUid: 'abc', netns: '/run/netns/p', containerId: 'c1', ips: ['10.200.1.5'] } }]);
  });

  it('ADD fails with a CNI error naming the cause when the agent cannot capture the pod', async () => {
    const out = await runPlugin(input(), async () => {
      throw new Error('no proxy is connected');
    });
    expect(out.code).toBe(1);
    expect(JSON.parse(out.stdout)).toMatchObject({ cniVersion: '1.0.0', code: 11, msg: expect.stringMatching(/shop\/web-0 was not added to the mesh: no proxy is connected; the runtime will retry/) });
  });

  const withConf = (o: Record<string, unknown>): string => JSON.stringify({ ...conf, ...o });
  it.each([
    ['malformed stdin', input({ stdin: '{not json' }), 6, /not valid JSON/],
    ['stdin that is not an object', input({ stdin: '[1]' }), 6, /must be a JSON object, got a list/],
    ['missing CNI_NETNS', input({ netns: '' }), 4, /CNI_NETNS is not set/],
    ['a relative CNI_NETNS', input({ netns: 'p' }), 4, /CNI_NETNS "p" is not an absolute path/],
    ['missing CNI_CONTAINERID', input({ containerId: '' }), 4, /CNI_CONTAINERID is not set/],
    ['a pod name Kubernetes never gives', input({ args: 'K8S_POD_NAMESPACE=shop;K8S_POD_NAME=../x' }), 4, /K8S_POD_NAME="\.\.\/x" is not a Kubernetes pod name/],
    ['no prevResult (not chained)', input({ stdin: withConf({ prevResult: undefined }) }), 7, /must be chained after/],
    ['no cniVersion', input({ stdin: withConf({ cniVersion: undefined }) }), 7, /cniVersion must be a version string/],
    ['an unsupported version', input({ stdin: withConf({ cniVersion: '9.9.9' }) }), 1, /"9\.9\.9" is not supported/],
    ['a timeout that is not a number of seconds', input({ stdin: withConf({ timeoutSeconds: -1 }) }), 7, /timeoutSeconds must be a number of seconds above 0/],
    ['a relative agent socket', input({ stdin: withConf({ agentSocket: 'agent.sock' }) }), 7, /agentSocket must be an absolute path/],
    ['prevResult.ips that is not a list', input({ stdin: withConf({ prevResult: { ips: 'x' } }) }), 7, /prevResult\.ips must be a list/],
    ['an address that is not an address', input({ stdin: withConf({ prevResult: { ips: [{ address: '10.0.0.300/24' }] } }) }), 7, /prevResult\.ips\[0\]\.address must be an address with prefix length/],
    ['an unknown command', input({ command: 'FROB' }), 4, /unknown CNI_COMMAND/],
    ['no command', input({ command: '' }), 4, /CNI_COMMAND is not set/],
  ])('answers %s with a CNI error', async (_n, inp, code, msg) => {
    let asked = false;
    const out = await runPlugin(inp, async () => ((asked = true), {}));
    expect(out.code).toBe(1);
    expect(JSON.parse(out.stdout)).toMatchObject({ cniVersion: '1.0.0', code, msg: expect.stringMatching(msg) });
    expect(asked).toBe(false);
  });

  it('DEL succeeds whatever the input, and says on stderr why the agent was not told', async () => {
    let asked = 0;
    const call: AgentCall = async () => ((asked++), {});
    for (const stdin of ['null', '{not json', withConf({ prevResult: { ips: 5 } })]) {
      const out = await runPlugin(input({ command: 'DEL', stdin }), call);
      expect(out).toMatchObject({ code: 0, stdout: '', stderr: expect.stringMatching(/DEL not passed to the agent/) });
    }
    expect(asked).toBe(0);
    expect(await runPlugin(input({ command: 'DEL' }), call)).toEqual({ code: 0, stdout: '' });
    expect(asked).toBe(1);
  });

  it('DEL gives the agent at most 10 s, whatever timeoutSeconds says', async () => {
    let given = 0;
    await runPlugin(input({ command: 'DEL', stdin: withConf({ timeoutSeconds: 600 }) }), async (_s, _p, _b, ms) => ((given = ms), {}));
    expect(given).toBe(10_000);
  });

  it('DEL succeeds even when the agent is gone, twice', async () => {
    const gone: AgentCall = async () => {
      throw new Error('agent not running');
    };
    for (let i = 0; i < 2; i++) expect(await runPlugin(input({ command: 'DEL' }), gone)).toMatchObject({ code: 0, stdout: '' });
  });

  it('VERSION lists the supported versions', async () => {
    const out = await runPlugin(input({ command: 'VERSION' }));
    expect(JSON.parse(out.stdout)).toEqual({ cniVersion: '1.0.0', supportedVersions: ['0.3.0', '0.3.1', '0.4.0', '1.0.0'] });
  });

  it('passes a non-Kubernetes container through without asking the agent', async () => {
    let asked = false;
    const out = await runPlugin(input({ args: '' }), async () => ((asked = true), {}));
    expect(out.code).toBe(0);
    expect(asked).toBe(false);
  });
});

describe('inpod-cni against every JSON type in every field it reads', () => {
  const values: unknown[] = [null, true, 0, -1, 1e308, '', 'x', '/x', [], [null], {}, { address: 1 }, 'a'.repeat(5000)];
  const base = { cniVersion: '1.0.0', name: 'k8s', type: 'inpod-cni', agentSocket: '/x.sock', timeoutSeconds: 5, prevResult: { ips: [{ address: '10.0.0.1/24' }] } };
  const paths: ((v: unknown) => unknown)[] = [
    (v) => v,
    (v) => ({ ...base, cniVersion: v }),
    (v) => ({ ...base, agentSocket: v }),
    (v) => ({ ...base, timeoutSeconds: v }),
    (v) => ({ ...base, prevResult: v }),
    (v) => ({ ...base, prevResult: { ips: v } }),
    (v) => ({ ...base, prevResult: { ips: [v] } }),
    (v) => ({ ...base, prevResult: { ips: [{ address: v }] } }),
  ];

  it('never throws and never hits an internal error: each answer is a result or a CNI error (ADD, CHECK, DEL)', async () => {
    for (const command of ['ADD', 'CHECK', 'DEL']) {
      for (const path of paths) {
        for (const v of values) {
          const out = await runPlugin(input({ command, stdin: JSON.stringify(path(v)) ?? 'undefined' }), async () => ({}));
          expect([0, 1]).toContain(out.code);
          if (out.code === 1) expect(JSON.parse(out.stdout).code, `${command} ${JSON.stringify(path(v))}`).toBeLessThan(100);
          if (command === 'DEL') expect(out.code).toBe(0);
        }
      }
    }
  });
});

describe('reading stdin', () => {
  it('gives up with I/O failure (5) when the runtime never closes stdin, and with 6 past the size cap', async () => {
    const { PassThrough } = await import('node:stream');
    const { readStdin } = await import('../../ts/cni/bin.js');
    const open = new PassThrough();
    open.write('{"cniVersion":');
    await expect(readStdin(open, 1024, 50)).rejects.toMatchObject({ cniCode: 5, message: expect.stringMatching(/no network configuration on stdin within 0.05 s/) });
    const big = new PassThrough();
    const read = readStdin(big, 1024, 5000);
    big.write(Buffer.alloc(2048));
    await expect(read).rejects.toMatchObject({ cniCode: 6 });
    const ok = new PassThrough();
    const whole = readStdin(ok, 1024, 5000);
    ok.end('{"a":1}');
    expect(await whole).toBe('{"a":1}');
  });
});
