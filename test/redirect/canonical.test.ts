/** canonicalCidr (ts/redirect/backend.ts): the capture layer's CIDRs, their address written by ipText. */
import { describe, expect, it } from 'vitest';
import { canonicalCidr } from '../../ts/redirect/backend.js';

describe('canonicalCidr', () => {
  it('keeps the prefix length and refuses what is not an address or CIDR', () => {
    expect(canonicalCidr('FD00:200:0::/64')).toBe('fd00:200::/64');
    expect(canonicalCidr('10.200.0.0/16')).toBe('10.200.0.0/16');
    expect([canonicalCidr('fd00::/129'), canonicalCidr('10.0.0.0/33'), canonicalCidr('x/8'), canonicalCidr('1.2.3.4/8/9')]).toEqual([null, null, null, null]);
  });
});
