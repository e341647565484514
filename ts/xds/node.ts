/**
 * Who the proxy says it is to istiod, from its environment, as ztunnel says it
 * (src/xds/client.rs `Config::node`, src/config.rs `construct_proxy_config` and the auth source):
 *
 *   - node id `ztunnel~<INSTANCE_IP>~<POD_NAME>.<POD_NAMESPACE>~<POD_NAMESPACE>.svc.cluster.local`
 *     (INSTANCE_IP defaults to 1.1.1.1, the others to '');
 *   - metadata NAME, NAMESPACE, INSTANCE_IPS, NODE_NAME (strings), then every ISTIO_META_<K>
 *     variable as <K> (ISTIO_META_CLUSTER_ID -> CLUSTER_ID), then every ISTIO_METAJSON_<K> as the
 *     JSON value it holds (one that does not parse is left out and reported);
 *   - the cluster ID sent in the `clusterid` header: ISTIO_META_CLUSTER_ID, else CLUSTER_ID, else
 *     Kubernetes.
 * istiod reads the pod's identity from the node id and its metadata (the ambient "ztunnel" node
 * type, the node name that scopes what it pushes). Pure: the environment is passed in.
 */
import type { Node, PlainValue } from './proto.js';

export type Env = Record<string, string | undefined>;

const META = 'ISTIO_META_';
const METAJSON = 'ISTIO_METAJSON_';

/** ISTIO_META_* without the prefix (ztunnel's proxy_metadata, from the environment). */
export function proxyMetadata(env: Env): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (k.startsWith(META) && v !== undefined) out[k.slice(META.length)] = v;
  return out;
}

/** ztunnel's cluster_id: ISTIO_META_CLUSTER_ID, else CLUSTER_ID, else "Kubernetes". */
export function clusterIdOf(env: Env): string {
  return env.ISTIO_META_CLUSTER_ID ?? env.CLUSTER_ID ?? 'Kubernetes';
}

/** A JSON value as google.protobuf.Value (ztunnel's json_to_value). */
export function jsonToValue(v: unknown): PlainValue {
  if (v === null) return { null_value: 0 };
  if (typeof v === 'boolean') return { bool_value: v };
  if (typeof v === 'number') return { number_value: v };
  if (typeof v === 'string') return { string_value: v };
  if (Array.isArray(v)) return { list_value: { values: v.map(jsonToValue) } };
  return { struct_value: { fields: Object.fromEntries(Object.entries(v as object).map(([k, x]) => [k, jsonToValue(x)])) } };
}

export interface BuiltNode {
  node: Node;
  /** ISTIO_METAJSON_* variables left out because they are not JSON */
  skipped: string[];
}

export function xdsNode(env: Env): BuiltNode {
  const ip = env.INSTANCE_IP ?? '1.1.1.1';
  const pod = env.POD_NAME ?? '';
  const ns = env.POD_NAMESPACE ?? '';
  const fields: Record<string, PlainValue> = {};
  const put = (k: string, v: string): void => void (fields[k] = { string_value: v });
  put('NAME', pod);
  put('NAMESPACE', ns);
  put('INSTANCE_IPS', ip);
  put('NODE_NAME', env.NODE_NAME ?? '');
  for (const [k, v] of Object.entries(proxyMetadata(env))) put(k, v);
  const skipped: string[] = [];
  for (const [k, v] of Object.entries(env)) {
    if (!k.startsWith(METAJSON) || v === undefined) continue;
    try {
      fields[k.slice(METAJSON.length)] = jsonToValue(JSON.parse(v));
    } catch {
      skipped.push(k);
    }
  }
  return { node: { id: `ztunnel~${ip}~${pod}.${ns}~${ns}.svc.cluster.local`, metadata: { fields } }, skipped };
}
