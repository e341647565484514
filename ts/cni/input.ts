/**
 * What inpod-cni reads from the runtime (the network configuration on stdin, the CNI_*
 * environment), decoded and checked before anything acts on it. Pure: every problem is a
 * CniFailure carrying the CNI spec's well-known error code (containernetworking/cni SPEC.md,
 * "Well-known Error Codes"), a message naming the field and what was expected, and details
 * saying what to fix. Nothing here throws anything else, whatever the input.
 */
import { isIP } from 'node:net';

export const SUPPORTED_VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0'];
export const DEFAULT_AGENT_SOCKET = '/var/run/inpod/pluginevent.sock';

/** The CNI spec's well-known error codes (1-99 reserved), and ours from 100. */
export const CNI_ERR = {
  INCOMPATIBLE_VERSION: 1,
  INVALID_ENV: 4,
  IO: 5,
  DECODE: 6,
  INVALID_CONFIG: 7,
  TRY_AGAIN: 11,
  /** a defect of inpod-cni itself (never expected) */
  INTERNAL: 100,
} as const;

/** The runtime's configuration is at most this large; real ones are a few KiB. */
export const MAX_STDIN_BYTES = 1 << 20;
export const DEFAULT_TIMEOUT_SECONDS = 60;
export const MAX_TIMEOUT_SECONDS = 600;
/** sun_path of a unix socket holds 107 bytes and a NUL */
const MAX_SOCKET_PATH = 107;

export class CniFailure extends Error {
  constructor(
    readonly cniCode: number,
    message: string,
    readonly details?: string,
  ) {
    super(message);
    this.name = 'CniFailure';
  }
}

export interface CniInput {
  command: string;
  containerId: string;
  netns: string;
  ifname: string;
  args: string;
  stdin: string;
}

/** The network configuration fields inpod-cni uses, checked. */
export interface NetConf {
  cniVersion: string;
  agentSocket: string;
  timeoutMs: number;
  /** the previous plugin's result, passed through unchanged (undefined: not chained) */
  prevResult?: Record<string, unknown>;
  /** the pod's addresses from prevResult.ips, without prefix length */
  ips: string[];
}

const show = (v: unknown): string => {
  const s = v === undefined ? 'nothing' : JSON.stringify(v);
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
};
const kind = (v: unknown): string => (v === null ? 'null' : Array.isArray(v) ? 'a list' : typeof v === 'object' ? 'an object' : `a ${typeof v}`);
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const invalid = (field: string, want: string, got: unknown): CniFailure =>
  new CniFailure(CNI_ERR.INVALID_CONFIG, `inpod-cni: the network configuration's ${field} must be ${want}, got ${show(got)}`, 'fix the inpod-cni entry of the CNI conflist (the inpod agent writes it) or the plugin before it in the chain');

/** Decodes stdin and checks every field inpod-cni reads. Throws CniFailure (6, 7 or 1). */
export function parseNetConf(stdin: string): NetConf {
  let conf: unknown;
  try {
    conf = JSON.parse(stdin);
  } catch (e) {
    throw new CniFailure(CNI_ERR.DECODE, 'inpod-cni: the network configuration on stdin is not valid JSON', (e as Error).message);
  }
  if (!isObject(conf)) {
    throw new CniFailure(CNI_ERR.DECODE, `inpod-cni: the network configuration on stdin must be a JSON object, got ${kind(conf)}`, 'the runtime passes the plugin its entry of the CNI conflist on stdin');
  }
  const version = conf.cniVersion;
  if (typeof version !== 'string' || version === '') throw invalid('cniVersion', 'a version string such as "1.0.0"', version);
  if (!SUPPORTED_VERSIONS.includes(version)) {
    throw new CniFailure(CNI_ERR.INCOMPATIBLE_VERSION, `inpod-cni: CNI version ${show(version)} is not supported (${SUPPORTED_VERSIONS.join(', ')})`, 'set the conflist cniVersion to one of the supported versions');
  }
  const socket = conf.agentSocket ?? DEFAULT_AGENT_SOCKET;
  if (typeof socket !== 'string' || !socket.startsWith('/') || Buffer.byteLength(socket) > MAX_SOCKET_PATH) {
    throw invalid('agentSocket', `an absolute path of at most ${MAX_SOCKET_PATH} bytes (a unix socket)`, socket);
  }
  const timeout = conf.timeoutSeconds ?? DEFAULT_TIMEOUT_SECONDS;
  if (typeof timeout !== 'number' || !Number.isFinite(timeout) || timeout <= 0 || timeout > MAX_TIMEOUT_SECONDS) {
    throw invalid('timeoutSeconds', `a number of seconds above 0 and at most ${MAX_TIMEOUT_SECONDS}`, timeout);
  }
  const prev = conf.prevResult;
  if (prev !== undefined && prev !== null && !isObject(prev)) throw invalid('prevResult', 'an object (the previous plugin\'s result)', prev);
  return { cniVersion: version, agentSocket: socket, timeoutMs: Math.round(timeout * 1000), prevResult: prev ?? undefined, ips: prevIps(prev ?? undefined) };
}

