/** The bench's parsers and summaries, on captured output of the real tools. */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { iperfNotReady, parseConnrate, parseDurationMs, parseIperf, parseLatency, parseWrk } from '../../ts/bench/loads.js';
import { parseCgroupUsage, parsePidStat, parseProcMemory, parseProcStat, parseSoftirqs } from '../../ts/bench/cpu.js';
import { parseBenchArgs } from '../../ts/bench/index.js';
import { ALL_CONFIGS } from '../../ts/bench/env.js';
import { configsOf } from '../../ts/bench/report.js';
import { percentile, ratio, stat, type Row } from '../../ts/bench/stats.js';
import { connectionPlan, listeningPorts } from '../../ts/bench/memory.js';
import { shebangLaunch } from '../../ts/bench/procs.js';

const WRK = `Running 2s test @ http://10.200.113.3:80/1k
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   142.11us   50.00us   2.10ms   90.00%
    Req/Sec   112.91k     3.10k  118.00k    70.00%
  Latency Distribution
     50%  136.00us
     75%  150.00us
     90%  157.00us
     99%    1.24ms
  235955 requests in 2.10s, 293.33MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec: 112355.73
Transfer/sec:    139.68MB
`;

describe('bench parsers', () => {
  it('reads rate, latency percentiles and errors from wrk --latency', () => {
    expect(parseWrk(WRK)).toEqual({ rps: 112355.73, p50: 0.136, p90: 0.157, p99: 1.24, requests: 235955, errors: 3 });
  });

  it('converts every wrk duration unit to milliseconds', () => {
    expect(parseDurationMs('812.00us')).toBeCloseTo(0.812);
    expect(parseDurationMs('2.00s')).toBe(2000);
    expect(parseDurationMs('1.5m')).toBe(90000);
    expect(() => parseDurationMs('fast')).toThrow(/unrecognised/);
  });

  it('reads the received rate of iperf3 -J and reports its errors', () => {
    const j = JSON.stringify({ end: { sum_received: { bits_per_second: 8.5e9, bytes: 2135425024 }, sum_sent: { retransmits: 3 } } });
    expect(parseIperf(j)).toEqual({ gbps: 8.5, bytes: 2135425024, retransmits: 3 });
    expect(() => parseIperf(JSON.stringify({ error: 'unable to connect to server' }))).toThrow(/unable to connect/);
    // a server still letting the last test go is asked again (iperf3's own messages); other errors are not
    expect(iperfNotReady(JSON.stringify({ error: 'the server is busy running a test. try again later' }))).toBe(true);
    expect(iperfNotReady(JSON.stringify({ error: 'error - unable to receive control message - port may not be available, the other side may have stopped running, etc.: Connection reset by peer' }))).toBe(true);
    expect(iperfNotReady(JSON.stringify({ error: 'unable to connect to server: Connection refused' }))).toBe(false);
    expect(iperfNotReady(j)).toBe(false);
    expect(iperfNotReady('not json')).toBe(false);
  });

  it('reads inpod-connrate output', () => {
    expect(parseConnrate('{"conns":20000,"errors":1,"seconds":2.000,"p50_us":605,"p99_us":1215}\n')).toEqual({ cps: 10000, conns: 20000, errors: 1, p50: 0.605, p99: 1.215 });
  });

  it('reads inpod-latency output (microseconds in, milliseconds out) and refuses a run that answered nothing', () => {
    expect(parseLatency('{"requests":8000,"errors":0,"late":3,"seconds":8.000,"p50_us":212.5,"p90_us":301.5,"p99_us":1204.5}\n'))
      .toEqual({ rps: 1000, requests: 8000, errors: 0, late: 3, p50: 0.2125, p90: 0.3015, p99: 1.2045 });
    expect(() => parseLatency('{"requests":0,"errors":16,"late":0,"seconds":10.0,"p50_us":1000000,"p90_us":1000000,"p99_us":1000000}')).toThrow(/gave no result/);
  });

  it('reads /proc counters, including a command name with spaces and parentheses', () => {
    const stat = '4242 (fwd (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0 100 1000 200';
    expect(parsePidStat(stat)).toEqual({ user: 2.5, sys: 0.75 });
    expect(parseProcStat('cpu  100 0 50 1000 5 0 20 0 0 0\ncpu0 1 2 3\n')).toEqual({ softirq: 0.2, busy: 1.7, irq: 0.2 });
    expect(parseSoftirqs('       CPU0  CPU1\n  NET_TX:  1  2\n  NET_RX:  10  20\n  TIMER: 5 5\n')).toBe(33);
    expect(parseProcMemory('Name:\tx\nVmRSS:\t   3120 kB\n').rssKb).toBe(3120);
    expect(parseCgroupUsage('usage_usec 2500000\nuser_usec 1\n')).toBe(2.5);
  });
});

