/**
 * ZDS, Istio's agent-to-proxy protocol (istio.workload.zds), encoded by protobufjs from Istio's
 * schema (embedded below, so no schema file is looked up at run time).
 * Field numbers are Istio's; keeping them lets inpod's agent drive Istio's ztunnel and the other
 * way round.
 */
import protobuf from 'protobufjs';

/** Istio's zds.proto (package istio.workload.zds), parsed once at load; no file is read. */
const SCHEMA = `
syntax = "proto3";
package istio.workload.zds;
enum Version { NOT_USED = 0; V1 = 1; }
message ZdsHello { Version version = 1; }
message WorkloadInfo { string name = 1; string namespace = 2; string service_account = 3; }
message AddWorkload { string uid = 1; WorkloadInfo workload_info = 2; }
message KeepWorkload { string uid = 1; }
message DelWorkload { string uid = 2; }
message SnapshotSent {}
message WorkloadRequest {
  oneof payload { AddWorkload add = 1; KeepWorkload keep = 5; DelWorkload del = 2; SnapshotSent snapshot_sent = 3; }
}
message Ack { string error = 1; }
message WorkloadResponse { oneof payload { Ack ack = 1; } }
`;
const root = protobuf.parse(SCHEMA, { keepCase: true }).root;

const T = {
  hello: root.lookupType('istio.workload.zds.ZdsHello'),
  request: root.lookupType('istio.workload.zds.WorkloadRequest'),
  response: root.lookupType('istio.workload.zds.WorkloadResponse'),
};

export const ZDS_VERSION = 1;
/** Every ZDS message stays under this (SOCK_SEQPACKET: one message, one read). */
export const MAX_MESSAGE = 1024;

export interface WorkloadInfo {
  name: string;
  namespace: string;
  serviceAccount: string;
}

export type WorkloadRequest =
  | { kind: 'add'; uid: string; info: WorkloadInfo }
  | { kind: 'keep'; uid: string }
  | { kind: 'del'; uid: string }
  | { kind: 'snapshotSent' };

export class ZdsDecodeError extends Error {}

export function encodeHello(version = ZDS_VERSION): Buffer {
  return Buffer.from(T.hello.encode(T.hello.create({ version })).finish());
}

export function decodeHello(b: Buffer): { version: number } {
  try {
    const m = T.hello.toObject(T.hello.decode(b), { enums: Number, defaults: true }) as { version: number };
    return { version: m.version };
  } catch (e) {
    throw new ZdsDecodeError(`invalid ZdsHello: ${(e as Error).message}`);
  }
}

export function encodeRequest(r: WorkloadRequest): Buffer {
  let payload: Record<string, unknown>;
  switch (r.kind) {
    case 'add':
      payload = { add: { uid: r.uid, workload_info: { name: r.info.name, namespace: r.info.namespace, service_account: r.info.serviceAccount } } };
      break;
    case 'keep':
      payload = { keep: { uid: r.uid } };
      break;
    case 'del':
      payload = { del: { uid: r.uid } };
      break;
    case 'snapshotSent':
      payload = { snapshot_sent: {} };
      break;
  }
  return Buffer.from(T.request.encode(T.request.fromObject(payload)).finish());
}

export function decodeRequest(b: Buffer): WorkloadRequest {
  let m: Record<string, Record<string, unknown> | undefined> & { payload?: string };
  try {
    m = T.request.toObject(T.request.decode(b), { oneofs: true, defaults: false }) as typeof m;
  } catch (e) {
    throw new ZdsDecodeError(`invalid WorkloadRequest: ${(e as Error).message}`);
  }
  switch (m.payload) {
    case 'add': {
      const info = (m.add?.workload_info ?? {}) as Record<string, string>;
      const uid = String(m.add?.uid ?? '');
      if (!uid) throw new ZdsDecodeError('AddWorkload without a uid');
      return { kind: 'add', uid, info: { name: info.name ?? '', namespace: info.namespace ?? '', serviceAccount: info.service_account ?? '' } };
    }
    case 'keep':
      return { kind: 'keep', uid: String(m.keep?.uid ?? '') };
    case 'del':
      return { kind: 'del', uid: String(m.del?.uid ?? '') };
    case 'snapshot_sent':
      return { kind: 'snapshotSent' };
    default:
      throw new ZdsDecodeError('WorkloadRequest with no known payload (unknown oneof field or empty message)');
  }
}

export function encodeAck(error = ''): Buffer {
  return Buffer.from(T.response.encode(T.response.fromObject({ ack: error ? { error } : {} })).finish());
}

/** The Ack's error ('' for success). */
export function decodeAck(b: Buffer): string {
  let m: { payload?: string; ack?: { error?: string } };
  try {
    m = T.response.toObject(T.response.decode(b), { oneofs: true }) as typeof m;
  } catch (e) {
    throw new ZdsDecodeError(`invalid WorkloadResponse: ${(e as Error).message}`);
  }
  if (m.payload !== 'ack') throw new ZdsDecodeError('WorkloadResponse without an Ack');
  return m.ack?.error ?? '';
}
