/**
 * The xDS wire types, read by protobufjs from ztunnel's own schema files, vendored verbatim under
 * vendor/istio/ztunnel/proto/ (commit and blobs in vendor/istio/ztunnel/README.md):
 *
 *   - xds.proto: ztunnel's binary-compatible copy of Envoy's delta ADS messages and service
 *     (envoy.service.discovery.v3: DeltaDiscoveryRequest/Response, Resource, Node, Status);
 *   - workload.proto (istio.workload.Address, Workload, Service) and authorization.proto
 *     (istio.security.Authorization): what istiod sends ztunnel;
 *   - google/protobuf/{any,duration,struct,wrappers,empty}.proto, which those import.
 *
 * Every file is parsed from the vendored copy (protobufjs's bundled google types are not used),
 * so the schema is exactly ztunnel's. Field names are kept as written (snake_case). The gRPC
 * method definition of the ADS (`ADS_SERVICE`) serves both the client (ts/xds/client.ts) and
 * the fake istiod of the tests.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';
import type { ServiceDefinition } from '@grpc/grpc-js';

export const PROTO_DIR = fileURLToPath(new URL('../../vendor/istio/ztunnel/proto/', import.meta.url));

/** The files, dependencies first (parse() does not follow imports). */
const FILES = [
  'google/protobuf/any.proto',
  'google/protobuf/duration.proto',
  'google/protobuf/struct.proto',
  'google/protobuf/wrappers.proto',
  'google/protobuf/empty.proto',
  'xds.proto',
  'workload.proto',
  'authorization.proto',
];

export const root = new protobuf.Root();
for (const f of FILES) protobuf.parse(readFileSync(`${PROTO_DIR}${f}`, 'utf8'), root, { keepCase: true });
root.resolveAll();

export const ADDRESS_TYPE = 'type.googleapis.com/istio.workload.Address';
export const AUTHORIZATION_TYPE = 'type.googleapis.com/istio.security.Authorization';

export const T = {
  deltaRequest: root.lookupType('envoy.service.discovery.v3.DeltaDiscoveryRequest'),
  deltaResponse: root.lookupType('envoy.service.discovery.v3.DeltaDiscoveryResponse'),
  address: root.lookupType('istio.workload.Address'),
  authorization: root.lookupType('istio.security.Authorization'),
};

/** An enum of the schema: name -> number, and number -> name. */
export function enumOf(path: string): { values: Record<string, number>; names: Record<number, string> } {
  const e = root.lookupEnum(path);
  return { values: e.values, names: e.valuesById };
}

// The messages as protobufjs decodes them with the options of `toPlain` below.

export interface Any {
  type_url: string;
  value: Uint8Array;
}
export interface Status {
  code?: number;
  message?: string;
}
/** google.protobuf.Value (strings, as ztunnel's build_struct, and JSON from ISTIO_METAJSON_*) */
export type PlainValue =
  | { null_value: 0 }
  | { number_value: number }
  | { string_value: string }
  | { bool_value: boolean }
  | { struct_value: { fields: Record<string, PlainValue> } }
  | { list_value: { values: PlainValue[] } };
export interface Node {
  id: string;
  cluster?: string;
  metadata?: { fields: Record<string, PlainValue> };
  build_version?: string;
}
export interface DeltaDiscoveryRequest {
  node?: Node;
  type_url: string;
  resource_names_subscribe?: string[];
  resource_names_unsubscribe?: string[];
  initial_resource_versions?: Record<string, string>;
  response_nonce?: string;
  error_detail?: Status;
}
export interface Resource {
  name: string;
  aliases?: string[];
  version: string;
  resource?: Any;
}
export interface DeltaDiscoveryResponse {
  system_version_info?: string;
  resources: Resource[];
  type_url: string;
  removed_resources: string[];
  nonce: string;
}

const PLAIN: protobuf.IConversionOptions = { longs: Number, enums: Number, defaults: true, arrays: true, objects: true, oneofs: true };

/** Decodes `bytes` as `type` into a plain object: every field present (proto3 defaults), enums as numbers, bytes as Uint8Array, a set oneof named by its group. Throws on malformed bytes. */
export function decodePlain<R>(type: protobuf.Type, bytes: Uint8Array): R {
  return type.toObject(type.decode(bytes), PLAIN) as R;
}

/** Encodes a plain object (as decodePlain returns, or written by hand) as `type`. */
export function encodePlain(type: protobuf.Type, obj: object): Buffer {
  return Buffer.from(type.encode(type.fromObject(obj)).finish());
}

/** gRPC path of ztunnel's xDS stream */
export const DELTA_ADS_PATH = '/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources';

/**
 * The one method of `envoy.service.discovery.v3.AggregatedDiscoveryService` ztunnel uses, for
 * grpc-js (`client.makeBidiStreamRequest(DELTA_ADS_PATH, ...)`, `server.addService(ADS_SERVICE, ...)`).
 */
export const ADS_SERVICE: ServiceDefinition = {
  DeltaAggregatedResources: {
    path: DELTA_ADS_PATH,
    requestStream: true,
    responseStream: true,
    requestSerialize: (m: DeltaDiscoveryRequest) => encodePlain(T.deltaRequest, m),
    requestDeserialize: (b: Buffer) => decodePlain<DeltaDiscoveryRequest>(T.deltaRequest, b),
    responseSerialize: (m: DeltaDiscoveryResponse) => encodePlain(T.deltaResponse, m),
    responseDeserialize: (b: Buffer) => decodePlain<DeltaDiscoveryResponse>(T.deltaResponse, b),
  },
};
