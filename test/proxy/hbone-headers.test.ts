/**
 * The HBONE CONNECT headers as ztunnel writes and reads them (ts/proxy/hbone/headers.ts, pure).
 * Each case names the upstream function it follows (istio/ztunnel at main). What the real
 * proxies put on the wire is checked end to end in test/netns/hbone-wire.test.ts.
 */
import type * as k8s from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { buildKubeState } from '../../ts/state/kube.js';
import { baggageOf, formatTraceParent, forwardedFor, forwardedHost, newTraceParent, parseBaggage, parseTraceParent } from '../../ts/proxy/hbone/headers.js';

describe('forwarded (ztunnel src/proxy/outbound.rs build_forwarded)', () => {
  it('names the client as ip:port, quoted', () => {
    expect(forwardedFor({ ip: '10.0.0.2', port: 41234 })).toBe('for="10.0.0.2:41234"');
  });

  it('brackets IPv6 as a Rust SocketAddr prints it, and writes an IPv4-mapped client as IPv4 (socket::to_canonical)', () => {
    expect(forwardedFor({ ip: 'fd00:200::2', port: 80 })).toBe('for="[fd00:200::2]:80"');
    expect(forwardedFor({ ip: '::ffff:10.0.0.2', port: 80 })).toBe('for="10.0.0.2:80"');
    expect(forwardedFor({ ip: '::1', port: 15008 })).toBe('for="[::1]:15008"');
  });

  it('adds host=<hostname> when the client addressed a service', () => {
    expect(forwardedFor({ ip: '10.0.0.2', port: 5000 }, 'web.shop.svc.cluster.local')).toBe('for="10.0.0.2:5000";host=web.shop.svc.cluster.local');
  });

  it('leaves out a hostname a header cannot carry instead of sending a broken header', () => {
    expect(forwardedFor({ ip: '10.0.0.2', port: 5000 }, 'a;for="1.2.3.4"')).toBe('for="10.0.0.2:5000"');
    expect(forwardedFor({ ip: '10.0.0.2', port: 5000 }, 'bad\nhost')).toBe('for="10.0.0.2:5000"');
  });

  it('reads host= back as the destination does (src/proxy.rs parse_forwarded_host): quoted or not, empty or non-ASCII is none', () => {
    expect(forwardedHost('for="10.0.0.2:5000";host=web.shop.svc.cluster.local')).toBe('web.shop.svc.cluster.local');
    expect(forwardedHost('for="10.0.0.2:5000"; host="web.shop"')).toBe('web.shop');
    expect(forwardedHost('for="10.0.0.2:5000"')).toBeUndefined();
    expect(forwardedHost('for="10.0.0.2:5000";host=')).toBeUndefined();
    expect(forwardedHost('host=wéb')).toBeUndefined();
    expect(forwardedHost(undefined)).toBeUndefined();
  });
});

