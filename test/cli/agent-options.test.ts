/** `inpod agent` options that are decided without I/O (ts/cli/agent.ts). */
import { describe, expect, it } from 'vitest';
import { ipv6Setting } from '../../ts/cli/agent.js';

describe('inpod agent --ipv6 (issue 18)', () => {
  it('takes the flag, else AMBIENT_IPV6 as istio-cni\'s configmap writes the chart\'s ambient.ipv6 ("true"), else off', () => {
    expect(ipv6Setting(true, undefined)).toBe(true);
    expect(ipv6Setting(false, 'true')).toBe(false);
    expect(ipv6Setting(undefined, 'true')).toBe(true);
    expect(ipv6Setting(undefined, '"true"')).toBe(false); // a quoted value is not read as true: off, the side that refuses
    expect(ipv6Setting(undefined, 'TRUE')).toBe(true);
    expect(ipv6Setting(undefined, '1')).toBe(true);
    expect(ipv6Setting(undefined, 'false')).toBe(false);
    expect(ipv6Setting(undefined, undefined)).toBe(false);
  });
});
