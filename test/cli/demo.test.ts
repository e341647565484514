/**
 * `inpod demo` as a user runs it (make demo): the whole path on this host, and the process exits
 * by itself when done (a socket left half-open once kept it alive forever).
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { CLI } from '../cli.js';

const run = promisify(execFile);

describe('inpod demo', () => {
  it('captures, carries over HBONE, reports, unenrolls live, cleans up, and exits 0 on its own', async () => {
    const { stdout } = await run('node', [CLI, 'demo'], { timeout: 90_000, killSignal: 'SIGKILL' });
    expect(stdout).toMatch(/3\. client -> [\d.]+:8080 answered: hello [\d.]+, you said "hi over the mesh"/);
    // ztunnel's access-log line, both ends: the client sent 16 bytes and received the answer's
    const answer = /3\. client -> [\d.]+:8080 answered: (.*)/.exec(stdout)![1]!.length;
    expect(stdout).toMatch(new RegExp(`access log: connection complete src\\.addr=[\\d.]+:\\d+ src\\.workload="client" src\\.namespace="demo" src\\.identity="spiffe://cluster\\.local/ns/demo/sa/sleep" ` +
      `.*dst\\.addr=[\\d.]+:15008 dst\\.hbone_addr=[\\d.]+:8080 .*direction="outbound" bytes_sent=16 bytes_recv=${answer} duration="\\d+ms"`));
    expect(stdout).toMatch(new RegExp(`access log: connection complete .*direction="inbound" bytes_sent=${answer} bytes_recv=16`));
    expect(stdout).toMatch(/istio_tcp_received_bytes_total\{reporter="destination",source_workload="client",source_canonical_service="sleep",.*destination_canonical_service="web",destination_canonical_revision="v2",response_flags="-",connection_security_policy="mutual_tls"\} 16/);
    expect(stdout).toMatch(/captured pods now: 0/);
    expect(stdout).toMatch(/you said "hi directly" \(the proxy saw nothing\)/);
    expect(stdout).toMatch(/5\. cleaned up/);
  }, 120_000);
});
