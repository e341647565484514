/**
 * Chaining inpod-cni into the node's primary CNI config (pure functions + one file writer).
 * The primary config is the first file in lexical order (what the runtime loads); a plain .conf
 * is upgraded to a .conflist; our entry goes last; nothing else is touched.
 */
import { chmodSync, copyFileSync, existsSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MeshError } from '../util/errors.js';

export const PLUGIN_TYPE = 'inpod-cni';

export interface PluginEntry {
  type: string;
  [k: string]: unknown;
}
export interface ConfList {
  cniVersion: string;
  name: string;
  plugins: PluginEntry[];
  [k: string]: unknown;
}

/** The conflist with our entry last (replacing an older one of ours, so settings follow). */
export function withPlugin(list: ConfList, entry: PluginEntry): ConfList {
  const others = list.plugins.filter((p) => p.type !== PLUGIN_TYPE);
  return { ...list, plugins: [...others, entry] };
}

export function withoutPlugin(list: ConfList): ConfList {
  return { ...list, plugins: list.plugins.filter((p) => p.type !== PLUGIN_TYPE) };
}

/** A single-plugin .conf as a .conflist. */
export function upgradeConf(conf: Record<string, unknown>): ConfList {
  const { cniVersion, name, ...plugin } = conf;
  return { cniVersion: String(cniVersion ?? '1.0.0'), name: String(name ?? 'k8s-pod-network'), plugins: [plugin as PluginEntry] };
}

export function primaryConfig(confDir: string): string | null {
  if (!existsSync(confDir)) return null;
  const files = readdirSync(confDir).filter((f) => /\.(conflist|conf|json)$/.test(f)).sort();
  return files.length ? join(confDir, files[0]!) : null;
}

function writeAtomic(path: string, text: string): void {
  writeFileSync(`${path}.inpod-tmp`, text);
  renameSync(`${path}.inpod-tmp`, path);
}

/**
 * Inserts our entry into the primary config. Idempotent. Returns the conflist path written.
 * Throws (and writes nothing) if there is no primary config yet: the pod network's own CNI
 * must be installed first.
 */
export function installConf(confDir: string, entry: PluginEntry): string {
  const primary = primaryConfig(confDir);
  if (!primary) {
    throw new MeshError('INPOD_ERR_CNI', `no CNI config in ${confDir} yet: inpod chains after the pod network's own plugin; install that first (or wait for it)`, { retryable: true });
  }
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(readFileSync(primary, 'utf8')) as Record<string, unknown>;
  } catch (e) {
    throw new MeshError('INPOD_ERR_CNI', `${primary} is not valid JSON: ${(e as Error).message}`);
  }
  const isList = Array.isArray(doc.plugins);
  const list = isList ? (doc as ConfList) : upgradeConf(doc);
  const target = isList ? primary : primary.replace(/\.(conf|json)$/, '.conflist');
  const next = withPlugin(list, entry);
  if (isList && JSON.stringify(next) === JSON.stringify(list)) return target; // already in place
  writeAtomic(target, `${JSON.stringify(next, null, 2)}\n`);
  if (!isList) rmSync(primary);
  return target;
}

/** Removes exactly our entry from every conflist in confDir; returns the files it rewrote. Idempotent. */
export function uninstallConf(confDir: string): string[] {
  const changed: string[] = [];
  if (!existsSync(confDir)) return changed;
  for (const f of readdirSync(confDir).filter((n) => n.endsWith('.conflist'))) {
    const path = join(confDir, f);
    let list: ConfList;
    try {
      list = JSON.parse(readFileSync(path, 'utf8')) as ConfList;
    } catch {
      continue;
    }
    if (!Array.isArray(list.plugins) || !list.plugins.some((p) => p.type === PLUGIN_TYPE)) continue;
    writeAtomic(path, `${JSON.stringify(withoutPlugin(list), null, 2)}\n`);
    changed.push(path);
  }
  return changed;
}

/**
 * Installs the plugin executable: a copy of `source` (the static build/inpod-cni, which needs
 * nothing from the agent's image or the host's libraries) as binDir/inpod-cni, written aside and
 * renamed over, so a runtime executing the plugin meanwhile runs the old file or the new one,
 * whole (as istio-cni's install copies its binaries). Idempotent.
 */
export function installBinary(binDir: string, source: string): string {
  const path = join(binDir, PLUGIN_TYPE);
  copyFileSync(source, `${path}.inpod-tmp`);
  chmodSync(`${path}.inpod-tmp`, 0o755);
  renameSync(`${path}.inpod-tmp`, path);
  return path;
}

/** Removes the plugin executable; returns whether there was one. Idempotent. */
export function uninstallBinary(binDir: string): boolean {
  const path = join(binDir, PLUGIN_TYPE);
  const had = existsSync(path);
  rmSync(path, { force: true });
  return had;
}

/**
 * Everything the agent installed for the plugin, removed: the entry first (from then on the
 * runtime no longer calls the plugin), then the binary. What an uninstall does on shutdown and
 * `inpod agent uninstall` does by hand (istio cni/pkg/install/install.go Cleanup).
 */
export function uninstallCni(binDir: string, confDir: string): { confFiles: string[]; binary: boolean } {
  const confFiles = uninstallConf(confDir);
  return { confFiles, binary: uninstallBinary(binDir) };
}
