/**
 * The whole Istio-mode path through real processes (issue 17, item 5): a fake istiod in this
 * process (xDS and CA over TLS on loopback, its own root), `inpod agent` enrolling two pods of an
 * ambient namespace made through the real CNI chain, and `inpod ztunnel --xds-address
 * --ca-address` with no CA of its own and no Kubernetes access: everything it knows of the two
 * pods (IPs, identities, HBONE, node) and every policy comes from the WDS resources istiod serves,
 * every certificate from istiod's CA, as upstream's ztunnel chart runs it (istio
 * manifests/charts/ztunnel/templates/daemonset.yaml; deploy/components/istio here).
 *
 * What a user would notice: the bytes arrive and the answer returns; the app sees the client
 * pod's IP; both ends of the HBONE connection hold the identities istiod issued (one CSR per
 * identity, impersonated as ztunnel does, src/identity/caclient.rs; no private key ever sent);
 * a DENY pushed live closes the connection open (as ztunnel's PolicyWatcher) and refuses the
 * next before the app sees a byte, and the proxy ACKs it; once it is removed traffic flows again.
 * A Service VIP istiod sent routes to the pod, and the server's proxy finds its own workload
 * though istiod's uid ("<cluster>//Pod/<ns>/<name>") is not the pod's UID that ZDS hands over.
 */
import { X509Certificate } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BackendName } from '../../ts/redirect/backend.js';
import { caWire } from '../../ts/identity/istio-ca.js';
import { ADDRESS_TYPE, AUTHORIZATION_TYPE } from '../../ts/xds/proto.js';
import { addCaService, type FakeCa } from '../fixtures/istiod/ca.js';
import { startFakeIstiod, type FakeIstiod } from '../fixtures/istiod/index.js';
import { ipBytes } from '../fixtures/istiod/resources.js';
import { addXdsService, type FakeXds } from '../fixtures/istiod/xds.js';
import { type LabPod, type PodShell, until as untilFor } from './lab.js';
import { Rig } from './rig.js';

const NODE = 'node1';
const NS = 'mesh';
const TOKEN = 'projected-token-of-istio-system-ztunnel';
const CLIENT_ID = 'spiffe://cluster.local/ns/mesh/sa/sleep';
const SERVER_ID = 'spiffe://cluster.local/ns/mesh/sa/web';
const DENY = 'mesh/deny-sleep';
const HOST = 'web.mesh.svc.cluster.local';
/** the web Service's VIP (inside the lab's range: a packet that escaped capture would stay in the lab) */
const VIP = '10.200.253.80';

/** The Address istiod sends for a pod of this node (pilot/pkg/serviceregistry/kube/controller/ambient: uid "<cluster>//Pod/<ns>/<name>"). */
function podAddress(pod: LabPod, sa: string): object {
  return {
    workload: {
      uid: `Kubernetes//Pod/${NS}/${pod.name}`, name: pod.name, namespace: NS, addresses: [ipBytes(pod.ip)], tunnel_protocol: 1,
      trust_domain: 'cluster.local', service_account: sa, node: NODE, canonical_name: pod.name, canonical_revision: 'latest',
      workload_type: 2, workload_name: pod.name, status: 0, cluster_id: 'Kubernetes',
      ...(sa === 'web' ? { services: { [`${NS}/${HOST}`]: { ports: [{ service_port: 80, target_port: 8080 }] } } } : {}),
    },
  };
}

type Json = Record<string, unknown>;
const lines = (log: string): Json[] => log.split('\n').filter((l) => l.startsWith('{')).map((l) => {
  try {
    return JSON.parse(l) as Json;
  } catch {
    return {};
  }
});

