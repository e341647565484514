/**
 * Where the agent learns about namespaces and this node's pods. Two sources behind one
 * interface: the Kubernetes API (informers, kube.ts) and a directory of YAML manifests
 * (manifests.ts) for one host without a cluster. Handlers read the source's cache.
 */
import type { EventEmitter } from 'node:events';
import type { NamespaceObj, PodObj } from './policy.js';

export interface SourceEvents {
  /** a namespace changed (labels): re-evaluate its pods */
  namespace: [name: string];
  /** a pod appeared, changed or went away */
  pod: [namespace: string, name: string];
  /** the source lost its connection (it retries by itself) */
  error: [Error];
  synced: [];
}

export interface ClusterSource extends EventEmitter<SourceEvents> {
  start(): Promise<void>;
  stop(): void;
  namespace(name: string): NamespaceObj | undefined;
  /** every namespace in the cache (the mesh view lists them all, ts/agent/meshview.ts) */
  listNamespaces(): NamespaceObj[];
  pod(namespace: string, name: string): PodObj | undefined;
  pods(): PodObj[];
  /** Sets (value) or removes (null) an annotation on a pod. */
  annotatePod(namespace: string, name: string, key: string, value: string | null): Promise<void>;
}
