/**
 * Shutdown: does the agent leave its CNI plugin installed, or remove it? Pure decisions.
 *
 * As istio-cni (istio cni/pkg/nodeagent/server.go ShouldStopCleanup, called from
 * cni/pkg/cmd/root.go on shutdown): the plugin entry and binary stay when the agent's DaemonSet
 * still exists and still schedules to this node, which is an upgrade (a rollout replaces the
 * pod) or a reboot: new pods then wait for the next agent instead of starting uncaptured. They
 * are removed when the DaemonSet is gone or being deleted, when it no longer schedules here, or
 * when the agent's permission to read it was revoked (an uninstall deletes the role with it),
 * since no agent will come back to answer the plugin. Running pods keep their capture either way:
 * it lives in the kernel, and goes with each pod.
 *
 * "Schedules here" is judged as the DaemonSet controller does (kubernetes
 * pkg/controller/daemon/daemon_controller.go predicates()): the template's nodeName, its
 * nodeSelector and required node affinity against the node's labels and name, and its
 * tolerations against the node's NoSchedule/NoExecute taints, with the tolerations the
 * controller adds to every DaemonSet pod (pkg/controller/daemon/util/daemonset_util.go
 * AddOrUpdateDaemonPodTolerations: not-ready, unreachable, the pressure taints, unschedulable),
 * so a node that is rebooting, draining or under pressure keeps the plugin. istio-cni checks the
 * required node affinity alone; the selector and taints are checked too because they decide
 * just as much whether a new agent pod comes.
 *
 * Where istio-cni differs by its config mode, inpod keeps: when the API cannot be read (after
 * retries) istio-cni removes a plugin chained into another config, inpod keeps it (as istio-cni
 * does for a config file it owns). Removing it on a mere API outage during an upgrade or reboot
 * would let the next mesh pods start uncaptured; keeping it after an uninstall during an outage
 * stalls mesh pods on that node until `inpod agent uninstall` is run there, which is the
 * fail-closed side.
 */

export interface Toleration {
  key?: string;
  operator?: string;
  value?: string;
  effect?: string;
}
export interface Taint {
  key: string;
  value?: string;
  effect: string;
}
export interface NodeSelectorRequirement {
  key: string;
  operator: string;
  values?: string[];
}
export interface NodeSelectorTerm {
  matchExpressions?: NodeSelectorRequirement[];
  matchFields?: NodeSelectorRequirement[];
}
export interface PodTemplateSpec {
  nodeName?: string;
  nodeSelector?: Record<string, string>;
  hostNetwork?: boolean;
  tolerations?: Toleration[];
  affinity?: { nodeAffinity?: { requiredDuringSchedulingIgnoredDuringExecution?: { nodeSelectorTerms?: NodeSelectorTerm[] } } };
}
/** The fields of an apps/v1 DaemonSet read here. */
export interface DaemonSetObj {
  metadata?: { name?: string; namespace?: string; uid?: string; deletionTimestamp?: string | Date };
  spec?: { template?: { spec?: PodTemplateSpec } };
}
/** The fields of a v1 Node read here. */
export interface NodeObj {
  metadata?: { name?: string; labels?: Record<string, string> };
  spec?: { taints?: Taint[] };
}

/** What the agent could learn about its owner at shutdown (ts/agent/selfowner.ts asks the API). */
export type OwnerLookup =
  /** the owning DaemonSet, and this node (null: the Node object is gone) */
  | { state: 'present'; daemonSet: DaemonSetObj; node: NodeObj | null }
  /** no DaemonSet will run an agent here: it was deleted, or the agent's pod has no DaemonSet owner */
  | { state: 'gone'; why: string }
  /** the API refused the agent (401/403): its service account or role was deleted */
  | { state: 'revoked'; status: number; what: string }
  /** the API could not be read (unreachable, timed out, 5xx) after the retries */
  | { state: 'unknown'; error: string }
  /** no API server: pods come from a manifest directory */
  | { state: 'no-api' };

export interface ShutdownVerdict {
  /** remove the plugin entry from the CNI config and the binary from the CNI bin dir */
  cleanup: boolean;
  reason: string;
}

/** The decision (see the file comment). */
export function shutdownVerdict(l: OwnerLookup): ShutdownVerdict {
  switch (l.state) {
    case 'no-api':
      return { cleanup: false, reason: 'no API server (manifest directory): the plugin stays; `inpod agent uninstall` removes it' };
    case 'unknown':
      return { cleanup: false, reason: `could not read the agent's DaemonSet (${l.error}): the plugin stays (fail closed); if this was an uninstall, run \`inpod agent uninstall\` on this node` };
    case 'revoked':
      return { cleanup: true, reason: `the API refused to show ${l.what} (${l.status}): the agent's access is being removed with its install` };
    case 'gone':
      return { cleanup: true, reason: l.why };
    case 'present': {
      const name = l.daemonSet.metadata?.name ?? '(unnamed)';
      if (l.daemonSet.metadata?.deletionTimestamp) return { cleanup: true, reason: `DaemonSet ${name} is being deleted` };
      if (!l.node) return { cleanup: true, reason: 'this node\'s Node object is gone: no agent will be scheduled here' };
      const fit = schedulesOn(l.daemonSet, l.node);
      if (!fit.fits) return { cleanup: true, reason: `DaemonSet ${name} no longer schedules to node ${l.node.metadata?.name}: ${fit.why}` };
      return { cleanup: false, reason: `DaemonSet ${name} still schedules to node ${l.node.metadata?.name}: an upgrade or a reboot, the plugin stays for the next agent` };
    }
  }
}

