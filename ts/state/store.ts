/**
 * The indexed state the data path reads: by workload IP, by service VIP, by uid. Updates swap
 * the whole snapshot, so a reader never sees half an update, and connections already routed are
 * never touched by a reload. `watchFile` hot-reloads a local-config file: the new file is read,
 * parsed and validated whole in a worker thread, and only then replaces the state; an empty,
 * half-written, invalid or oversized file keeps the last good state and says why (`lastError`,
 * the 'error' event, `health()`).
 */
import { EventEmitter } from 'node:events';
import { watch, type FSWatcher } from 'node:fs';
import { dirname, basename } from 'node:path';
import { loadConfigFile, loadConfigFileOffThread } from './configfile.js';
import { serviceKey, type MeshState, type Service, type Workload } from './types.js';

export class StateSnapshot {
  readonly byIp = new Map<string, Workload>();
  readonly byUid = new Map<string, Workload>();
  readonly byVip = new Map<string, Service>();
  readonly byServiceKey = new Map<string, Service>();
  /** "namespace/hostname" -> the workloads that claim membership */
  readonly endpoints = new Map<string, Workload[]>();

  /** Indexes `state` now; `index: false` leaves that to `build`. */
  constructor(
    readonly state: MeshState,
    index = true,
  ) {
    if (!index) return;
    this.#addWorkloads(0, state.workloads.length);
    this.#addServices();
  }

  /** The same snapshot, indexed `slice` workloads per turn of the event loop, so a large state never holds it long. */
  static async build(state: MeshState, slice = 10_000): Promise<StateSnapshot> {
    const snap = new StateSnapshot(state, false);
    for (let i = 0; i < state.workloads.length; i += slice) {
      snap.#addWorkloads(i, Math.min(i + slice, state.workloads.length));
      await new Promise((r) => setImmediate(r));
    }
    snap.#addServices();
    return snap;
  }

  #addWorkloads(from: number, to: number): void {
    for (let i = from; i < to; i++) {
      const w = this.state.workloads[i]!;
      this.byUid.set(w.uid, w);
      // a host-network workload shares its node's IP with others: never looked up by it (ztunnel's WorkloadStore::insert)
      if (w.networkMode !== 'HostNetwork') for (const a of w.workloadIps) this.byIp.set(a, w);
      for (const key of Object.keys(w.services)) {
        const members = this.endpoints.get(key);
        if (members) members.push(w);
        else this.endpoints.set(key, [w]);
      }
    }
  }

  #addServices(): void {
    for (const s of this.state.services) {
      this.byServiceKey.set(serviceKey(s), s);
      // by IP alone: the proxy serves one network (ztunnel keys VIPs by network and IP)
      for (const v of s.vips) this.byVip.set(v.address, s);
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
  /** a reload is being read in the background */
  loading: boolean;
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
  #loading = false;
  #notes: string[] = [];
  #again = false;
  #closed = false;
  /** Why the last reload was refused, if it was. */
  lastError: Error | undefined;

  get snapshot(): StateSnapshot {
    return this.#snap;
  }

  /** Replaces the state; `notes` are problems of the source that did not stop this update (files skipped). */
  set(state: MeshState, notes: string[] = []): void {
    this.#swap(new StateSnapshot(state), notes);
  }

  #swap(snap: StateSnapshot, notes: string[] = []): void {
    this.#snap = snap;
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
      loading: this.#loading,
      loadedAt: this.#loadedAt?.toISOString(),
      workloads: s.workloads.length,
      services: s.services.length,
      policies: s.policies.length + (s.authorizations?.length ?? 0),
      ...(this.#notes.length ? { notes: this.#notes } : {}),
      ...(e ? { lastError: { code: e.code, message: e.message, at: (this.#errorAt ?? new Date()).toISOString() } } : {}),
    };
  }

  /** Tells the store where its state comes from, for `health()` (sources other than watchFile). */
  describeSource(source: string): void {
    this.#source = source;
  }

  /**
   * Loads `path` now, on this thread (throws if it is broken; an empty file is an empty state),
   * then reloads it in a worker thread on every change. Reloads never overlap: a change during
   * one is read once that one ends. An empty file at reload is refused, never read as "no workloads".
   */
  watchFile(path: string, debounceMs = 100): void {
    this.#source = path;
    this.set(loadConfigFile(path));
    // Watch the directory: editors and kubelet's ConfigMap updates replace the file.
    this.#watcher = watch(dirname(path), (_ev, name) => {
      if (name && name !== basename(path) && !name.startsWith('..')) return;
      clearTimeout(this.#timer);
      this.#timer = setTimeout(() => this.#reload(path), debounceMs);
    });
  }

  #reload(path: string): void {
    if (this.#closed) return;
    if (this.#loading) {
      this.#again = true;
      return;
    }
    this.#loading = true;
    const settle = (apply: () => void): void => {
      this.#loading = false; // before anyone is told, so health() agrees with the event
      try {
        if (!this.#closed) apply();
      } finally {
        if (this.#again) {
          this.#again = false;
          this.#reload(path);
        }
      }
    };
    loadConfigFileOffThread(path, { empty: 'refuse' })
      .then((state) => StateSnapshot.build(state))
      .then(
        (snap) => settle(() => this.#swap(snap)),
        (e: Error) => settle(() => this.refuse(e)),
      );
  }

  close(): void {
    this.#closed = true;
    this.#watcher?.close();
    clearTimeout(this.#timer);
  }
}
