/** procscan.ts: pods' netns found in /proc by their cgroup, one pass for all pods asked about. */
import { describe, expect, it } from 'vitest';
import { scanProc } from '../../ts/agent/procscan.js';
import { FakeProc } from './fakes.js';

describe('scanProc', () => {
  const uid = '6f1c2f5e-8f0e-4c4e-9d7b-0a2b9c1d3e4f';
  const other = '0b1e6a9c-1111-2222-3333-444455556666';

  it('finds a pod by its cgroup under the cgroupfs driver (dashes) and the systemd driver (underscores), in one pass', () => {
    const proc = new FakeProc('/ns');
    proc.procs.set('1', '0::/init.scope\n');
    proc.procs.set('40', `0::/kubepods/burstable/pod${uid}/cri-containerd-abc.scope\n`);
    proc.procs.set('41', `0::/kubepods/burstable/pod${uid}/cri-containerd-def.scope\n`);
    proc.procs.set('50', `0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${other.replace(/-/g, '_')}.slice/cri-containerd-x.scope\n`);
    const found = scanProc([uid, other, 'not-running'], proc);
    expect(found).toEqual(new Map([[uid, ['/ns/proc-40-ns-net', '/ns/proc-41-ns-net']], [other, ['/ns/proc-50-ns-net']]]));
    expect(proc.scans).toBe(1);
  });

  it('does not read /proc when no pod is asked about, and skips processes that are gone', () => {
    const proc = new FakeProc('/ns');
    expect(scanProc([], proc).size).toBe(0);
    expect(proc.scans).toBe(0);
    proc.procs.set('7', null as unknown as string); // exited between readdir and the read
    expect(scanProc([uid], proc).size).toBe(0);
  });

  it('reads the real /proc: a uid no process has is not found', () => {
    expect(scanProc([`inpod-test-${process.pid}-no-such-pod`]).size).toBe(0);
  });
});
