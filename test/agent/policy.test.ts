import { describe, expect, it } from 'vitest';
import { meshVerdict, podCaptureSettings, type NamespaceObj, type PodObj } from '../../ts/agent/policy.js';

const ambient: NamespaceObj = { metadata: { name: 'shop', labels: { 'istio.io/dataplane-mode': 'ambient' } } };
const plain: NamespaceObj = { metadata: { name: 'legacy' } };
const pod = (extra: Partial<PodObj> & { labels?: Record<string, string>; annotations?: Record<string, string> } = {}): PodObj => ({
  metadata: { name: 'web', namespace: 'shop', uid: 'u1', labels: extra.labels, annotations: extra.annotations },
  spec: { containers: [{ name: 'app' }], ...extra.spec },
});

describe('who is in the mesh', () => {
  it.each([
    ['a pod of an ambient namespace', ambient, pod(), true],
    ['a pod of a plain namespace', plain, pod(), false],
    ['a pod labelled ambient in a plain namespace', plain, pod({ labels: { 'istio.io/dataplane-mode': 'ambient' } }), true],
    ['a pod that opts out with =none', ambient, pod({ labels: { 'istio.io/dataplane-mode': 'none' } }), false],
    ['a pod with an istio-proxy container', ambient, pod({ spec: { containers: [{ name: 'app' }, { name: 'istio-proxy' }] } }), false],
    ['a pod with the sidecar status annotation', ambient, pod({ annotations: { 'sidecar.istio.io/status': '{}' } }), false],
    ['a hostNetwork pod', ambient, pod({ spec: { hostNetwork: true } }), false],
    ['a pod of an unknown namespace', undefined, pod(), false],
  ])('%s', (_name, ns, p, enroll) => {
    expect(meshVerdict(ns, p).enroll).toBe(enroll);
  });

  it('gives the reason for leaving a pod out', () => {
    expect(meshVerdict(ambient, pod({ spec: { hostNetwork: true } })).reason).toBe('hostNetwork pod');
    expect(meshVerdict(plain, pod()).reason).toMatch(/not labelled istio.io\/dataplane-mode=ambient/);
  });

  it("reads Istio's exclusion annotations, ignoring junk", () => {
    const p = pod({ annotations: {
      'traffic.sidecar.istio.io/excludeInboundPorts': '9090, 8443',
      'traffic.sidecar.istio.io/excludeOutboundPorts': '3306,notaport,70000',
      'traffic.sidecar.istio.io/excludeOutboundIPRanges': '10.96.0.0/12',
    } });
    expect(podCaptureSettings(p)).toEqual({ excludeInboundPorts: [9090, 8443], excludeOutboundPorts: [3306], excludeOutboundCidrs: ['10.96.0.0/12'] });
  });
});
