/**
 * The node the proxy sends istiod, from the DaemonSet's environment, as ztunnel builds it
 * (src/xds/client.rs Config::node, build_struct, json_to_value; src/config.rs cluster_id).
 */
import { describe, expect, it } from 'vitest';
import { clusterIdOf, xdsNode } from '../../ts/xds/node.js';
import { T, decodePlain, encodePlain } from '../../ts/xds/proto.js';

describe("the proxy's node", () => {
  it("is ztunnel's id and metadata: NAME, NAMESPACE, INSTANCE_IPS, NODE_NAME, then ISTIO_META_* and ISTIO_METAJSON_* (parsed)", () => {
    const { node, skipped } = xdsNode({
      POD_NAME: 'ztunnel-1', POD_NAMESPACE: 'istio-system', NODE_NAME: 'n1', INSTANCE_IP: '10.0.0.4', ISTIO_META_CLUSTER_ID: 'c1', ISTIO_META_NETWORK: 'net',
      ISTIO_METAJSON_LABELS: '{"app":"ztunnel","n":2,"ok":true,"l":[null]}', ISTIO_METAJSON_BROKEN: '{', HOME: '/root',
    });
    expect(skipped).toEqual(['ISTIO_METAJSON_BROKEN']);
    expect(node.id).toBe('ztunnel~10.0.0.4~ztunnel-1.istio-system~istio-system.svc.cluster.local');
    // through the wire, as istiod reads it
    const wire = decodePlain<{ node: { metadata: { fields: Record<string, unknown> } } }>(T.deltaRequest, encodePlain(T.deltaRequest, { type_url: 't', node }));
    const f = wire.node.metadata.fields;
    expect(Object.keys(f).sort()).toEqual(['CLUSTER_ID', 'INSTANCE_IPS', 'LABELS', 'NAME', 'NAMESPACE', 'NETWORK', 'NODE_NAME']);
    expect(f.NAME).toMatchObject({ string_value: 'ztunnel-1' });
    expect(f.CLUSTER_ID).toMatchObject({ string_value: 'c1' });
    expect(f.LABELS).toMatchObject({ struct_value: { fields: { app: { string_value: 'ztunnel' }, n: { number_value: 2 }, ok: { bool_value: true }, l: { list_value: { values: [{ null_value: 0 }] } } } } });
  });

  it("defaults as ztunnel: INSTANCE_IP 1.1.1.1, the rest empty; the cluster from ISTIO_META_CLUSTER_ID, else CLUSTER_ID, else Kubernetes", () => {
    expect(xdsNode({}).node.id).toBe('ztunnel~1.1.1.1~.~.svc.cluster.local');
    expect([clusterIdOf({ ISTIO_META_CLUSTER_ID: 'a', CLUSTER_ID: 'b' }), clusterIdOf({ CLUSTER_ID: 'b' }), clusterIdOf({})]).toEqual(['a', 'b', 'Kubernetes']);
  });
});
