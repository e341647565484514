/**
 * JSON as serde_json writes a `Value` with `to_string_pretty` (what ztunnel's admin answers:
 * src/admin.rs `handle_config_dump` turns the dump into a Value, whose objects are BTreeMaps):
 * two-space indent, `"key": value`, `[]` and `{}` when empty, every object's keys in UTF-8 byte
 * order, no trailing newline. Built on JSON.stringify, whose format is the same, with two things
 * arranged before:
 * - key order: JSON.stringify writes keys in insertion order, except integer-like keys ("80"),
 *   which JavaScript always puts first in numeric order, where serde_json wants "443" before
 *   "80". So builders make objects with their keys inserted in byte order (`canonical` does it
 *   for any value; `keyed` for a map of keys of its own), and an object with an integer-like key
 *   (or one starting with NUL) gets every key written behind a NUL, which `unmark` takes off:
 *   exactly one per key of such an object, and no other key starts with NUL.
 * - size: `serdeJsonAsync` writes the lists near the top in slices and gives the event loop back
 *   between them, and builds `Lazy` elements only as it writes them.
 */

/** A value built only when written. */
export type Lazy = () => unknown;

const MARK = '\u0000';
const INTEGER_KEY = /^(?:0|[1-9]\d*)$/;

/** UTF-8 byte order, as Rust compares strings (and BTreeMap orders keys). */
export function byteOrder(a: string, b: string): number {
  if (a === b) return 0;
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a.charCodeAt(i) === b.charCodeAt(i)) i++;
  if (i === n) return a.length < b.length ? -1 : 1;
  const x = a.charCodeAt(i);
  const y = b.charCodeAt(i);
  // UTF-16 units order as UTF-8 bytes do, except a surrogate (part of a code point above
  // U+FFFF: 4 bytes) against U+E000..U+FFFF (3 bytes, which sort first in UTF-8)
  if (x >= 0xd800 && y >= 0xd800) return Buffer.compare(Buffer.from(a.slice(i)), Buffer.from(b.slice(i)));
  return x < y ? -1 : 1;
}

/** `items` sorted by `key` in byte order (a copy); plain comparisons when no key needs more (the usual case: faster). */
export function sortedBy<T>(items: readonly T[], key: (t: T) => string): T[] {
  const wide = items.some((t) => WIDE.test(key(t)));
  return [...items].sort(wide ? (a, b) => byteOrder(key(a), key(b)) : (a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
}
const WIDE = /[\ud800-\uffff]/;

/** A map of keys of its own (ports, uids, hostnames): its entries in byte order, every key marked. */
export function keyed(entries: Iterable<[string, unknown]>): Record<string, unknown> {
  const sorted = [...entries].sort(([a], [b]) => byteOrder(a, b));
  const out: Record<string, unknown> = {};
  for (const [k, v] of sorted) out[MARK + k] = v;
  return out;
}

/** `v` with every object's keys in byte order (marked where needed) and lazy values built: for values made elsewhere. */
export function canonical(v: unknown): unknown {
  if (typeof v === 'function') v = (v as Lazy)();
  if (v === null || typeof v !== 'object') return v;
  if (Array.isArray(v)) return v.map(canonical);
  const o = v as Record<string, unknown>;
  const keys = Object.keys(o).sort(byteOrder);
  const mark = keys.some((k) => INTEGER_KEY.test(k) || k.startsWith(MARK));
  const out: Record<string, unknown> = {};
  for (const k of keys) out[mark ? MARK + k : k] = canonical(o[k]);
  return out;
}

/** Takes the one NUL off every marked key (a key starts a line and is followed by `": `). */
function unmark(text: string): string {
  return text.includes('\\u0000') ? text.replace(/(\n *)"\\u0000(?=(?:[^"\\]|\\.)*": )/g, '$1"') : text;
}

const lazyReplacer = (_k: string, v: unknown): unknown => (typeof v === 'function' ? (v as Lazy)() : v);

/** `v` (built in order: keyed, canonical, or literals in byte order) as serde_json prints it. */
export function serdeJson(v: unknown): string {
  return unmark(JSON.stringify(v, lazyReplacer, 2) ?? 'null');
}

/** Where `writeSerdeJson` writes: a piece of the text, in order (a promise holds it back, e.g. an HTTP response's drain). */
export type Sink = (piece: string) => void | Promise<void>;

/**
 * `serdeJson(v)`, written to `sink` in pieces: the lists up to two levels down in slices of 256
 * elements (each built only then, if Lazy), the event loop given back every `sliceMs`. An admin
 * request never holds the data path long nor copies a large dump whole, whatever the state's size.
 */
export async function writeSerdeJson(v: unknown, sink: Sink, sliceMs = 10): Promise<void> {
  let since = performance.now();
  const breathe = async (): Promise<void> => {
    if (performance.now() - since < sliceMs) return;
    await new Promise((r) => setImmediate(r));
    since = performance.now();
  };
  const walk = async (x: unknown, indent: string, depth: number): Promise<void> => {
    if (typeof x === 'function') x = (x as Lazy)();
    if (depth > 2 || x === null || typeof x !== 'object') return sink(indent ? serdeJson(x).replace(/\n/g, `\n${indent}`) : serdeJson(x));
    const inner = `${indent}  `;
    if (Array.isArray(x)) {
      if (x.length === 0) return sink('[]');
      for (let i = 0; i < x.length; i += 256) {
        const slice = x.slice(i, i + 256).map((e) => (typeof e === 'function' ? (e as Lazy)() : e));
        // "[\n  a,\n  b\n]" less "[\n  " and "\n]", indented to here
        const text = unmark(JSON.stringify(slice, null, 2)).slice(4, -2).replace(/\n/g, `\n${indent}`);
        await sink(`${i === 0 ? '[' : ','}\n${inner}${text}`);
        await breathe();
      }
      return sink(`\n${indent}]`);
    }
    const o = x as Record<string, unknown>;
    const keys = Object.keys(o).filter((k) => o[k] !== undefined);
    if (keys.length === 0) return sink('{}');
    for (const [n, k] of keys.entries()) {
      await sink(`${n === 0 ? '{' : ','}\n${inner}${JSON.stringify(k.startsWith(MARK) ? k.slice(1) : k)}: `);
      await walk(o[k], inner, depth + 1);
    }
    return sink(`\n${indent}}`);
  };
  await walk(v, '', 0);
}

/** `writeSerdeJson` into a string. */
export async function serdeJsonAsync(v: unknown, sliceMs = 10): Promise<string> {
  const out: string[] = [];
  await writeSerdeJson(v, (piece) => void out.push(piece), sliceMs);
  return out.join('');
}
