/**
 * inpod-cni, the chained CNI plugin, as the agent sees it: the static executable it installs
 * (cni/inpod-cni.c, built by the Makefile into build/inpod-cni), the conflist entry that
 * configures it, and the event it posts to the agent's socket (ts/agent/cniserver.ts). The
 * plugin checks its input and looks pods up in the mesh view (ts/agent/meshview.ts); every
 * decision about the mesh is the agent's (ts/agent/policy.ts). ARCHITECTURE.md ("CNI") says
 * why it is C and what stays here.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MeshError } from '../util/errors.js';

export const DEFAULT_AGENT_SOCKET = '/var/run/inpod/pluginevent.sock';
/** the plugin's default too (cni/input.h DEFAULT_MESH_VIEW) */
export const DEFAULT_MESH_VIEW = '/var/run/inpod/meshview.json';
/** the system's namespace and the one inpod is installed in (cni/input.h DEFAULT_EXCLUDED) */
export const DEFAULT_EXCLUDED_NAMESPACES = ['kube-system', 'inpod-system'];
export const SUPPORTED_VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0'];

/** What the plugin posts to the agent on ADD and DEL (cni/inpod-cni.c pod_event). */
export interface PodEvent {
  podName: string;
  podNamespace: string;
  podUid: string;
  netns: string;
  containerId: string;
  /** prevResult.ips of both families without prefix length, canonical, each once (cni/input.h check_prev_ips) */
  ips: string[];
}

/** The plugin's own fields of its conflist entry (cni/input.h parse_netconf reads and checks them). */
export interface PluginSettings {
  /** the agent's unix socket */
  agentSocket: string;
  /** the mesh view the agent keeps */
  meshView: string;
  /** pods of these namespaces are passed through without a look at the view or the agent */
  excludeNamespaces: string[];
  /** how long ADD waits for the agent (default 60 s; DEL at most 10 s) */
  timeoutSeconds?: number;
}

/**
 * The static plugin executable of this build: build/inpod-cni next to dist/ (or ts/ under
 * vitest), /opt/inpod/build/inpod-cni in the image; INPOD_CNI_BINARY overrides. Throws when it
 * was not built.
 */
export function pluginBinary(): string {
  const path = process.env.INPOD_CNI_BINARY ?? join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'build', 'inpod-cni');
  if (!existsSync(path)) throw new MeshError('INPOD_ERR_CNI', `the CNI plugin ${path} is missing; run "make build" (it compiles cni/inpod-cni.c)`);
  return path;
}