describe('bench summaries and options', () => {
  it('takes nearest-rank percentiles and median/min/max', () => {
    expect(percentile([5, 1, 4, 2, 3], 50)).toBe(3);
    expect(percentile([1, 2, 3, 4, 100], 99)).toBe(100);
    expect(stat([3, 1, 2])).toEqual({ median: 2, min: 1, max: 3, n: 3 });
  });

  it('gives a ratio with the worst case of both spreads', () => {
    expect(ratio(stat([10, 12]), stat([4, 5]))).toEqual({ value: 11 / 4.5, low: 2, high: 3 });
  });

  it('plans a quick run, and puts --pods at the top of the enrollment levels', () => {
    const q = parseBenchArgs(['--quick']);
    expect(q.traffic.reps).toBe(2);
    expect(q.enroll?.levels).toEqual([10, 50]);
    expect(parseBenchArgs(['--pods', '150']).enroll?.levels).toEqual([10, 100, 150]);
    // the full run measures the real proxy too (HBONE, and passthrough with and without the
    // kernel fast path), with 3 repetitions
    expect(parseBenchArgs([])).toMatchObject({ proxy: true, traffic: { reps: 3 }, configs: ALL_CONFIGS });
    expect(ALL_CONFIGS).toContain('proxy-fastpath');
    expect(parseBenchArgs(['--no-proxy'])).toMatchObject({ proxy: false, traffic: { reps: 5 } });
    expect(q.proxy).toBe(false);
    expect(parseBenchArgs(['--quick', '--proxy']).proxy).toBe(true);
    expect(() => parseBenchArgs(['--pods', 'x'])).toThrow(/integer/);
  });

  it('runs only the configurations --configs names, without the enrollment rows', () => {
    const o = parseBenchArgs(['--configs', 'proxy-fastpath,proxy-passthrough']);
    expect(o.configs).toEqual(['proxy-passthrough', 'proxy-fastpath']);
    expect(o).toMatchObject({ proxy: true, enroll: null });
    expect(parseBenchArgs(['--configs', 'nomesh,ebpf'])).toMatchObject({ proxy: false, configs: ['nomesh', 'ebpf'] });
    expect(() => parseBenchArgs(['--configs', 'fast'])).toThrow(/--configs fast: choose from nomesh, iptables, ebpf/);
  });

  it("runs proxy-h2default (proxy-ebpf with Node's HTTP/2 defaults, the before of ztunnel's settings) only when --configs names it", () => {
    expect(parseBenchArgs([]).configs).not.toContain('proxy-h2default');
    expect(parseBenchArgs(['--configs', 'proxy-h2default,proxy-ebpf'])).toMatchObject({ proxy: true, configs: ['proxy-ebpf', 'proxy-h2default'] });
    // and the report lists its rows (it listed only ALL_CONFIGS' before this change)
    expect(configsOf([{ config: 'proxy-h2default' }, { config: 'proxy-ebpf' }] as Row[])).toEqual(['proxy-ebpf', 'proxy-h2default']);
  });
});

