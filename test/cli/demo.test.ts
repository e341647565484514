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
  it('captures dual-stack pods, carries each family over HBONE, reports, unenrolls live, cleans up, and exits 0 on its own', async () => {
    const { stdout } = await run('node', [CLI, 'demo'], { timeout: 90_000, killSignal: 'SIGKILL' });
    const [v4, v6] = ['[\\d.]+', '\\[[0-9a-f:]+\\]'];
    // pods with an address of each family (bridge + host-local with an IPv4 and an IPv6 range)
    expect(stdout).toMatch(/2\. pod server created through bridge \+ host-local \+ inpod-cni: [\d.]+ and fd00:200:[0-9a-f:]+, captured/);
    expect(stdout).toMatch(/3\. client -> [\d.]+:8080 answered: hello [\d.]+, you said "hi over the mesh"/);
    expect(stdout).toMatch(/ client -> \[fd00:200:[0-9a-f:]+\]:8080 answered: hello fd00:200:[0-9a-f:]+, you said "hi over the mesh"/);
    // ztunnel's access-log line, both ends and both families: the client sent 16 bytes and received the answer's
    for (const [ip, answered] of [[v4, /3\. client -> [\d.]+:8080 answered: (.*)/], [v6, / client -> \[[0-9a-f:]+\]:8080 answered: (.*)/]] as const) {
      const answer = answered.exec(stdout)![1]!.length;
      expect(stdout).toMatch(new RegExp(`access log: connection complete src\\.addr=${ip}:\\d+ src\\.workload="client" src\\.namespace="demo" src\\.identity="spiffe://cluster\\.local/ns/demo/sa/sleep" ` +
        `.*dst\\.addr=${ip}:15008 dst\\.hbone_addr=${ip}:8080 .*direction="outbound" bytes_sent=16 bytes_recv=${answer} duration="\\d+ms"`));
      expect(stdout).toMatch(new RegExp(`access log: connection complete src\\.addr=${ip}:\\d+ .*direction="inbound" bytes_sent=${answer} bytes_recv=16`));
    }
    // one series for both connections: 16 bytes received on each
    expect(stdout).toMatch(/istio_tcp_received_bytes_total\{reporter="destination",source_workload="client",source_canonical_service="sleep",.*destination_canonical_service="web",destination_canonical_revision="v2",response_flags="-",connection_security_policy="mutual_tls"\} 32/);
    expect(stdout).toMatch(/captured pods now: 0/);
    expect(stdout).toMatch(/client -> [\d.]+:8080 answered: .*you said "hi directly" \(the proxy saw nothing\)/);
    expect(stdout).toMatch(/client -> \[[0-9a-f:]+\]:8080 answered: .*you said "hi directly" \(the proxy saw nothing\)/);
    expect(stdout).toMatch(/5\. cleaned up/);
  }, 120_000);
});
