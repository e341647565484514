/** `inpod agent` options that are decided without I/O (ts/cli/agent.ts). */
import { describe, expect, it } from 'vitest';
import { ipv6Setting } from '../../ts/cli/agent.js';

describe('inpod agent --ipv6 / --no-ipv6 (issue 18)', () => {
  it('takes the flag, else AMBIENT_IPV6 as istio-cni\'s configmap writes the chart\'s ambient.ipv6, else on (the chart\'s default)', () => {
    expect(ipv6Setting(true, undefined)).toBe(true);
    expect(ipv6Setting(false, 'true')).toBe(false);
    expect(ipv6Setting(true, 'false')).toBe(true);
    expect(ipv6Setting(undefined, 'true')).toBe(true);
    expect(ipv6Setting(undefined, 'TRUE')).toBe(true);
    expect(ipv6Setting(undefined, '1')).toBe(true);
    expect(ipv6Setting(undefined, 'false')).toBe(false);
    expect(ipv6Setting(undefined, ' 0 ')).toBe(false);
    // istio manifests/charts/istio-cni/values.yaml: ambient.ipv6: true
    expect(ipv6Setting(undefined, undefined)).toBe(true);
    expect(ipv6Setting(undefined, '')).toBe(true);
  });

  it('stops on an AMBIENT_IPV6 it cannot read, naming the value and the two it takes (never a guess)', () => {
    for (const bad of ['"true"', 'yes', 'off', 'ture']) {
      expect(() => ipv6Setting(undefined, bad)).toThrow(expect.objectContaining({ code: 'INPOD_ERR_USAGE', message: expect.stringContaining(`AMBIENT_IPV6=${JSON.stringify(bad)} is neither true nor false`) }));
    }
  });
});