/** Tolerations the DaemonSet controller adds to every pod it creates (AddOrUpdateDaemonPodTolerations). */
export function daemonPodTolerations(hostNetwork: boolean): Toleration[] {
  const t: Toleration[] = [
    { key: 'node.kubernetes.io/not-ready', operator: 'Exists', effect: 'NoExecute' },
    { key: 'node.kubernetes.io/unreachable', operator: 'Exists', effect: 'NoExecute' },
    { key: 'node.kubernetes.io/disk-pressure', operator: 'Exists', effect: 'NoSchedule' },
    { key: 'node.kubernetes.io/memory-pressure', operator: 'Exists', effect: 'NoSchedule' },
    { key: 'node.kubernetes.io/pid-pressure', operator: 'Exists', effect: 'NoSchedule' },
    { key: 'node.kubernetes.io/unschedulable', operator: 'Exists', effect: 'NoSchedule' },
  ];
  if (hostNetwork) t.push({ key: 'node.kubernetes.io/network-unavailable', operator: 'Exists', effect: 'NoSchedule' });
  return t;
}

/** Would the DaemonSet controller run a pod of `ds` on `node`? (predicates(): name, affinity, taints) */
export function schedulesOn(ds: DaemonSetObj, node: NodeObj): { fits: true } | { fits: false; why: string } {
  const spec = ds.spec?.template?.spec ?? {};
  const nodeName = node.metadata?.name ?? '';
  const labels = node.metadata?.labels ?? {};
  if (spec.nodeName && spec.nodeName !== nodeName) return { fits: false, why: `its template names node ${spec.nodeName}` };
  for (const [k, v] of Object.entries(spec.nodeSelector ?? {})) {
    if (labels[k] !== v) return { fits: false, why: `nodeSelector ${k}=${v} does not match the node's labels` };
  }
  const required = spec.affinity?.nodeAffinity?.requiredDuringSchedulingIgnoredDuringExecution;
  if (required && !(required.nodeSelectorTerms ?? []).some((t) => termMatches(t, labels, nodeName))) {
    return { fits: false, why: 'no term of its required node affinity matches the node' };
  }
  const tolerations = [...(spec.tolerations ?? []), ...daemonPodTolerations(spec.hostNetwork === true)];
  const untolerated = (node.spec?.taints ?? []).find((taint) => (taint.effect === 'NoSchedule' || taint.effect === 'NoExecute') && !tolerations.some((t) => tolerates(t, taint)));
  if (untolerated) return { fits: false, why: `taint ${untolerated.key}${untolerated.value ? `=${untolerated.value}` : ''}:${untolerated.effect} is not tolerated` };
  return { fits: true };
}

/**
 * One term of a node selector: every expression and field requirement holds. An empty term
 * matches nothing (as the API documents: "a null or empty node selector term matches no objects").
 */
export function termMatches(term: NodeSelectorTerm, labels: Record<string, string>, nodeName: string): boolean {
  const exprs = term.matchExpressions ?? [];
  const fields = term.matchFields ?? [];
  if (exprs.length === 0 && fields.length === 0) return false;
  // the only field a node selector may name is metadata.name, with In or NotIn
  const fieldOk = (r: NodeSelectorRequirement): boolean =>
    r.key === 'metadata.name' && (r.operator === 'In' || r.operator === 'NotIn') && requirementMatches(r, { 'metadata.name': nodeName });
  return exprs.every((r) => requirementMatches(r, labels)) && fields.every(fieldOk);
}

/** A label requirement (In, NotIn, Exists, DoesNotExist, Gt, Lt); an unknown operator matches nothing. */
export function requirementMatches(r: NodeSelectorRequirement, labels: Record<string, string>): boolean {
  const has = Object.hasOwn(labels, r.key);
  const v = labels[r.key];
  const values = r.values ?? [];
  const int = (s: string | undefined): number | null => (s !== undefined && /^-?\d+$/.test(s) ? Number(s) : null);
  switch (r.operator) {
    case 'In':
      return has && values.includes(v!);
    case 'NotIn':
      return !has || !values.includes(v!);
    case 'Exists':
      return has;
    case 'DoesNotExist':
      return !has;
    case 'Gt':
    case 'Lt': {
      const [a, b] = [int(v), int(values[0])];
      if (!has || a === null || b === null || values.length !== 1) return false;
      return r.operator === 'Gt' ? a > b : a < b;
    }
    default:
      return false;
  }
}

/** Toleration.ToleratesTaint of the core API. */
export function tolerates(t: Toleration, taint: Taint): boolean {
  if (t.effect && t.effect !== taint.effect) return false;
  if (t.key && t.key !== taint.key) return false;
  const op = t.operator || 'Equal';
  if (op === 'Exists') return true;
  if (op !== 'Equal' || !t.key) return false; // an empty key needs Exists
  return (t.value ?? '') === (taint.value ?? '');
}
