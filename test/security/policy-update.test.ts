/**
 * A connection opened before a DENY, as an attacker cut off by policy would try to keep using
 * it: the proxy decides open connections again when the policies change and closes those now
 * denied, as ztunnel's PolicyWatcher does (src/proxy/connection_manager.rs). Tried on the
 * plaintext inbound path (15006, a client outside the mesh), relayed by Node and spliced in the
 * kernel (--fast-path on), where the proxy no longer reads the bytes itself.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { parseLocalConfig } from '../../ts/state/localconfig.js';
import { until } from '../netns/lab.js';
import { TestMesh } from './mesh.js';

let m: TestMesh | undefined;
afterEach(async () => {
  await m?.close();
  m = undefined;
});

describe.each(['off', 'on'] as const)('a policy update against an open connection, fast path %s', (fastPath) => {
  it('keeps sending on a plaintext connection opened before a DENY of plaintext: cut when the DENY arrives, the next one refused', async () => {
    m = await TestMesh.create('ebpf', [
      { name: 'web', namespace: 'shop', serviceAccount: 'web' },
      { name: 'outsider', namespace: 'default', serviceAccount: 'default', mesh: false },
    ], { fastPath });
    const web = m.pods.web!;
    const sh = m.sh.outsider!;
    await m.sh.web!.listen({ port: 8080, tag: 'app' });
    const open = await sh.connect({ host: web.ip, port: 8080, send: 'before', timeoutMs: 5000 });
    expect(open.ok && open.reply).toBe('app:before');
    if (!open.ok) return;
    // a second round trip: on the fast path this one is carried by the kernel
    expect((await sh.send(open.connId, 'still allowed', 3000)).reply).toBe('app:still allowed');
    const denyPlaintext = (deny: boolean): string => `workloads:
  - {uid: u-web, name: web, namespace: shop, serviceAccount: web, workloadIps: ["${web.ip}"], protocol: HBONE}
${deny ? 'policies:\n  - {name: no-plaintext, namespace: shop, scope: Namespace, action: Deny, dryRun: false, rules: [[[{notPrincipals: [!Presence []]}]]]}\n' : ''}`;
    const from = m.records.length;
    m.state.set(parseLocalConfig(denyPlaintext(true)));
    await until('the open connection closed by the policy update', () => m!.logs(from, (l) => /no longer allowed after a policy update/.test(String(l.msg))).length === 1, { timeoutMs: 5000 });
    const after = (await sh.send(open.connId, 'after the deny', 3000)) as { reply?: string; error?: string };
    // cut: a reset, or the end of the stream (''), never the app's answer
    expect(after.reply ?? after.error).toMatch(/^$|ECONNRESET|EPIPE/);
    await sh.close(open.connId);
    // it was carried where this case says (spliced in the kernel with the fast path on), and nothing after the DENY was relayed
    const done = m.logs(from, (l) => l.msg === 'connection complete' && l.direction === 'inbound');
    expect(done).toEqual([expect.objectContaining({ path: fastPath === 'on' ? 'kernel' : 'userspace' })]);
    expect(Number(done[0]!.bytes_sent) + Number(done[0]!.bytes_recv)).toBe('beforestill allowedapp:beforeapp:still allowed'.length);
    const next = await sh.connect({ host: web.ip, port: 8080, send: 'next', timeoutMs: 3000 });
    expect(next.ok ? next.reply : next.error).toMatch(/^$|ECONNRESET|EOF/);
    // the proxy still serves, and the connection's relay ended (nothing held for it)
    expect(m.zt.policyWatch.size).toBe(0);
    m.state.set(parseLocalConfig(denyPlaintext(false)));
    const again = await sh.connect({ host: web.ip, port: 8080, send: 'again', timeoutMs: 5000 });
    expect(again.ok && again.reply).toBe('app:again');
    if (again.ok) await sh.close(again.connId);
    expect(m.crashes).toEqual([]);
  });
});
