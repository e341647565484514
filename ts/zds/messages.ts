/**
 * ZDS, Istio's agent-to-proxy protocol (istio.workload.zds), encoded by protobufjs from Istio's
 * own schema: vendor/istio/ztunnel/proto/zds.proto, copied verbatim from ztunnel (the commit is
 * named in vendor/istio/ztunnel/README.md) and read once when this module loads.
 * Field numbers are Istio's; keeping them lets inpod's agent drive Istio's ztunnel and the other
 * way round.
 */
import protobuf from 'protobufjs';
import { fileURLToPath } from 'node:url';
import { MeshError } from '../util/errors.js';

/**
 * The vendored schema, two levels above this module both as source (ts/zds) and as built
 * JavaScript (dist/zds); the image ships vendor/ beside dist/ (deploy/Dockerfile).
 */
export const ZDS_PROTO = fileURLToPath(new URL('../../vendor/istio/ztunnel/proto/zds.proto', import.meta.url));

const root = new protobuf.Root().loadSync(ZDS_PROTO, { keepCase: true });

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
  /** `info` undefined: the Add carried no workload_info (ztunnel refuses it as a protocol error) */
  | { kind: 'add'; uid: string; info: WorkloadInfo | undefined }
  | { kind: 'keep'; uid: string }
  | { kind: 'del'; uid: string }
  | { kind: 'snapshotSent' };

export class ZdsDecodeError extends Error {}

/**
 * A request that is well formed but breaks the protocol's order or contract (ztunnel's
 * `Error::ProtocolError`, src/inpod/statemanager.rs): Keep after SnapshotSent, a second
 * SnapshotSent, Add without workload_info. The proxy answers it with an error Ack and stops
 * talking ZDS (ts/zds/client.ts).
 */
export class ZdsProtocolError extends MeshError {
  constructor(message: string) {
    super('INPOD_ERR_ZDS_PROTOCOL', `ZDS protocol error: ${message}; the node agent does not speak ZDS as ztunnel expects (a version mismatch between inpod agent and proxy?)`);
  }
}

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
      payload = { add: { uid: r.uid, ...(r.info ? { workload_info: { name: r.info.name, namespace: r.info.namespace, service_account: r.info.serviceAccount } } : {}) } };
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
      const info = m.add?.workload_info as Record<string, string> | undefined;
      const uid = String(m.add?.uid ?? '');
      if (!uid) throw new ZdsDecodeError('AddWorkload without a uid');
      return { kind: 'add', uid, info: info && { name: info.name ?? '', namespace: info.namespace ?? '', serviceAccount: info.service_account ?? '' } };
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
