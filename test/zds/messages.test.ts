/** ZDS wire compatibility: our encodings against bytes built by hand from Istio's field numbers. */
import { describe, expect, it } from 'vitest';
import { decodeAck, decodeHello, decodeRequest, encodeAck, encodeHello, encodeRequest } from '../../ts/zds/messages.js';

const str = (tag: number, s: string): number[] => [tag, s.length, ...Buffer.from(s)];
const msg = (tag: number, body: number[]): number[] => [tag, body.length, ...body];

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
