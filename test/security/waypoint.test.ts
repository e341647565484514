/**
 * Attempts to use the waypoint exception of the HBONE inbound (ztunnel src/proxy/inbound.rs
 * `validate_destination`: a CONNECT's authority may name another address only when the pod it
 * reaches is that address's waypoint) to reach an app through a pod that is not the waypoint, or
 * to have a waypoint deliver to an address it does not serve. An attacker holds a valid mesh
 * certificate and connects from outside the mesh (the node netns). The check is the proxy's, the
 * same under both capture backends, so this runs under eBPF only.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Service } from '../../ts/state/types.js';
import { until } from '../../ts/util/until.js';
import { TestMesh, connectStatus } from './mesh.js';

describe('the waypoint exception of the HBONE inbound cannot be borrowed', () => {
  let m: TestMesh;
  let vip: string, vipOther: string;

  /** The status `ip`'s 15008 answers a CONNECT to `authority` with, for a client holding sleep's certificate. */
  const connect = async (ip: string, authority: string): Promise<number | string> => {
    const session = await m.hboneSession(ip, 'default', 'sleep');
    try {
      return await connectStatus(session, authority);
    } finally {
      session.destroy();
    }
  };
  const accepted = async (pod: string): Promise<number> => (await m.sh[pod]!.accepted((await m.sh[pod]!.listenerByTag(pod)).id)).length;

  beforeAll(async () => {
    m = await TestMesh.create('ebpf', [
      { name: 'web', namespace: 'shop', serviceAccount: 'web' },
      { name: 'waypoint', namespace: 'shop', serviceAccount: 'waypoint' },
      { name: 'other', namespace: 'shop', serviceAccount: 'other' },
    ]);
    const base = m.lab.node.subnet.replace(/\.0\/24$/, '');
    [vip, vipOther] = [`${base}.200`, `${base}.201`];
    const s = m.state.snapshot.state;
    const svc = (name: string, address: string, wp: string): Service => ({
      name, namespace: 'shop', hostname: `${name}.shop.svc.cluster.local`, vips: [{ network: '', address }], ports: { 80: 8080 }, subjectAltNames: [],
      waypoint: { address: wp, network: '', hboneMtlsPort: 15008 },
    });
    // web's service has the waypoint pod as its waypoint; another service has "other" as its waypoint
    m.state.set({ ...s, services: [svc('web', vip, m.pods.waypoint!.ip), svc('elsewhere', vipOther, m.pods.other!.ip)] });
    for (const p of ['web', 'waypoint', 'other']) await m.sh[p]!.listen({ port: 8080, tag: p });
  }, 60_000);
  afterAll(async () => {
    await m?.close();
  });

  it("names the service VIP at web's own 15008 (as if web were its waypoint): 400, web's app never reached", async () => {
    const before = await accepted('web');
    expect(await connect(m.pods.web!.ip, `${vip}:80`)).toBe(400);
    expect(await accepted('web')).toBe(before);
  });

  it("names the waypoint's address at web's 15008: 400, neither app reached", async () => {
    const [w, wp] = [await accepted('web'), await accepted('waypoint')];
    expect(await connect(m.pods.web!.ip, `${m.pods.waypoint!.ip}:8080`)).toBe(400);
    expect([await accepted('web'), await accepted('waypoint')]).toEqual([w, wp]);
  });

  it("names, at the waypoint, a service whose waypoint is another pod: 400, that pod's app never reached", async () => {
    const [wp, o] = [await accepted('waypoint'), await accepted('other')];
    expect(await connect(m.pods.waypoint!.ip, `${vipOther}:80`)).toBe(400);
    expect([await accepted('waypoint'), await accepted('other')]).toEqual([wp, o]);
  });

  it('names, at the real waypoint, the service it serves: admitted, and delivered to the waypoint pod itself, never to the VIP or the service\'s pods', async () => {
    const [w, wp] = [await accepted('web'), await accepted('waypoint')];
    expect(await connect(m.pods.waypoint!.ip, `${vip}:8080`)).toBe(200);
    expect(await accepted('web')).toBe(w);
    // the 200 says the proxy's connect completed (the kernel's handshake), not that the app's
    // accept() has run yet: no bytes cross this tunnel to prove it, so wait for the accept
    const listener = (await m.sh.waypoint!.listenerByTag('waypoint')).id;
    let got = await m.sh.waypoint!.accepted(listener);
    await until('the waypoint app to accept the connection', async () => (got = await m.sh.waypoint!.accepted(listener)).length > wp, { timeoutMs: 5000 });
    expect(got.length).toBe(wp + 1);
    expect(got.at(-1)!.sockname).toEqual({ host: m.pods.waypoint!.ip, port: 8080 });
  });
});