describe('bench memory scenario, parsers and plan', () => {
  it('reads RSS, its anonymous and file-backed parts and the high-water mark from /proc/<pid>/status', () => {
    const status = 'Name:\tnode\nVmHWM:\t  150000 kB\nVmRSS:\t  130000 kB\nRssAnon:\t   84000 kB\nRssFile:\t   46000 kB\nRssShmem:\t       0 kB\n';
    expect(parseProcMemory(status)).toEqual({ rssKb: 130000, anonKb: 84000, fileKb: 46000, hwmKb: 150000 });
    expect(parseProcMemory('Name:\tx\n')).toEqual({ rssKb: 0, anonKb: 0, fileKb: 0, hwmKb: 0 });
  });

  it("finds a process's listening ports in ss -Hltnp output, and no other process's", () => {
    const ss = [
      'LISTEN 0      511        127.0.0.1:40001      0.0.0.0:*    users:(("node",pid=4242,fd=21))',
      'LISTEN 0      511        127.0.0.1:40002      0.0.0.0:*    users:(("node",pid=42420,fd=21))',
      'LISTEN 0      511             [::]:15008         [::]:*    users:(("node",pid=4242,fd=30))',
    ].join('\n');
    expect(listeningPorts(ss, 4242)).toEqual([40001, 15008]);
  });

  it('sends each pod\'s connections to the next pod\'s app, the last pod to the first', () => {
    const pods = [0, 1, 2].map((i) => ({ name: `m${i}`, netnsName: `x${i}`, netnsPath: `/run/netns/x${i}`, ip: `10.200.1.${i + 2}`, containerId: '' }));
    const plan = connectionPlan(pods, 7);
    expect(plan).toHaveLength(7);
    expect(plan.filter((c) => c.netns === '/run/netns/x2').map((c) => c.ip)).toEqual(['10.200.1.2', '10.200.1.2']);
    expect(plan.filter((c) => c.netns === '/run/netns/x0').map((c) => c.ip)).toEqual(['10.200.1.3', '10.200.1.3', '10.200.1.3']);
  });

  it('starts a proxy build as its entry\'s first line says: env -S variables and node flags', () => {
    expect(shebangLaunch('#!/usr/bin/env -S node --max-semi-space-size=1')).toEqual({ env: [], nodeArgs: ['--max-semi-space-size=1'] });
    expect(shebangLaunch('#!/usr/bin/env -S MALLOC_ARENA_MAX=2 node --a --b=1')).toEqual({ env: ['MALLOC_ARENA_MAX=2'], nodeArgs: ['--a', '--b=1'] });
    expect(shebangLaunch('#!/usr/bin/env node')).toEqual({ env: [], nodeArgs: [] });
    // the bench's proxy starts as the image's `inpod` does: two glibc arenas, a 1 MiB young generation
    expect(shebangLaunch(readFileSync(new URL('../../ts/cli/main.ts', import.meta.url), 'utf8').split('\n', 1)[0]!))
      .toEqual({ env: ['MALLOC_ARENA_MAX=2'], nodeArgs: ['--max-semi-space-size=1'] });
    expect(shebangLaunch('/** not a shebang */')).toEqual({ env: [], nodeArgs: [] });
  });

  it('--memory alone runs the memory scenario only (no traffic or enrollment rows); with --configs, beside those rows', () => {
    const alone = parseBenchArgs(['--memory']);
    expect(alone.configs).toEqual([]);
    expect(alone.enroll).toBeNull();
    expect(alone.memory).toMatchObject({ pods: 100, conns: 1000 });
    const beside = parseBenchArgs(['--memory', '--configs', 'proxy-ebpf', '--proxy-cli', '/tmp/x/main.js']);
    expect(beside.configs).toEqual(['proxy-ebpf']);
    expect(beside.memory).not.toBeNull();
    expect(beside.proxyCli).toBe('/tmp/x/main.js');
    expect(parseBenchArgs(['--quick']).memory).toBeNull();
  });
});
