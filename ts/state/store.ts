/**
 * The indexed state the data path reads: by workload IP, by service VIP, by uid. Updates swap
 * the whole snapshot, so a reader never sees half an update, and connections already routed are
 * never touched by a reload. `watchFile` hot-reloads a local-config file: a broken file keeps the
 * last good state and reports why.
 */
import { EventEmitter } from 'node:events';
import { readFileSync, watch, type FSWatcher } from 'node:fs';
import { dirname, basename } from 'node:path';
import { parseLocalConfig } from './localconfig.js';
import { serviceKey, type MeshState, type Service, type Workload } from './types.js';

export class StateSnapshot {
  readonly byIp = new Map<string, Workload>();
  readonly byUid = new Map<string, Workload>();
  readonly byVip = new Map<string, Service>();
  readonly byServiceKey = new Map<string, Service>();
  /** "namespace/hostname" -> the workloads that claim membership */
  readonly endpoints = new Map<string, Workload[]>();

  constructor(readonly state: MeshState) {
    for (const w of state.workloads) {
      this.byUid.set(w.uid, w);
      for (const a of w.workloadIps) this.byIp.set(a, w);
      for (const key of Object.keys(w.services)) this.endpoints.set(key, [...(this.endpoints.get(key) ?? []), w]);
    }
    for (const s of state.services) {
      this.byServiceKey.set(serviceKey(s), s);
      for (const v of s.vips) this.byVip.set(v, s);
    }
  }
}

export interface StateEvents {
  update: [StateSnapshot];
  error: [Error];
}

/** How the state is doing, for the admin endpoint and operators. */
export interface StateHealth {
  /** the file (or directory) the state comes from, if any */
  source?: string;
  /** when the current state was set (ISO time) */
  loadedAt?: string;
  workloads: number;
  services: number;
  policies: number;
  /** problems that did not stop the current state, e.g. manifest files skipped */
  notes?: string[];
  /** why the last update was refused (cleared by the next good one); the state above is the last good one */
  lastError?: { code?: string; message: string; at: string };
}

export class StateStore extends EventEmitter<StateEvents> {
  #snap = new StateSnapshot({ workloads: [], services: [], policies: [] });
  #watcher: FSWatcher | undefined;
  #timer: NodeJS.Timeout | undefined;
  #source: string | undefined;
  #loadedAt: Date | undefined;
  #errorAt: Date | undefined;
  #notes: string[] = [];
  /** Why the last reload was refused, if it was. */
  lastError: Error | undefined;

  get snapshot(): StateSnapshot {
    return this.#snap;
  }

  /** Replaces the state; `notes` are problems of the source that did not stop this update (files skipped). */
  set(state: MeshState, notes: string[] = []): void {
    this.#snap = new StateSnapshot(state);
    this.#notes = notes;
    this.#loadedAt = new Date();
    this.lastError = undefined;
    this.emit('update', this.#snap);
  }

  /** A source's new state was refused: the current state stays, and the reason is kept and told. */
  refuse(e: Error): void {
    this.lastError = e;
    this.#errorAt = new Date();
    if (this.listenerCount('error') > 0) this.emit('error', e);
  }

  health(): StateHealth {
    const s = this.#snap.state;
    const e = this.lastError as (Error & { code?: string }) | undefined;
    return {
      source: this.#source,
      loadedAt: this.#loadedAt?.toISOString(),
      workloads: s.workloads.length,
      services: s.services.length,
      policies: s.policies.length,
      ...(this.#notes.length ? { notes: this.#notes } : {}),
      ...(e ? { lastError: { code: e.code, message: e.message, at: (this.#errorAt ?? new Date()).toISOString() } } : {}),
    };
  }

  /** Tells the store where its state comes from, for `health()` (sources other than watchFile). */
  describeSource(source: string): void {
    this.#source = source;
  }

  /** Loads `path` now (throws if broken) and reloads it on every change after that. */
  watchFile(path: string, debounceMs = 100): void {
    this.#source = path;
    this.set(parseLocalConfig(readFileSync(path, 'utf8'), path));
    // Watch the directory: editors and kubelet's ConfigMap updates replace the file.
    this.#watcher = watch(dirname(path), (_ev, name) => {
      if (name && name !== basename(path) && !name.startsWith('..')) return;
      clearTimeout(this.#timer);
      this.#timer = setTimeout(() => this.#reload(path), debounceMs);
    });
  }

  #reload(path: string): void {
    try {
      this.set(parseLocalConfig(readFileSync(path, 'utf8'), path));
    } catch (e) {
      this.refuse(e as Error);
    }
  }

  close(): void {
    this.#watcher?.close();
    clearTimeout(this.#timer);
  }
}
