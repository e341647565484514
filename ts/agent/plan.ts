/**
 * What the agent does about a pod, decided without doing it (pure): the pod as the cluster has it
 * and the sandboxes the agent knows of it (desired), against what the kernel captures and the
 * proxy serves (actual), give an ordered list of actions; dataplane.ts carries them out. The
 * same split as istio-cni's informer handler deciding add/remove (cni/pkg/nodeagent/informers.go
 * reconcilePod) and its NetServer doing it (net_linux.go AddPodToMesh / RemovePodFromMesh).
 *
 * Capture is per sandbox, the proxy's view per pod: for a pod in the mesh every sandbox whose
 * netns is still there is captured, and the newest is the one served (ZDS names a pod by uid
 * alone). An older sandbox that is still there stays captured with no proxy listening in it: it
 * fails closed until its own DEL, or until its netns is gone, releases it.
 */
import type { WorkloadInfo } from '../zds/messages.js';
import { meshVerdict, NO_EXCLUSIONS, podCaptureSettings, REDIRECTION_ANNOTATION, type NamespaceObj, type PodObj, type Verdict } from './policy.js';
import { delTargets, newest, sandboxKey, type Sandbox } from './sandboxes.js';
import type { PodEvent } from '../cni/plugin.js';

export type CaptureSettings = ReturnType<typeof podCaptureSettings>;

/** One sandbox as the agent sees it now. */
export interface SandboxView {
  sandbox: Sandbox;
  /** captured in the kernel */
  captured: boolean;
  /** the one the proxy serves for its pod */
  served: boolean;
  /** its netns path still exists */
  present: boolean;
  /** its netns is at hand: held open, or its path still names it (same cookie) */
  alive: boolean;
}

export type Action =
  /**
   * Capture a sandbox: `enroll` it in the kernel, `serve` it (ZDS Add: the proxy switches the pod
   * to this netns), `annotate` the pod as captured; `requireProxy`: fail, before changing
   * anything, unless a proxy is connected (a CNI ADD must not return before the pod is served).
   */
  | { do: 'capture'; sandbox: Sandbox; enroll: boolean; serve: boolean; annotate: boolean; requireProxy: boolean; settings: CaptureSettings; info: WorkloadInfo }
  /** Stop serving (if served) and capturing (if captured) a sandbox; its record stays. */
  | { do: 'uncapture'; sandbox: Sandbox }
  /** The sandbox is over (its DEL, or its netns is gone): uncapture it and forget its record. */
  | { do: 'release'; sandbox: Sandbox }
  /** Remove the pod's redirection annotation. */
  | { do: 'unannotate' };

export interface PodPlan {
  /** undefined when the pod is gone from the cluster */
  verdict?: Verdict;
  actions: Action[];
}

/**
 * What the proxy is told about a pod served from `s`: its service account copied as the pod
 * names it, "" when it names none (istio-cni's ztunnelserver.go `podToWorkload`; the API server
 * always fills it in, ts/agent/manifests.ts does so for a manifest directory).
 */
export function workloadInfo(pod: PodObj | undefined, s: Sandbox): WorkloadInfo {
  return { name: s.name, namespace: s.namespace, serviceAccount: pod?.spec?.serviceAccountName ?? '' };
}

const uncapturable = (v: SandboxView): boolean => v.captured || v.served;

/**
 * A pod event (the live path): `pod` undefined means it is gone from the cluster, and `sandboxes`
 * are those recorded under its namespace/name. A pod leaving the mesh is uncaptured, every
 * sandbox; a pod in it has its gone sandboxes released, its live ones captured and its newest served.
 */
export function plan(pod: PodObj | undefined, namespace: NamespaceObj | undefined, sandboxes: SandboxView[], excluded = NO_EXCLUSIONS): PodPlan {
  if (!pod) return { actions: sandboxes.filter(uncapturable).map((v) => ({ do: 'uncapture', sandbox: v.sandbox })) };
  const verdict = meshVerdict(namespace, pod, excluded);
  const annotation = pod.metadata?.annotations?.[REDIRECTION_ANNOTATION];
  const actions: Action[] = [];
  if (!verdict.enroll) {
    for (const v of sandboxes.filter(uncapturable)) actions.push({ do: 'uncapture', sandbox: v.sandbox });
    if (annotation) actions.push({ do: 'unannotate' });
    return { verdict, actions };
  }
  const live = sandboxes.filter((v) => v.present && v.alive);
  for (const v of sandboxes) if (!live.includes(v)) actions.push({ do: 'release', sandbox: v.sandbox });
  const top = newest(live.map((v) => v.sandbox));
  if (!top) {
    if (annotation) actions.push({ do: 'unannotate' });
    return { verdict, actions };
  }
  const settings = podCaptureSettings(pod);
  for (const v of live) {
    if (v.sandbox === top) continue;
    if (!v.captured) actions.push({ do: 'capture', sandbox: v.sandbox, enroll: true, serve: false, annotate: false, requireProxy: false, settings, info: workloadInfo(pod, v.sandbox) });
  }
  const t = live.find((v) => v.sandbox === top)!;
  const annotate = !t.captured || !t.served || annotation !== 'enabled';
  if (annotate) actions.push({ do: 'capture', sandbox: top, enroll: !t.captured, serve: !t.served, annotate, requireProxy: false, settings, info: workloadInfo(pod, top) });
  return { verdict, actions };
}

