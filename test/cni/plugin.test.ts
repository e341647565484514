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

  it.each([
    ['malformed stdin', input({ stdin: '{not json' }), /not valid JSON/],
    ['missing CNI_NETNS', input({ netns: '' }), /CNI_NETNS is not set/],
    ['no prevResult (not chained)', input({ stdin: JSON.stringify({ ...conf, prevResult: undefined }) }), /must be chained after/],
    ['an unsupported version', input({ stdin: JSON.stringify({ ...conf, cniVersion: '9.9.9' }) }), /9\.9\.9 is not supported/],
    ['an unknown command', input({ command: 'FROB' }), /unknown CNI_COMMAND/],
  ])('answers %s with a CNI error', async (_n, inp, msg) => {
    const out = await runPlugin(inp, async () => ({}));
    expect(out.code).toBe(1);
    expect(JSON.parse(out.stdout).msg).toMatch(msg);
  });

  it('DEL succeeds even when the agent is gone, twice', async () => {
    const gone: AgentCall = async () => {
      throw new Error('agent not running');
    };
    for (let i = 0; i < 2; i++) expect(await runPlugin(input({ command: 'DEL' }), gone)).toEqual({ code: 0, stdout: '' });
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
