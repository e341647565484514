/**
 * ZDS wire compatibility: our encodings against bytes built by hand from Istio's field numbers,
 * and the schema they come from being ztunnel's own file, unedited.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ZDS_PROTO, decodeAck, decodeHello, decodeRequest, encodeAck, encodeHello, encodeRequest } from '../../ts/zds/messages.js';

const VENDOR = join(dirname(ZDS_PROTO), '..');
/** git's blob id of a file: what `git ls-tree` prints for it upstream */
const blobId = (path: string): string => {
  const b = readFileSync(path);
  return createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex');
};

const str = (tag: number, s: string): number[] => [tag, s.length, ...Buffer.from(s)];
const msg = (tag: number, body: number[]): number[] => [tag, body.length, ...body];

describe('the vendored upstream files', () => {
  it('are the files of the ztunnel commit vendor/istio/ztunnel/README.md names, byte for byte (their git blob ids), and the image ships them', () => {
    const readme = readFileSync(join(VENDOR, 'README.md'), 'utf8');
    expect(readme).toMatch(/at commit\s+`[0-9a-f]{40}`/);
    const rows = [...readme.matchAll(/^\| `([^`]+)` \| `([0-9a-f]{40})` \|/gm)].map((m) => [m[1], m[2]]);
    expect(rows.map((r) => r[0])).toEqual([
      'proto/zds.proto', 'examples/localhost.yaml', 'proto/citadel.proto',
      // the xDS schema (ts/xds/proto.ts)
      'proto/xds.proto', 'proto/workload.proto', 'proto/authorization.proto', 'proto/google/protobuf/any.proto', 'proto/google/protobuf/duration.proto',
      'proto/google/protobuf/struct.proto', 'proto/google/protobuf/wrappers.proto', 'proto/google/protobuf/empty.proto',
    ]);
    for (const [file, blob] of rows) expect([file, blobId(join(VENDOR, file!))]).toEqual([file, blob]);
    expect(readFileSync(join(VENDOR, '..', '..', '..', 'deploy', 'Dockerfile'), 'utf8')).toMatch(/^COPY --from=build \/src\/vendor \.\/vendor$/m);
  });
});

describe('ZDS messages on the wire', () => {
  it('ZdsHello{version=V1} is field 1, varint 1', () => {
    expect([...encodeHello()]).toEqual([0x08, 0x01]);
    expect(decodeHello(Buffer.from([0x08, 0x01]))).toEqual({ version: 1 });
  });

  it('Add is WorkloadRequest field 1 holding uid=1 and WorkloadInfo=2 {name=1, namespace=2, service_account=3}', () => {
    const info = [...str(0x0a, 'web-0'), ...str(0x12, 'shop'), ...str(0x1a, 'web')];
    const add = [...str(0x0a, 'uid-1'), ...msg(0x12, info)];
    const expected = msg(0x0a, add);
    const req = { kind: 'add', uid: 'uid-1', info: { name: 'web-0', namespace: 'shop', serviceAccount: 'web' } } as const;
    expect([...encodeRequest(req)]).toEqual(expected);
    expect(decodeRequest(Buffer.from(expected))).toEqual(req);
  });

  it('Add without workload_info (field 2 absent) decodes with no info, unlike an empty WorkloadInfo: ztunnel refuses the first (statemanager.rs process_msg)', () => {
    const bare = msg(0x0a, str(0x0a, 'uid-1'));
    expect(decodeRequest(Buffer.from(bare))).toEqual({ kind: 'add', uid: 'uid-1', info: undefined });
    expect([...encodeRequest({ kind: 'add', uid: 'uid-1', info: undefined })]).toEqual(bare);
    const empty = msg(0x0a, [...str(0x0a, 'uid-1'), 0x12, 0x00]);
    expect(decodeRequest(Buffer.from(empty))).toEqual({ kind: 'add', uid: 'uid-1', info: { name: '', namespace: '', serviceAccount: '' } });
  });

  it('ZdsHello decodes any version number (istio-cni logs it, never refuses it)', () => {
    expect(decodeHello(Buffer.from([0x08, 0x02]))).toEqual({ version: 2 });
    expect(decodeHello(Buffer.from([0x08, 0x00]))).toEqual({ version: 0 });
  });

  it('Del is field 2 with the uid in field 2; Keep is field 5 with the uid in field 1; SnapshotSent is an empty field 3', () => {
    expect([...encodeRequest({ kind: 'del', uid: 'u' })]).toEqual(msg(0x12, str(0x12, 'u')));
    expect([...encodeRequest({ kind: 'keep', uid: 'u' })]).toEqual(msg(0x2a, str(0x0a, 'u')));
    expect([...encodeRequest({ kind: 'snapshotSent' })]).toEqual([0x1a, 0x00]);
    expect(decodeRequest(Buffer.from(msg(0x12, str(0x12, 'u'))))).toEqual({ kind: 'del', uid: 'u' });
    expect(decodeRequest(Buffer.from(msg(0x2a, str(0x0a, 'u'))))).toEqual({ kind: 'keep', uid: 'u' });
    expect(decodeRequest(Buffer.from([0x1a, 0x00]))).toEqual({ kind: 'snapshotSent' });
  });

  it('WorkloadResponse{ack=1: Ack{error=1}}', () => {
    expect([...encodeAck('')]).toEqual([0x0a, 0x00]);
    expect([...encodeAck('boom')]).toEqual(msg(0x0a, str(0x0a, 'boom')));
    expect(decodeAck(Buffer.from(msg(0x0a, str(0x0a, 'boom'))))).toBe('boom');
    expect(decodeAck(Buffer.from([0x0a, 0x00]))).toBe('');
  });

  it('refuses an unknown oneof, an empty request and garbage with clear errors', () => {
    expect(() => decodeRequest(Buffer.from(msg(0x22, [])))).toThrow(/no known payload/); // field 4 is not Istio's
    expect(() => decodeRequest(Buffer.alloc(0))).toThrow(/no known payload/);
    expect(() => decodeRequest(Buffer.from([0x0a, 0x7f, 0x01]))).toThrow(/invalid WorkloadRequest/);
    expect(() => decodeAck(Buffer.alloc(0))).toThrow(/without an Ack/);
  });
});
