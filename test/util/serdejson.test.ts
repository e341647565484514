/**
 * ts/util/serdejson.ts against an independent writer of what serde_json's `to_string_pretty`
 * prints for a `Value` (serde_json's Map is a BTreeMap: keys in UTF-8 byte order; two-space
 * indent; `[]`/`{}` when empty), the format of ztunnel's /config_dump (src/admin.rs
 * handle_config_dump).
 */
import { describe, expect, it } from 'vitest';
import { byteOrder, canonical, keyed, serdeJson, serdeJsonAsync } from '../../ts/util/serdejson.js';
import { serdePretty } from '../fixtures/serde.js';


describe('serde_json pretty output (ts/util/serdejson.ts)', () => {
  it('orders strings by their UTF-8 bytes, as Rust does, astral characters and U+E000.. included', () => {
    const words = ['a', 'b', 'B', '80', '443', '', 'é', '\uffff', '\ue000', '😀', 'a😀', 'a\uffff', '\u0000', 'z'];
    for (const a of words) for (const b of words) expect(Math.sign(byteOrder(a, b)), `${a} ${b}`).toBe(Math.sign(Buffer.compare(Buffer.from(a), Buffer.from(b))));
  });

  it('writes integer-like keys in byte order ("443" before "80") and leaves values that hold NUL alone', () => {
    const v = { ports: keyed([['80', 8080], ['443', 8443], ['15008', 15008]]), b: ['\u0000x', { '\u0000k': '\u0000v' }], a: canonical({ 9: 'nine', 10: 'ten', x: { '': 0 } }) };
    const reference = serdePretty({ ports: { 80: 8080, 443: 8443, 15008: 15008 }, b: ['\u0000x', { '\u0000k': '\u0000v' }], a: { 9: 'nine', 10: 'ten', x: { '': 0 } } });
    // b's object is built in order, as a literal here: only its key starts with NUL
    expect(serdeJson({ a: v.a, b: [v.b[0], canonical(v.b[1])], ports: v.ports })).toBe(reference);
    expect(reference).toContain('"ports": {\n    "15008": 15008,\n    "443": 8443,\n    "80": 8080\n  }');
  });

  it('writes the same text in slices as at once, lazy elements built as they are written, lists longer than a slice included (objects built with their keys in order)', async () => {
    let built = 0;
    const item = (i: number) => (): unknown => {
      built++;
      return canonical({ uid: `u${i}`, ports: { [i % 1000]: i }, tags: i % 3 ? [] : ['x', { y: {} }] });
    };
    const v = { big: Array.from({ length: 1000 }, (_, i) => item(i)), nested: { empty: [], list: Array.from({ length: 600 }, (_, i) => item(i)) }, z: keyed([['10', canonical({ 2: 'b', 1: 'a' })], ['9', null]]) };
    const once = serdeJson(v);
    expect(built).toBe(1600);
    expect(await serdeJsonAsync(v, 0)).toBe(once);
    expect(once).toBe(serdePretty(JSON.parse(once)));
  });
});