/** prevResult.ips[].address ("10.0.0.5/24") -> ["10.0.0.5"]. */
function prevIps(prev: Record<string, unknown> | undefined): string[] {
  const ips = prev?.ips;
  if (ips === undefined || ips === null) return [];
  if (!Array.isArray(ips)) throw invalid('prevResult.ips', 'a list', ips);
  return ips.map((entry: unknown, i) => {
    if (!isObject(entry)) throw invalid(`prevResult.ips[${i}]`, 'an object with an address', entry);
    const a = entry.address;
    const slash = typeof a === 'string' ? a.indexOf('/') : -1;
    const ip = typeof a === 'string' ? a.slice(0, slash < 0 ? a.length : slash) : '';
    const prefix = typeof a === 'string' && slash >= 0 ? a.slice(slash + 1) : '';
    const max = isIP(ip) === 6 ? 128 : 32;
    if (typeof a !== 'string' || !isIP(ip) || !/^\d{1,3}$/.test(prefix) || Number(prefix) > max) {
      throw invalid(`prevResult.ips[${i}].address`, 'an address with prefix length such as "10.0.0.5/24"', a);
    }
    return ip;
  });
}

/** CNI_COMMAND, checked. Throws CniFailure 4. */
export function parseCommand(command: string): 'ADD' | 'DEL' | 'CHECK' | 'VERSION' {
  if (!command) throw new CniFailure(CNI_ERR.INVALID_ENV, 'inpod-cni: CNI_COMMAND is not set', 'inpod-cni is a CNI plugin: a container runtime runs it with CNI_COMMAND=ADD, DEL, CHECK or VERSION');
  if (command === 'ADD' || command === 'DEL' || command === 'CHECK' || command === 'VERSION') return command;
  throw new CniFailure(CNI_ERR.INVALID_ENV, `inpod-cni: unknown CNI_COMMAND ${show(command)}`, 'supported: ADD, DEL, CHECK, VERSION');
}

/** CNI_CONTAINERID and CNI_NETNS as ADD needs them. Throws CniFailure 4 naming the variable. */
export function checkAddEnv(input: CniInput): void {
  if (!input.containerId) throw new CniFailure(CNI_ERR.INVALID_ENV, 'inpod-cni: CNI_CONTAINERID is not set', 'the runtime must pass the container ID');
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,1023}$/.test(input.containerId)) {
    throw new CniFailure(CNI_ERR.INVALID_ENV, `inpod-cni: CNI_CONTAINERID ${show(input.containerId)} is not a container ID`, 'the spec allows letters, digits, "_", "." and "-", starting with a letter or digit');
  }
  if (!input.netns) throw new CniFailure(CNI_ERR.INVALID_ENV, 'inpod-cni: CNI_NETNS is not set; the runtime must pass the pod network namespace');
  if (!input.netns.startsWith('/') || input.netns.length > 4096) {
    throw new CniFailure(CNI_ERR.INVALID_ENV, `inpod-cni: CNI_NETNS ${show(input.netns)} is not an absolute path`, 'the runtime passes a path such as /var/run/netns/<name> or /proc/<pid>/ns/net');
  }
}

export interface PodIdentity {
  podName: string;
  podNamespace: string;
  podUid: string;
}

export function parseCniArgs(args: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const kv of args.split(';')) {
    const i = kv.indexOf('=');
    if (i > 0) out[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return out;
}

const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/;
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const UID = /^[A-Za-z0-9-]{1,128}$/;

/**
 * The Kubernetes pod in CNI_ARGS (K8S_POD_NAME, K8S_POD_NAMESPACE, K8S_POD_UID), or null when it
 * is not a Kubernetes pod (no name or namespace). A value Kubernetes would never give throws
 * CniFailure 4 naming it.
 */
export function podIdentity(args: string): PodIdentity | null {
  const k8s = parseCniArgs(args);
  const name = k8s.K8S_POD_NAME ?? '';
  const ns = k8s.K8S_POD_NAMESPACE ?? '';
  const uid = k8s.K8S_POD_UID ?? '';
  if (!name || !ns) return null;
  const bad = (field: string, v: string, want: string): CniFailure =>
    new CniFailure(CNI_ERR.INVALID_ENV, `inpod-cni: CNI_ARGS ${field}=${show(v)} is not ${want}`, 'the runtime takes these from the pod; Kubernetes allows nothing else');
  if (!DNS_SUBDOMAIN.test(name)) throw bad('K8S_POD_NAME', name, 'a Kubernetes pod name');
  if (!DNS_LABEL.test(ns)) throw bad('K8S_POD_NAMESPACE', ns, 'a Kubernetes namespace name');
  if (uid && !UID.test(uid)) throw bad('K8S_POD_UID', uid, 'a Kubernetes UID');
  return { podName: name, podNamespace: ns, podUid: uid };
}
