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

export class StateStore extends EventEmitter<StateEvents> {
  #snap = new StateSnapshot({ workloads: [], services: [], policies: [] });
  #watcher: FSWatcher | undefined;
  #timer: NodeJS.Timeout | undefined;
  /** Why the last reload was refused, if it was. */
  lastError: Error | undefined;

  get snapshot(): StateSnapshot {
    return this.#snap;
  }

  set(state: MeshState): void {
    this.#snap = new StateSnapshot(state);
    this.lastError = undefined;
    this.emit('update', this.#snap);
  }

  /** Loads `path` now (throws if broken) and reloads it on every change after that. */
  watchFile(path: string, debounceMs = 100): void {
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
      this.lastError = e as Error;
      this.emit('error', e as Error);
    }
  }

  close(): void {
    this.#watcher?.close();
    clearTimeout(this.#timer);
  }
}
