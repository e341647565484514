/**
 * The skeletons as the contract between bpf/ and TypeScript: map sizes and attach types are read
 * from them, a pinned map is opened only if it is the map this build declares, and a BpfMap
 * owns its fd.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BpfMap, BpfObject, numPossibleCpus, pinnedMapSpec, skeleton, skeletonNames } from '../../ts/native/index.js';
import { LAYOUT, encodePod, encodeU64, decodePod } from '../../ts/native/structs.js';
import { TUPLE_MAPS } from '../../ts/redirect/ebpf.js';

const pinRoot = `/sys/fs/bpf/nt${randomBytes(3).toString('hex')}`;
const fdCount = (): number => readdirSync('/proc/self/fd').length;
/** Pins a map made by bpftool, outside this code, with the given shape. */
const pinMap = (name: string, keySize: number, valueSize: number): string => {
  const path = join(pinRoot, name);
  execFileSync('bpftool', ['map', 'create', path, 'type', 'hash', 'key', `${keySize}`, 'value', `${valueSize}`, 'entries', '4', 'name', name]);
  return path;
};

beforeAll(() => mkdirSync(pinRoot));
afterAll(() => rmSync(pinRoot, { recursive: true, force: true }));

describe('skeletons', () => {
  it('declare every map the backend opens, with the sizes the TypeScript encoders write', () => {
    expect(skeletonNames().sort()).toEqual(['connect', 'fastpath', 'getsockopt', 'sk_lookup', 'sockops']);
    const sizes = (name: string) => {
      const m = pinnedMapSpec(name);
      return [m.keySize, m.valueSize];
    };
    expect(sizes('inpod_enrolled')).toEqual([8, LAYOUT.inpod_pod.sizeof]);
    expect(sizes('inpod_pod_ips')).toEqual([4, 8]);
    expect(sizes('inpod_port_excl')).toEqual([LAYOUT.inpod_port_key.sizeof, 1]);
    expect(sizes('inpod_cidr_excl')).toEqual([LAYOUT.inpod_cidr_key.sizeof, 1]);
    expect(TUPLE_MAPS.map((n) => pinnedMapSpec(n).keySize)).toEqual(TUPLE_MAPS.map(() => LAYOUT.inpod_tuple.sizeof));
    expect(pinnedMapSpec('inpod_syn_dst').valueSize).toBe(LAYOUT.inpod_addr.sizeof);
    expect(skeleton('fastpath').map('inpod_fp_flows').valueSize).toBe(LAYOUT.inpod_fp_flow.sizeof);
    expect(skeleton('fastpath').map('inpod_fp_flows').pinned).toBe(false);
  });

  it('give each program its attach type as libbpf derives it from the section name', () => {
    expect(skeleton('sk_lookup').prog('inpod_sk_lookup').attachType).toBe(36); // BPF_SK_LOOKUP
    expect(skeleton('connect').prog('inpod_connect4').attachType).toBe(10); // BPF_CGROUP_INET4_CONNECT
    expect(skeleton('fastpath').prog('inpod_fp_verdict').attachType).toBe(5); // BPF_SK_SKB_STREAM_VERDICT
  });

  it('name what is missing when TypeScript asks for a map or program no skeleton has', () => {
    expect(() => skeleton('connect').map('inpod_nope')).toThrow(expect.objectContaining({ code: 'INPOD_ERR_ADDON', message: expect.stringMatching(/declares no map inpod_nope/) }));
    expect(() => skeleton('connect').prog('inpod_nope')).toThrow(/declares no program inpod_nope/);
    expect(() => pinnedMapSpec('inpod_fp_flows')).toThrow(/no skeleton pins a map named inpod_fp_flows/);
  });
});

describe('BpfMap', () => {
  it('opens the map pinned by name and owns its fd', () => {
    const spec = pinnedMapSpec('inpod_enrolled');
    const path = pinMap('inpod_enrolled', spec.keySize, spec.valueSize);
    const before = fdCount();
    const m = BpfMap.pinned(path, spec)!;
    const pod = { ip4: '10.200.9.9', probeIp4: '169.254.7.127', flags: 0 };
    m.update(encodeU64(7n), encodePod(pod));
    expect(decodePod(m.lookup(encodeU64(7n))!)).toEqual(pod);
    expect(m.keys()).toEqual([encodeU64(7n)]);
    expect(m.delete(encodeU64(7n))).toBe(true);
    expect(m.lookup(encodeU64(7n))).toBeNull();
    m.close();
    m.close(); // idempotent
    expect(fdCount()).toBe(before);
    expect(() => m.fd).toThrow(expect.objectContaining({ code: 'EBADF' }));
    expect(BpfMap.pinned(join(pinRoot, 'inpod_not_pinned'), spec)).toBeNull();
    rmSync(path);
  });

  it('refuses a map pinned with another shape (an older inpod), naming the pin and the fix', () => {
    const spec = pinnedMapSpec('inpod_enrolled');
    const path = pinMap('inpod_enrolled', 4, 8);
    const before = fdCount();
    expect(() => BpfMap.pinned(path, spec)).toThrow(expect.objectContaining({
      code: 'INPOD_ERR_KERNEL',
      message: expect.stringMatching(new RegExp(`${path} \\(type 1, key 4 B, value 8 B\\) is not the inpod_enrolled .*key 8 B, value ${LAYOUT.inpod_pod.sizeof} B.*inpod redirect uninstall`)),
    }));
    expect(fdCount()).toBe(before); // the refused map's fd was closed
    rmSync(path);
  });

  it('refuses a key or value of the wrong size before the kernel reads past it', () => {
    const spec = pinnedMapSpec('inpod_pod_ips');
    const path = pinMap('inpod_pod_ips', spec.keySize, spec.valueSize);
    const m = BpfMap.pinned(path, spec)!;
    expect(() => m.update(Buffer.alloc(2), encodeU64(1n))).toThrow(RangeError);
    expect(() => m.update(Buffer.alloc(4), Buffer.alloc(4))).toThrow(/a value of 4 bytes, the map's are 8/);
    expect(() => m.lookup(Buffer.alloc(8))).toThrow(/a key of 8 bytes, the map's are 4/);
    expect(m.keys()).toEqual([]);
    m.close();
    rmSync(path);
  });
});

describe('BpfObject', () => {
  it('hands out its loaded maps sized by the kernel (per-CPU values for every CPU) and closes them with itself', () => {
    const before = fdCount();
    const obj = BpfObject.open('fastpath', pinRoot, null);
    obj.load();
    const stats = obj.map('inpod_fp_stats');
    expect(stats.valueBytes).toBe(8 * numPossibleCpus());
    expect(stats.sumPerCpu(0)).toBe(0n);
    expect(obj.map('inpod_fp_stats')).toBe(stats);
    const flows = obj.map('inpod_fp_flows');
    expect([flows.keySize, flows.valueSize]).toEqual([8, LAYOUT.inpod_fp_flow.sizeof]);
    obj.destroy();
    expect(stats.closed && flows.closed).toBe(true);
    expect(fdCount()).toBe(before);
    expect(readdirSync(pinRoot)).toEqual([]); // the fast path pins nothing
  });
});
