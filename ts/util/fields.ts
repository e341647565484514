/**
 * Reading a YAML document into typed values the way ztunnel's serde structs read it (pure):
 * a struct names every field it has, and a key it does not name is refused (serde's
 * `deny_unknown_fields`), a field is required unless it has a default, a unit enum is its bare
 * variant name, a data-carrying enum a YAML tag (`!Exact foo`, serde_yaml 0.9). Every error is a
 * MeshError INPOD_ERR_CONFIG that names the field's path ("workloads[1].workloadIps[0]") and
 * what it expected there, so a broken file says exactly where it is broken.
 */
import { isIP } from 'node:net';
import { MeshError } from './errors.js';
import { ipText } from './sockaddr.js';

/** A value written with a YAML tag (`!Exact foo` -> Tagged('Exact', 'foo')). */
export class Tagged {
  constructor(
    readonly tag: string,
    readonly value: unknown,
  ) {}
}

export function configError(path: string, why: string): MeshError {
  return new MeshError('INPOD_ERR_CONFIG', `${path}: ${why}`);
}

const show = (v: unknown): string => (v instanceof Tagged ? `!${v.tag} ${JSON.stringify(v.value)}` : JSON.stringify(v) ?? String(v));

/** One struct of the document: `v` must be a mapping whose every key is in `known`. */
export class Struct {
  readonly v: Record<string, unknown>;

  /** `what` names the struct in errors ("a workload", "a service") */
  constructor(readonly path: string, v: unknown, known: readonly string[], what: string) {
    if (typeof v !== 'object' || v === null || Array.isArray(v) || v instanceof Tagged) throw configError(path, `expected a mapping (${what}), got ${show(v)}`);
    this.v = v as Record<string, unknown>;
    for (const k of Object.keys(this.v)) {
      if (!known.includes(k)) throw configError(`${path}.${k}`, `unknown field: ztunnel refuses it too; ${what} has ${known.join(', ')}`);
    }
  }

  at(field: string): string {
    return `${this.path}.${field}`;
  }

  /** Is the field written (null counts as not written)? */
  has(field: string): boolean {
    return this.v[field] !== undefined && this.v[field] !== null;
  }

  #get(field: string, required: boolean): unknown {
    if (!this.has(field)) {
      if (required) throw configError(this.at(field), 'missing: this field is required');
      return undefined;
    }
    return this.v[field];
  }

  /** A string; `dflt` undefined: required. Empty strings are strings. */
  str(field: string, dflt?: string): string {
    const x = this.#get(field, dflt === undefined);
    return x === undefined ? dflt! : str(this.at(field), x);
  }

  bool(field: string, dflt?: boolean): boolean {
    const x = this.#get(field, dflt === undefined);
    if (x === undefined) return dflt!;
    if (typeof x !== 'boolean') throw configError(this.at(field), `expected true or false, got ${show(x)}`);
    return x;
  }

  /** An unsigned integer of at most `max` (65535: u16, 4294967295: u32). */
  uint(field: string, max: number, dflt?: number): number {
    const x = this.#get(field, dflt === undefined);
    return x === undefined ? dflt! : uint(this.at(field), x, max);
  }

  /** One of `values`, written bare (a unit enum variant). */
  oneOf<const T extends string>(field: string, values: readonly T[], dflt?: T): T {
    const x = this.#get(field, dflt === undefined);
    return x === undefined ? dflt! : oneOf(this.at(field), x, values);
  }

  /** A list; absent: [] unless required. */
  list(field: string, required = false): unknown[] {
    const x = this.#get(field, required);
    if (x === undefined) return [];
    if (!Array.isArray(x)) throw configError(this.at(field), `expected a list, got ${show(x)}`);
    return x;
  }

  /** A mapping of any keys; absent: {} unless required. */
  map(field: string, required = false): Record<string, unknown> {
    const x = this.#get(field, required);
    if (x === undefined) return {};
    if (typeof x !== 'object' || Array.isArray(x) || x instanceof Tagged) throw configError(this.at(field), `expected a mapping, got ${show(x)}`);
    return x as Record<string, unknown>;
  }

  /** The field's value if written, for a reader of its own (an optional struct). */
  opt(field: string): unknown {
    return this.#get(field, false);
  }
}

export function str(path: string, x: unknown): string {
  if (typeof x !== 'string') throw configError(path, `expected a string, got ${show(x)}`);
  return x;
}

/** Integers may be written quoted ("8080"); YAML map keys always are, to JavaScript. */
export function uint(path: string, x: unknown, max: number): number {
  const n = typeof x === 'string' && /^\d+$/.test(x) ? Number(x) : x;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > max) throw configError(path, `expected a whole number from 0 to ${max}, got ${show(x)}`);
  return n;
}

export function oneOf<const T extends string>(path: string, x: unknown, values: readonly T[]): T {
  if (typeof x !== 'string' || !values.includes(x as T)) throw configError(path, `expected one of ${values.join(', ')}, got ${show(x)}`);
  return x as T;
}

/** An IP address without a prefix (Rust's IpAddr), written as Rust writes it (IPv6 lowercase and shortest: util/sockaddr.ts ipText). */
export function ipAddr(path: string, x: unknown): string {
  if (typeof x !== 'string' || !isIP(x)) throw configError(path, `expected an IP address, got ${show(x)}`);
  return ipText(x);
}

/** "ip/len" (Rust's ipnet::IpNet): the prefix length is required. */
export function ipNet(path: string, x: unknown): string {
  const s = str(path, x);
  const slash = s.indexOf('/');
  const fam = slash < 0 ? 0 : isIP(s.slice(0, slash));
  const len = Number(s.slice(slash + 1));
  if (!fam || !/^\d+$/.test(s.slice(slash + 1)) || len > (fam === 4 ? 32 : 128)) throw configError(path, `expected an address range "ip/length", got ${show(x)}`);
  return s;
}

/** A mapping u16 -> u16 (ports), keys and values checked. */
export function portMap(path: string, x: unknown): Record<number, number> {
  if (typeof x !== 'object' || x === null || Array.isArray(x) || x instanceof Tagged) throw configError(path, `expected a mapping of port to port, got ${show(x)}`);
  const out: Record<number, number> = {};
  for (const [k, v] of Object.entries(x)) out[uint(`${path}.${k} (key)`, k, 65535)] = uint(`${path}.${k}`, v, 65535);
  return out;
}

export function list<T>(path: string, x: unknown, each: (path: string, v: unknown) => T): T[] {
  if (!Array.isArray(x)) throw configError(path, `expected a list, got ${show(x)}`);
  return x.map((v, i) => each(`${path}[${i}]`, v));
}
