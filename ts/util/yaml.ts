/**
 * The project's one YAML reader, with limits. Everything an operator or the cluster hands us as
 * YAML (the proxy's local config, the agent's and the proxy's manifest directories) is read
 * here: a file larger than its cap is refused before it is parsed, and a document whose aliases
 * would expand it (a "billion laughs" bomb) or that nests deeper than any real object is refused,
 * each with a MeshError naming the file.
 *
 * Why js-yaml and not the `yaml` package: `yaml` builds a full concrete syntax tree first, and
 * for a 19 MiB local config (150k workloads) that took 14-19 s and 1.6-1.8 GB of heap; js-yaml
 * reads the same file in ~1 s and ~190 MB RSS. It ships with @kubernetes/client-node (its
 * loadYaml) and is pinned here as well. js-yaml has no `maxAliasCount`: it resolves an alias to
 * the same object instead of a copy, so a bomb costs nothing to load and everything to walk,
 * serialize or log. `checkExpansion` bounds that: the value the document describes, with every
 * alias copied out, may be at most MAX_ALIAS_EXPANSION times the text (and 1 MiB for small
 * files), and an alias may not point into the node that holds it (a cycle).
 * The core schema is used (as `yaml` 2 by default): no timestamps, no `<<` merge keys, no
 * binary/set/omap tags, so a label value `2024-01-01` stays a string.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { CORE_SCHEMA, load, loadAll, YAMLException, type Schema } from 'js-yaml';
import { MeshError } from './errors.js';

/** Aliases may grow a document to this many times its text (see checkExpansion). */
export const MAX_ALIAS_EXPANSION = 10;
/** ... and at least this much, so small files may share a block freely. */
export const MIN_ALIAS_ALLOWANCE = 1 << 20;
/** No Kubernetes object or local-config entry nests anywhere near this deep. */
export const MAX_DEPTH = 64;

const MiB = (n: number): string => (n < 1 << 20 ? `${n} bytes` : `${(n / (1 << 20)).toFixed(n % (1 << 20) ? 1 : 0)} MiB`);

/**
 * Reads a whole file as UTF-8, refusing one larger than `maxBytes` before reading it (or, if it
 * grows while being read, as soon as it passes the cap). Throws MeshError INPOD_ERR_CONFIG.
 */
export function readBoundedFile(path: string, maxBytes: number): string {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    throw new MeshError('INPOD_ERR_CONFIG', `${path}: cannot be read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, { cause: e });
  }
  const tooBig = (what: string): MeshError =>
    new MeshError('INPOD_ERR_CONFIG', `${path}: ${what} is more than the ${MiB(maxBytes)} this file may have; split it or remove entries`);
  try {
    const size = fstatSync(fd).size;
    if (size > maxBytes) throw tooBig(MiB(size));
    let buf = Buffer.allocUnsafe(Math.min(maxBytes + 1, size + 1));
    let len = 0;
    for (;;) {
      if (len === buf.length) {
        if (len > maxBytes) throw tooBig('its content');
        const bigger = Buffer.allocUnsafe(Math.min(maxBytes + 1, buf.length * 2 + 4096)); // it grew while we read
        buf.copy(bigger, 0, 0, len);
        buf = bigger;
      }
      const n = readSync(fd, buf, len, buf.length - len, null);
      if (n === 0) return buf.toString('utf8', 0, len);
      len += n;
    }
  } finally {
    closeSync(fd);
  }
}

function syntaxError(source: string, e: unknown): MeshError {
  if (e instanceof YAMLException) {
    const where = e.mark ? ` (line ${e.mark.line + 1}, column ${e.mark.column + 1})` : '';
    return new MeshError('INPOD_ERR_CONFIG', `${source}: not valid YAML: ${e.reason}${where}`, { cause: e });
  }
  if (e instanceof RangeError) return new MeshError('INPOD_ERR_CONFIG', `${source}: not valid YAML: nested too deeply to read`, { cause: e });
  return new MeshError('INPOD_ERR_CONFIG', `${source}: not valid YAML: ${(e as Error).message}`, { cause: e });
}

/**
 * Refuses a loaded value that aliases turn into more than MAX_ALIAS_EXPANSION x `textLength`
 * (counting each string by its length and every other value as 1, with each alias copied out),
 * that contains itself, or that nests deeper than MAX_DEPTH. Linear in the distinct nodes:
 * each shared object is sized once.
 */
export function checkExpansion(value: unknown, textLength: number, source: string): void {
  const limit = Math.max(MAX_ALIAS_EXPANSION * textLength, MIN_ALIAS_ALLOWANCE);
  const sized = new Map<object, number>();
  const open = new Set<object>();
  let total = 0; // the expanded size of everything walked so far, aliases copied out
  const walk = (v: unknown, depth: number): number => {
    if (typeof v === 'string') return v.length;
    if (v === null || typeof v !== 'object') return 1;
    if (depth > MAX_DEPTH) throw new MeshError('INPOD_ERR_CONFIG', `${source}: nested more than ${MAX_DEPTH} levels deep; no configuration needs that`);
    if (open.has(v)) throw new MeshError('INPOD_ERR_CONFIG', `${source}: a YAML alias refers to a node that contains it (a cycle); refused`);
    const known = sized.get(v);
    if (known !== undefined) {
      total += known; // an alias: its copy counts again
      if (total > limit) throw bomb(source, limit);
      return known;
    }
    open.add(v);
    let size = 1;
    if (Array.isArray(v)) for (const x of v) size += walk(x, depth + 1);
    else for (const [k, x] of Object.entries(v)) size += k.length + walk(x, depth + 1);
    open.delete(v);
    sized.set(v, size);
    if (size > limit) throw bomb(source, limit);
    return size;
  };
  walk(value, 0);
}

function bomb(source: string, limit: number): MeshError {
  return new MeshError('INPOD_ERR_CONFIG', `${source}: YAML aliases expand this document past ${MiB(limit)} (${MAX_ALIAS_EXPANSION} times its size, ${MiB(MIN_ALIAS_ALLOWANCE)} at least); refused as an alias bomb. Write the shared parts out, or use fewer aliases`);
}

/**
 * One YAML document as plain data (null for an empty text). Throws MeshError naming `source`.
 * `schema`: the core schema with a reader's own tags (ztunnel's local config has some).
 */
export function parseYaml(text: string, source: string, schema: Schema = CORE_SCHEMA): unknown {
  let doc: unknown;
  try {
    doc = load(text, { schema, filename: source });
  } catch (e) {
    throw syntaxError(source, e);
  }
  checkExpansion(doc, text.length, source);
  return doc ?? null;
}

/** Every document of a multi-document YAML text (`---`), empty ones dropped. Throws MeshError naming `source`. */
export function parseYamlDocuments(text: string, source: string): unknown[] {
  let docs: unknown[];
  try {
    docs = loadAll(text, undefined, { schema: CORE_SCHEMA, filename: source });
  } catch (e) {
    throw syntaxError(source, e);
  }
  checkExpansion(docs, text.length, source);
  return docs.filter((d) => d !== null && d !== undefined);
}
