/**
 * Istio's numbers have one home, ts/istio.ts, and the eBPF programs take them from there: the
 * loader writes them into each capture program's .rodata (bpf/include/config.h keeps no copy).
 * Checked against the kernel: what the attached programs hold is read back with bpftool (by the
 * C field names, from the programs' BTF), and a program given no numbers must fail to load
 * rather than run with zeros. Programs attach to a child cgroup this test creates, never to the
 * cgroup2 root; pins live under a per-run prefix.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MARKS, PORTS } from '../../ts/istio.js';
import { EbpfBackend, ISTIO_CONFIG } from '../../ts/redirect/ebpf.js';
import { cgroup2Mount } from '../../ts/redirect/preflight.js';
import { BpfObject } from '../../ts/native/index.js';
import { encodeConfig, LAYOUT, type CaptureConfig } from '../../ts/native/structs.js';

const CAPTURE_OBJECTS = ['connect', 'sockops', 'sk_lookup', 'getsockopt'];
const ALL_PROGRAMS = [
  'inpod_connect4', 'inpod_connect6', 'inpod_sendmsg4', 'inpod_sendmsg6', 'inpod_recvmsg4', 'inpod_recvmsg6',
  'inpod_getpeername4', 'inpod_getpeername6', 'inpod_sockops', 'inpod_getsockopt', 'inpod_sk_lookup',
];

/** ts/istio.ts, named as the C struct names its fields (bpf/include/types.h, struct inpod_config). */
const EXPECTED = {
  proxy_mark: MARKS.proxy,
  spoof_mark: MARKS.spoof,
  outbound_port: PORTS.outbound,
  inbound_port: PORTS.inboundPlaintext,
  hbone_port: PORTS.hbone,
  dns_port: PORTS.dns,
};

function bpftool<T>(...args: string[]): T {
  return JSON.parse(execFileSync('bpftool', ['-j', ...args]).toString()) as T;
}

/** The inpod_cfg a loaded program holds, as the kernel has it in the program's .rodata map. */
function loadedConfig(progId: number): Record<string, number> {
  const prog = bpftool<{ map_ids: number[] }>('prog', 'show', 'id', String(progId));
  const rodata = prog.map_ids.filter((id) => bpftool<{ name: string }>('map', 'show', 'id', String(id)).name.endsWith('.rodata'));
  expect(rodata, `program ${progId} has one .rodata map`).toHaveLength(1);
  const [entry] = bpftool<{ formatted: { value: { '.rodata': Record<string, Record<string, number>>[] } } }[]>('map', 'dump', 'id', String(rodata[0]));
  const cfg = entry!.formatted.value['.rodata'].find((v) => 'inpod_cfg' in v);
  expect(cfg, `program ${progId}'s .rodata holds inpod_cfg`).toBeDefined();
  return cfg!.inpod_cfg!;
}

describe('Istio numbers: ts/istio.ts and the loaded eBPF programs agree', () => {
  const prefix = `t${randomBytes(2).toString('hex')}`;
  const pinRoot = `/sys/fs/bpf/${prefix}inpod`;
  let cgroupPath: string;
  let stateDir: string;
  let backend: EbpfBackend;

  beforeAll(async () => {
    const root = cgroup2Mount(readFileSync('/proc/mounts', 'utf8'));
    if (!root) throw new Error('no cgroup2 mount in /proc/mounts');
    cgroupPath = join(root, `${prefix}cg`);
    mkdirSync(cgroupPath);
    stateDir = mkdtempSync(join(tmpdir(), `${prefix}state`));
    backend = new EbpfBackend({ cgroupPath, pinRoot, stateDir });
    await backend.install();
  });

  afterAll(async () => {
    await backend?.uninstall().catch(() => {});
    rmSync(pinRoot, { recursive: true, force: true });
    if (cgroupPath) rmdirSync(cgroupPath);
    if (stateDir) rmSync(stateDir, { recursive: true, force: true });
  });

  it('every installed capture program holds ts/istio.ts\'s ports and marks, read back from the kernel', () => {
    const progs = new Map<string, number>();
    for (const pin of readdirSync(join(pinRoot, 'links'))) {
      const name = pin.replace(/^cgroup-\d+-/, '');
      progs.set(name, bpftool<{ prog_id: number }>('link', 'show', 'pinned', join(pinRoot, 'links', pin)).prog_id);
    }
    progs.set('inpod_sk_lookup', bpftool<{ id: number }>('prog', 'show', 'pinned', join(pinRoot, 'progs', 'inpod_sk_lookup')).id);
    expect([...progs.keys()].sort()).toEqual([...ALL_PROGRAMS].sort());
    for (const [name, id] of progs) expect(loadedConfig(id), name).toEqual(EXPECTED);
  });

  it('a capture program given no ports and marks does not load (the C side has no numbers of its own)', () => {
    for (const obj of CAPTURE_OBJECTS) {
      const o = BpfObject.open(obj, pinRoot, null);
      try {
        // the verifier refuses the return value of the unconfigured path (bpf/include/config.h)
        expect(() => o.load(), obj).toThrow(/R0 .*should have been in/);
      } finally {
        o.destroy();
      }
    }
  });

  it('a capture program missing any one of the numbers does not load; given all of them it does', () => {
    const load = (c: CaptureConfig): void => {
      const o = BpfObject.open('sk_lookup', pinRoot, encodeConfig(c));
      try {
        o.load();
      } finally {
        o.destroy();
      }
    };
    expect(Object.keys(ISTIO_CONFIG)).toHaveLength(Object.keys(LAYOUT.inpod_config.offsetof).length);
    for (const field of Object.keys(ISTIO_CONFIG) as (keyof CaptureConfig)[]) {
      expect(() => load({ ...ISTIO_CONFIG, [field]: 0 }), field).toThrow(/R0 .*should have been in/);
    }
    expect(() => load(ISTIO_CONFIG)).not.toThrow();
  });
});