/**
 * A CNI ADD of `sandbox` (already recorded, so among `sandboxes`): if the pod belongs in the mesh,
 * capture that sandbox, and serve it if it is the pod's newest (a later ADD may have come
 * meanwhile: then that one is served and this one only captured). Always requires a proxy.
 */
export function planAdd(pod: PodObj, namespace: NamespaceObj | undefined, sandboxes: SandboxView[], sandbox: Sandbox, excluded = NO_EXCLUSIONS): Required<PodPlan> {
  const verdict = meshVerdict(namespace, pod, excluded);
  if (!verdict.enroll) return { verdict, actions: [] };
  const me = sandboxes.find((v) => sandboxKey(v.sandbox) === sandboxKey(sandbox));
  const isNewest = sandboxKey(newest(sandboxes.map((v) => v.sandbox)) ?? sandbox) === sandboxKey(sandbox);
  const enroll = !me?.captured;
  const serve = isNewest && !me?.served;
  const annotate = isNewest && (enroll || serve || pod.metadata?.annotations?.[REDIRECTION_ANNOTATION] !== 'enabled');
  return { verdict, actions: [{ do: 'capture', sandbox, enroll, serve, annotate, requireProxy: true, settings: podCaptureSettings(pod), info: workloadInfo(pod, sandbox) }] };
}

/** A CNI DEL: release the sandboxes it names (delTargets), only those. `cookie`: of ev.netns, when it exists. */
export function planDel(mine: Sandbox[], ev: Pick<PodEvent, 'containerId' | 'netns'>, cookie: string | null, alive: (s: Sandbox) => boolean): Action[] {
  return delTargets(mine, ev, cookie, alive).map((sandbox) => ({ do: 'release', sandbox }));
}

export interface RestartPlan {
  /** records of pods gone from the cluster, or whose netns is gone */
  forget: Sandbox[];
  /** every live sandbox of a pod in the mesh stays captured (the backend drops everything else) */
  keep: { sandbox: Sandbox; settings: CaptureSettings }[];
  /** per pod in the mesh, its newest sandbox is the one served */
  serve: { sandbox: Sandbox; info: WorkloadInfo }[];
  /** pods in the mesh not yet annotated as captured */
  annotate: PodObj[];
}

/**
 * Pods in the mesh whose netns the agent does not know (`known(uid)` false): to be looked for in
 * /proc, all of them in one scan.
 */
export function undiscovered(pods: PodObj[], namespace: (name: string) => NamespaceObj | undefined, known: (uid: string) => boolean, excluded = NO_EXCLUSIONS): PodObj[] {
  return pods.filter((p) => meshVerdict(namespace(p.metadata?.namespace ?? ''), p, excluded).enroll && !known(p.metadata?.uid ?? ''));
}

/**
 * After an agent restart (nothing is known captured or served yet): keep every live sandbox of a
 * pod in the mesh, serve its newest, forget records of pods that are gone and of netns that are gone.
 */
export function planRestart(pods: PodObj[], namespace: (name: string) => NamespaceObj | undefined, sandboxes: SandboxView[], excluded = NO_EXCLUSIONS): RestartPlan {
  const uids = new Set(pods.map((p) => p.metadata?.uid));
  const out: RestartPlan = { forget: [], keep: [], serve: [], annotate: [] };
  for (const v of sandboxes) if (!uids.has(v.sandbox.uid) || !v.alive) out.forget.push(v.sandbox);
  for (const pod of pods) {
    if (!meshVerdict(namespace(pod.metadata?.namespace ?? ''), pod, excluded).enroll) continue;
    const mine = sandboxes.filter((v) => v.alive && v.sandbox.uid === pod.metadata?.uid).map((v) => v.sandbox);
    const top = newest(mine);
    if (!top) continue;
    for (const s of mine) out.keep.push({ sandbox: s, settings: podCaptureSettings(pod) });
    out.serve.push({ sandbox: top, info: workloadInfo(pod, top) });
    if (pod.metadata?.annotations?.[REDIRECTION_ANNOTATION] !== 'enabled') out.annotate.push(pod);
  }
  return out;
}
