/**
 * `inpod ztunnel --xds-address` as a process (the built CLI), against the fake istiod: its state
 * comes from istiod (admin /config_dump), its istio_xds_* series are on /metrics, and it is not
 * ready and takes no pods until istiod's state has arrived, as ztunnel (src/app.rs starts the
 * inpod manager only once xDS is ready). The node it says it is comes from the DaemonSet's
 * environment (ztunnel src/xds/client.rs Config::node).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { CLI, freePorts } from '../cli.js';
import { ADDRESS_TYPE, AUTHORIZATION_TYPE } from '../../ts/xds/proto.js';
import { RECORDED_ADDRESSES, RECORDED_AUTHORIZATIONS } from '../fixtures/istiod/resources.js';
import { rig, until, type Rig } from './harness.js';

let r: Rig | undefined;
let proc: ChildProcess | undefined;
afterEach(async () => {
  if (proc && proc.exitCode === null) {
    const gone = new Promise((res) => proc!.once('exit', res));
    proc.kill('SIGKILL');
    await gone;
  }
  proc = undefined;
  await r?.close();
  r = undefined;
});

async function get(url: string): Promise<{ status: number; body: string }> {
  try {
    const res = await fetch(url);
    return { status: res.status, body: await res.text() };
  } catch {
    return { status: 0, body: '' };
  }
}

describe('inpod ztunnel --xds-address', () => {
  it('takes its state from istiod, says so on its admin and metrics ports, and stays not ready until it has it', async () => {
    r = await rig({ requireToken: true });
    r.xds.pause(); // istiod answers nothing yet
    const tokenFile = join(r.istiod.dir, 'istio-token');
    writeFileSync(tokenFile, 'projected-token');
    const [admin, metrics, ready] = await freePorts(3);
    let out = '';
    proc = spawn('node', [CLI, 'ztunnel', '--xds-address', r.istiod.address, '--xds-root-ca', r.istiod.rootCertFile, '--auth-token', tokenFile,
      '--zds', join(r.istiod.dir, 'no-agent.sock'), '--ca-dir', join(r.istiod.dir, 'ca'),
      '--admin-addr', `127.0.0.1:${admin}`, '--metrics-addr', `127.0.0.1:${metrics}`, '--readiness-addr', `127.0.0.1:${ready}`], {
      env: { ...process.env, POD_NAME: 'ztunnel-x1', POD_NAMESPACE: 'istio-system', NODE_NAME: 'node-a', INSTANCE_IP: '10.0.0.9', ISTIO_META_CLUSTER_ID: 'cluster-1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    proc.stdout!.on('data', (d) => (out += d));
    proc.stderr!.on('data', (d) => (out += d));

    // the stream is up, but no state has arrived
    await until('the proxy to connect', () => r!.xds.openStreams.length === 1);
    // ztunnel's readiness task names (app.rs): the state manager waits for istiod, the workload proxy manager for the agent
    await expect.poll(() => get(`http://127.0.0.1:${ready}/healthz/ready`), { timeout: 20_000 }).toEqual({ status: 500, body: 'not ready, pending: state manager, workload proxy manager\n' });
    const s = r.xds.streams[0]!;
    expect(s.metadata).toMatchObject({ authorization: 'Bearer projected-token', clusterid: 'cluster-1' });
    expect(s.requests[0]!.node?.id).toBe('ztunnel~10.0.0.9~ztunnel-x1.istio-system~istio-system.svc.cluster.local');
    expect(s.requests[0]!.node?.metadata?.fields.CLUSTER_ID).toMatchObject({ string_value: 'cluster-1' });

    for (const [name, a] of Object.entries(RECORDED_ADDRESSES)) r.xds.set(ADDRESS_TYPE, name, a);
    for (const [name, a] of Object.entries(RECORDED_AUTHORIZATIONS)) r.xds.set(AUTHORIZATION_TYPE, name, a);
    r.xds.resume();
    // now the agent is what it waits for (there is none in this test)
    await expect.poll(() => get(`http://127.0.0.1:${ready}/healthz/ready`), { timeout: 20_000 }).toEqual({ status: 500, body: 'not ready, pending: workload proxy manager\n' });
    const health = JSON.parse((await get(`http://127.0.0.1:${admin}/state`)).body) as { source: string; workloads: number; policies: number };
    expect(health).toMatchObject({ source: `istiod at ${r.istiod.address} (xDS)`, workloads: 2, policies: 1 });
    const dump = JSON.parse((await get(`http://127.0.0.1:${admin}/config_dump`)).body) as { workloads: { name: string }[]; services: { hostname: string }[]; policies: { name: string }[] };
    expect(dump.workloads.map((w) => w.name).sort()).toEqual(['sleep-0', 'web-0']);
    expect(dump.services.map((x) => x.hostname)).toEqual(['web.shop.svc.cluster.local']);
    expect(dump.policies.map((p) => p.name)).toEqual(['allow-sleep']);
    const m = (await get(`http://127.0.0.1:${metrics}/metrics`)).body;
    expect(m).toContain(`istio_xds_message_total{url="${ADDRESS_TYPE}"}`);
    expect(m).toContain(`istio_xds_message_total{url="${AUTHORIZATION_TYPE}"}`);
    expect(out).not.toMatch(/"level":50/);
  });

  it('refuses two state sources at once, naming them', async () => {
    const res = await new Promise<{ code: number | null; err: string }>((resolve) => {
      const p = spawn('node', [CLI, 'ztunnel', '--xds-address', 'localhost:1', '--kubeconfig', '/nonexistent'], { stdio: ['ignore', 'pipe', 'pipe'] });
      let err = '';
      p.stderr.on('data', (d) => (err += d));
      p.stdout.on('data', (d) => (err += d));
      p.on('exit', (code) => resolve({ code, err }));
    });
    expect(res.code).not.toBe(0);
    expect(res.err).toContain('--xds-address and --kubeconfig: the state comes from one source; choose one');
  });
});