describe('baggage (ztunnel src/baggage.rs baggage_header_val, src/state/workload.rs Workload::baggage)', () => {
  it('names cluster, namespace, workload by its kind, canonical service and revision, region and zone, in that order', () => {
    expect(baggageOf({
      clusterId: 'Kubernetes', namespace: 'default', workloadName: 'sleep', workloadType: 'deployment', canonicalName: 'sleep', canonicalRevision: 'v1',
      locality: { region: 'eu-west1', zone: 'eu-west1-b', subzone: 'rack1' },
    })).toBe('k8s.cluster.name=Kubernetes,k8s.namespace.name=default,k8s.deployment.name=sleep,service.name=sleep,service.version=v1,cloud.region=eu-west1,cloud.availability_zone=eu-west1-b');
  });

  it('writes a pod of istiod (WorkloadType POD) as k8s.pod.name=<its workload>', () => {
    expect(baggageOf({ clusterId: 'Kubernetes', namespace: 'shop', workloadName: 'web', workloadType: 'pod', canonicalName: 'web', canonicalRevision: 'latest' }))
      .toBe('k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.pod.name=web,service.name=web,service.version=latest');
  });

  it('describes a Kubernetes pod as istiod fills its Workload (a Deployment pod: k8s.pod.name=<deployment>, app/version labels, cluster Kubernetes, its node\'s region and zone)', () => {
    const pod = {
      metadata: {
        name: 'web-7d4b9c8f6-abcde', generateName: 'web-7d4b9c8f6-', namespace: 'shop', uid: 'u1',
        labels: { app: 'web', version: 'v2', 'pod-template-hash': '7d4b9c8f6' },
        ownerReferences: [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: 'web-7d4b9c8f6', uid: 'rs1', controller: true }],
      },
      spec: { serviceAccountName: 'web', nodeName: 'n1', containers: [] },
      status: { phase: 'Running', podIP: '10.200.9.5' },
    } as unknown as k8s.V1Pod;
    const nodes = [{ metadata: { name: 'n1', labels: { 'topology.kubernetes.io/region': 'r1', 'topology.kubernetes.io/zone': 'z1' } } }];
    const [w] = buildKubeState([pod], [], [], [], 'cluster.local', { nodes }).workloads;
    expect(baggageOf(w!)).toBe('k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.pod.name=web,service.name=web,service.version=v2,cloud.region=r1,cloud.availability_zone=z1');
  });

  it('leaves out every empty field, as ztunnel does', () => {
    expect(baggageOf({ namespace: 'shop', clusterId: '', canonicalName: '' })).toBe('k8s.namespace.name=shop');
    expect(baggageOf({ namespace: '' })).toBe('');
  });

  it('leaves out a value the header could not carry (a comma, a space, a control character) instead of breaking the member list', () => {
    expect(baggageOf({ namespace: 'shop', canonicalName: 'a,service.name=evil', canonicalRevision: 'v 1', workloadName: 'x\ny', workloadType: 'pod' })).toBe('k8s.namespace.name=shop');
  });

  it('reads back what it writes (ztunnel baggage_header_val_can_be_parsed), several header lines merged, unknown members ignored', () => {
    const w = { clusterId: 'c1', namespace: 'ns', workloadName: 'w', workloadType: 'cronjob', canonicalName: 'svc', canonicalRevision: 'v2' };
    expect(parseBaggage(baggageOf(w))).toEqual({ clusterId: 'c1', namespace: 'ns', workloadName: 'w', canonicalName: 'svc', canonicalRevision: 'v2' });
    expect(parseBaggage(['k8s.cluster.name=K1', 'k8s.namespace.name=NS1,other=x', 'k8s.job.name=N1'])).toEqual({ clusterId: 'K1', namespace: 'NS1', workloadName: 'N1' });
    expect(parseBaggage('k8s.cluster.name=,service.name=')).toEqual({});
  });
});

describe('traceparent (ztunnel src/proxy.rs TraceParent, src/proxy/inbound.rs extract_traceparent)', () => {
  it('starts a new trace as version 00, random 128-bit trace id and 64-bit parent id, flags 00', () => {
    const a = newTraceParent();
    const b = newTraceParent();
    expect(formatTraceParent(a)).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-00$/);
    expect(a.traceId).not.toBe(b.traceId);
  });

  it('never repeats an id across the refills of its random bytes (one CSPRNG call per 170 traces)', () => {
    const ids = Array.from({ length: 1000 }, () => newTraceParent());
    expect(new Set(ids.map((t) => t.traceId)).size).toBe(1000);
    expect(new Set(ids.map((t) => t.parentId)).size).toBe(1000);
    expect(ids.every((t) => /^[0-9a-f]{32}$/.test(t.traceId) && /^[0-9a-f]{16}$/.test(t.parentId))).toBe(true);
  });

  it("takes the client's traceparent as sent (any case, zeros included) and round-trips it", () => {
    const t = parseTraceParent('00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01');
    expect(t).toEqual({ version: 0, traceId: '0af7651916cd43dd8448eb211c80319c', parentId: 'b7ad6b7169203331', flags: 1 });
    expect(formatTraceParent(t!)).toBe('00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01');
    expect(parseTraceParent(`00-${'0'.repeat(32)}-${'0'.repeat(16)}-00`)?.traceId).toBe('0'.repeat(32));
  });

  it('refuses a malformed one (the destination then starts its own): wrong length, non-hex, several values', () => {
    for (const v of ['00-abc-def-00', `00-${'g'.repeat(32)}-${'0'.repeat(16)}-00`, `00-${'0'.repeat(32)}-${'0'.repeat(16)}-000`, '', undefined]) expect(parseTraceParent(v)).toBeNull();
    expect(parseTraceParent([`00-${'1'.repeat(32)}-${'1'.repeat(16)}-00`])).toBeNull();
  });
});
