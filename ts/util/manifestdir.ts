/**
 * A directory of Kubernetes YAML manifests (*.yaml, *.yml) read as one set of objects: the
 * agent's and the proxy's `--manifests DIR` (one host, no API server). Each file goes through
 * the limited YAML reader (util/yaml.ts). A file that cannot be read (broken YAML, an alias
 * bomb, over the size cap, half written) never takes the rest of the directory with it: it
 * keeps the objects it held at its last good read (none if it never had one), and is named in
 * `problems` so the caller can warn. Reading never throws.
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseYamlDocuments, readBoundedFile } from './yaml.js';

/** A single manifest file may be this large (the API server's own object limit is 1.5 MiB). */
export const MAX_MANIFEST_FILE_BYTES = 8 << 20;

/** A Kubernetes object as read: only `kind` and `metadata` are looked at here. */
export interface ManifestObject {
  kind?: unknown;
  metadata?: unknown;
  [k: string]: unknown;
}

export interface ManifestProblem {
  file: string;
  error: string;
  /** the file's objects from its last good read are still in use */
  keptPrevious: boolean;
  /** the same problem was reported by the previous read (callers warn once) */
  repeated: boolean;
}

export interface ManifestRead {
  /** every object of every file, files in name order */
  objects: ManifestObject[];
  problems: ManifestProblem[];
}

export class ManifestDir {
  readonly #good = new Map<string, ManifestObject[]>();
  readonly #lastError = new Map<string, string>();
  #listError: string | undefined;

  constructor(readonly dir: string, readonly maxFileBytes = MAX_MANIFEST_FILE_BYTES) {}

  read(): ManifestRead {
    let files: string[];
    try {
      files = readdirSync(this.dir).filter((n) => /\.ya?ml$/.test(n)).sort();
    } catch (e) {
      // the directory is gone or unreadable: nothing to read now; keep nothing stale either
      const error = `${this.dir}: cannot be listed (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`;
      const repeated = this.#listError === error;
      this.#listError = error;
      return { objects: [], problems: [{ file: this.dir, error, keptPrevious: false, repeated }] };
    }
        this.#listError = undefined;
    const objects: ManifestObject[] = [];
    const problems: ManifestProblem[] = [];
    for (const f of files) {
      const path = join(this.dir, f);
      try {
        const docs = parseYamlDocuments(readBoundedFile(path, this.maxFileBytes), path);
        const objs = docs.filter((d): d is ManifestObject => typeof d === 'object' && d !== null && !Array.isArray(d));
        this.#good.set(f, objs);
        this.#lastError.delete(f);
        objects.push(...objs);
      } catch (e) {
        const error = (e as Error).message;
        const kept = this.#good.get(f);
        problems.push({ file: path, error, keptPrevious: kept !== undefined, repeated: this.#lastError.get(f) === error });
        this.#lastError.set(f, error);
        if (kept) objects.push(...kept);
      }
    }
    // files that are gone take their objects with them
    const present = new Set(files);
    for (const f of [...this.#good.keys()]) if (!present.has(f)) this.#good.delete(f);
    for (const f of [...this.#lastError.keys()]) if (!present.has(f)) this.#lastError.delete(f);
    return { objects, problems };
  }
}

/** `metadata.name` / `metadata.namespace` when they are strings; undefined otherwise. */
export function metaString(o: ManifestObject, field: 'name' | 'namespace'): string | undefined {
  const m = o.metadata;
  if (typeof m !== 'object' || m === null) return undefined;
  const v = (m as Record<string, unknown>)[field];
  return typeof v === 'string' && v !== '' ? v : undefined;
}