describe.each((process.env.INPOD_BACKENDS?.split(',') ?? ['ebpf', 'iptables']) as BackendName[])('Istio mode end to end, %s backend', (backend) => {
  let rig: Rig;
  let istiod: FakeIstiod;
  let xds!: FakeXds;
  let ca!: FakeCa;
  let admin = 0;
  let client: LabPod, server: LabPod;
  let shC: PodShell, shS: PodShell;
  const p = (f: string): string => rig.p(f);
  const proxyLog = (): string => rig.proxy?.log ?? '';
  const until = (what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> => untilFor(what, cond, { timeoutMs, context: () => rig.logs(), intervalMs: 100 });
  const dump = async (): Promise<Json> => (await fetch(`http://127.0.0.1:${admin}/config_dump`)).json() as Promise<Json>;
  const appAccepted = async (): Promise<number> => (await shS.accepted((await shS.listenerByTag('app')).id)).length;
  /** A pod of the ambient namespace through the CNI chain, reported Running with its IP. */
  const runPod = (name: string, sa: string): Promise<LabPod> => rig.startPod(NS, name, { labels: { app: name }, serviceAccount: sa });

  beforeAll(async () => {
    rig = await Rig.create({ tag: 'istiod', backend, cluster: {} });
    istiod = await startFakeIstiod({
      services: [
        (s) => void (xds = addXdsService(s, { requireToken: true })),
        async (s, { root }) => void (ca = await addCaService(s, { root, token: TOKEN })),
      ],
    });
    const tokenFile = join(istiod.dir, 'istio-token');
    writeFileSync(tokenFile, TOKEN);

    // the proxy as the Istio DaemonSet runs it: no kubeconfig, no service-account mount, no CA of its own
    const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: process.env.HOME, POD_NAME: 'ztunnel-x1', POD_NAMESPACE: 'istio-system', NODE_NAME: NODE, INSTANCE_IP: '10.200.255.9' };
    admin = (await rig.startProxy({ args: ['--xds-address', istiod.address, '--xds-root-ca', istiod.rootCertFile, '--ca-address', `https://${istiod.address}`,
      '--ca-root-ca', istiod.rootCertFile, '--auth-token', tokenFile, '--cluster-id', 'Kubernetes'], caDir: p('no-ca'), ports: true, env })).ports.admin;
    await rig.startAgent({ hostNetns: true, self: { name: 'inpod-agent-node1', namespace: 'inpod-system' } });
    // istiod has nothing of the namespace yet: the proxy syncs (empty), then takes pods from the agent
    await rig.ready(40_000);
    client = await runPod('sleep', 'sleep');
    server = await runPod('web', 'web');
    // what istiod sends once the kubelet reported the pods' IPs
    xds.set(ADDRESS_TYPE, `Kubernetes//Pod/${NS}/sleep`, podAddress(client, 'sleep'));
    xds.set(ADDRESS_TYPE, `Kubernetes//Pod/${NS}/web`, podAddress(server, 'web'));
    xds.set(ADDRESS_TYPE, `${NS}/${HOST}`, { service: { name: 'web', namespace: NS, hostname: HOST, addresses: [{ network: '', address: ipBytes(VIP) }], ports: [{ service_port: 80, target_port: 8080 }] } });
    await until('the proxy to know both pods as HBONE, from istiod', async () => {
      const ws = ((await dump().catch(() => ({ workloads: [] }))).workloads ?? []) as { name: string; protocol: string }[];
      return ['sleep', 'web'].every((n) => ws.some((w) => w.name === n && w.protocol === 'HBONE'));
    });
    shC = await rig.lab.shell(client.netnsPath, { inCgroup: true });
    shS = await rig.lab.shell(server.netnsPath, { inCgroup: true });
    await shS.listen({ port: 8080, tag: 'app' });
  }, 120_000);

  afterAll(async () => {
    if (process.env.INPOD_TEST_LOGS && rig) writeFileSync(join(process.env.INPOD_TEST_LOGS, `istiod-${backend}.log`), `${rig.agent?.log}\n${proxyLog()}`);
    try {
      await rig?.destroy();
    } finally {
      await istiod?.close();
    }
  });

  /** One request from the client pod to the server app; its reply (or the sockd's "error:<errno>" for it), or the connect error. */
  async function request(send: string, timeoutMs = 5000): Promise<string> {
    const r = await shC.connect({ host: server.ip, port: 8080, send, timeoutMs });
    if (r.ok) await shC.close(r.connId);
    return r.ok ? (r.reply ?? '') : r.error;
  }

  it('carries the bytes over HBONE between the two istiod-certified pods, the app seeing the client pod\'s IP', async () => {
    expect(await request('hello istiod')).toBe('app:hello istiod');
    const acc = await shS.accepted((await shS.listenerByTag('app')).id);
    expect(acc.at(-1)!.peer.host).toBe(client.ip);
    // both ends of the tunnel: the identities the TLS handshakes proved are the ones istiod issued
    await until('the access-log lines of both ends', () => {
      const l = lines(proxyLog()).filter((x) => x.msg === 'connection complete' && x['transport'] === 'hbone');
      return l.some((x) => x.direction === 'outbound') && l.some((x) => x.direction === 'inbound');
    });
    const access = lines(proxyLog()).filter((x) => x.msg === 'connection complete' && x['transport'] === 'hbone');
    expect(access.find((x) => x.direction === 'outbound')).toMatchObject({ 'src.identity': CLIENT_ID, 'dst.identity': SERVER_ID });
    expect(access.find((x) => x.direction === 'inbound')).toMatchObject({ 'src.identity': CLIENT_ID, 'dst.identity': SERVER_ID, 'src.addr': expect.stringContaining(client.ip) });

    // istiod's CA signed one CSR per identity, impersonated as ztunnel does, authenticated by the token
    const issued = ca.requests.filter((r) => 'serial' in r.outcome);
    expect(issued.map((r) => r.request.metadata.ImpersonatedIdentity).sort()).toEqual([CLIENT_ID, SERVER_ID]);
    for (const r of issued) {
      expect(r.csrSans).toEqual([r.request.metadata.ImpersonatedIdentity]);
      expect(r.headers).toMatchObject({ authorization: `Bearer ${TOKEN}`, clusterid: 'Kubernetes' });
      // the key stayed on the node: on the wire the request is a CSR, a validity and the metadata, nothing more
      expect(caWire.encodeRequest(r.request)).toEqual(r.raw);
      expect(r.raw.toString('latin1')).not.toMatch(/PRIVATE KEY/);
    }
    // the certificates the proxy holds chain to istiod's root; it has no CA of its own
    const certs = (await dump()).certificates as { identity: string; certChain: { pem: string }[]; rootCerts: { pem: string }[] }[];
    expect(certs.map((c) => c.identity).sort()).toEqual([CLIENT_ID, SERVER_ID]);
    const root = new X509Certificate(istiod.root.certPem);
    const pem = (b64: string): X509Certificate => new X509Certificate(Buffer.from(b64, 'base64')); // ztunnel dumps each PEM base64-encoded
    for (const c of certs) {
      const leaf = pem(c.certChain[0]!.pem);
      expect(leaf.verify(root.publicKey)).toBe(true);
      expect(leaf.subjectAltName).toBe(`URI:${c.identity}`);
      expect(c.rootCerts.map((r) => pem(r.pem).fingerprint256)).toEqual([root.fingerprint256]);
      // the certificate held is the one issued for the CSR of that identity (its key pair, made on the node)
      const csr = issued.find((r) => r.request.metadata.ImpersonatedIdentity === c.identity)!;
      const csrDer = Buffer.from(csr.request.csr.replace(/-----[^-]+-----|\s/g, ''), 'base64');
      expect(csrDer.includes(leaf.publicKey.export({ type: 'spki', format: 'der' }))).toBe(true); // a CSR carries its SubjectPublicKeyInfo as is
    }
    expect(existsSync(p('no-ca'))).toBe(false);
    // and its state is istiod's alone (no kubeconfig, no in-cluster service account in its environment)
    expect(await (await fetch(`http://127.0.0.1:${admin}/state`)).json()).toMatchObject({ source: `istiod at ${istiod.address} (xDS)`, workloads: 2 });
  });

  it('reaches the app through the Service VIP istiod sent, both proxies naming the Service', async () => {
    const from = lines(proxyLog()).length;
    const r = await shC.connect({ host: VIP, port: 80, send: 'via the vip', timeoutMs: 5000 });
    expect(r.ok && r.reply, rig.logs()).toBe('app:via the vip');
    // while it is open, the server's proxy lists it under the Service the client addressed (ztunnel's
    // InboundConnectionDump originalDst): it found its own workload, though istiod's uid is not the pod's
    type Conns = { inbound: { src: string; originalDst: string | null }[] };
    const state = (await dump()).workloadState as Record<string, { info: { name: string }; connections: Conns }>;
    const web = Object.values(state).find((x) => x.info.name === 'web')!;
    expect(web.connections.inbound).toEqual([expect.objectContaining({ src: expect.stringContaining(client.ip), originalDst: HOST })]);
    if (r.ok) await shC.close(r.connId);
    await until('both access-log lines', () => lines(proxyLog()).slice(from).filter((x) => x.msg === 'connection complete').length === 2);
    const l = lines(proxyLog()).slice(from).filter((x) => x.msg === 'connection complete');
    expect(l.find((x) => x.direction === 'outbound')).toMatchObject({ 'dst.service': HOST, 'dst.workload': 'web' });
    expect(l.find((x) => x.direction === 'inbound')).toMatchObject({ 'dst.service': HOST, 'src.identity': CLIENT_ID });
  });

  it('closes the open connection and refuses the next before the app sees a byte once istiod pushes a DENY for the client, and lets it through once the DENY is removed', async () => {
    // a connection opened before the push
    const open = await shC.connect({ host: server.ip, port: 8080, send: 'before', timeoutMs: 5000 });
    expect(open.ok && open.reply).toBe('app:before');
    const before = await appAccepted();
    const nonce = xds.set(AUTHORIZATION_TYPE, DENY, {
      name: 'deny-sleep', namespace: NS, scope: 1, action: 1,
      rules: [{ clauses: [{ matches: [{ principals: [{ exact: 'cluster.local/ns/mesh/sa/sleep' }] }] }] }],
    });
    // the proxy applied it and said so (an ACK: no error_detail)
    await until('the ACK of the DENY push', () => xds.answers(nonce).length > 0);
    expect(xds.answers(nonce)[0]!.error_detail ?? null).toBeNull();
    await until('the DENY in the config dump', async () => ((await dump()).policies as { name: string }[]).some((x) => x.name === 'deny-sleep'));

    // the connection open before it is closed, as ztunnel's PolicyWatcher closes what a policy
    // update no longer allows (src/proxy/connection_manager.rs)
    await until('the open connection closed by the policy update', () => /no longer allowed after a policy update/.test(proxyLog()));
    const still = (await shC.send((open as { connId: string }).connId, 'still there?', 3000)) as { reply?: string; error?: string };
    expect(still.reply ?? still.error).toMatch(/^$|ECONNRESET|EPIPE/); // '': the stream ended (EOF)
    const from = lines(proxyLog()).length;
    const r = await request('after deny', 3000);
    expect(r).toMatch(/ECONNRESET|EOF/);
    expect(await appAccepted()).toBe(before);
    // both proxies' access-log lines say so, the server's naming the policy (ztunnel's "connection complete" with DENY)
    await until('the denial in the access log', () => lines(proxyLog()).slice(from).filter((x) => x.response_flags === 'DENY').length === 2);
    const denied = lines(proxyLog()).slice(from).filter((x) => x.response_flags === 'DENY');
    expect(denied.find((x) => x.direction === 'inbound')).toMatchObject({ 'src.identity': CLIENT_ID, 'dst.identity': SERVER_ID, error: `denied by ${DENY}` });
    expect(denied.find((x) => x.direction === 'outbound')).toMatchObject({ 'src.identity': CLIENT_ID, error: expect.stringContaining('answered 401') });
    if (open.ok) await shC.close(open.connId);

    // istiod removes it: the proxy ACKs and traffic flows again
    const rm = xds.remove(AUTHORIZATION_TYPE, [DENY]);
    await until('the ACK of the removal', () => xds.answers(rm).length > 0);
    expect(xds.answers(rm)[0]!.error_detail ?? null).toBeNull();
    await until('the client reaches the app again', async () => (await request('allowed again', 3000)) === 'app:allowed again');
    expect(await appAccepted()).toBe(before + 1);
  });
});
