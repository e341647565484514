/**
 * The chained CNI plugin (spec 1.0.0). ADD asks the agent to capture the pod and hand it to the
 * proxy, and returns only once both are done; if that fails the runtime gets a CNI error and
 * retries, so an ambient pod never starts uncaptured. The previous result passes through
 * unchanged. DEL always succeeds. Errors are CNI error JSON naming the cause.
 */
import http from 'node:http';

export const SUPPORTED_VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0'];
export const DEFAULT_AGENT_SOCKET = '/var/run/inpod/pluginevent.sock';

export interface CniInput {
  command: string;
  containerId: string;
  netns: string;
  ifname: string;
  args: string;
  stdin: string;
}

export interface CniOutput {
  code: number; // process exit code
  stdout: string;
}

export interface PodEvent {
  podName: string;
  podNamespace: string;
  podUid: string;
  netns: string;
  containerId: string;
  ips: string[];
}

/** Sends one event to the agent; resolves with its JSON answer or rejects with its error. */
export type AgentCall = (socket: string, path: string, body: object, timeoutMs: number) => Promise<Record<string, unknown>>;

export const callAgent: AgentCall = (socket, path, body, timeoutMs) =>
  new Promise((resolve, reject) => {
    const data = JSON.stringify(body);
    const req = http.request({ socketPath: socket, path, method: 'POST', headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) }, timeout: timeoutMs }, (res) => {
      let text = '';
      res.on('data', (d) => (text += d));
      res.on('end', () => {
        let json: Record<string, unknown> = {};
        try {
          json = JSON.parse(text || '{}') as Record<string, unknown>;
        } catch {
          json = { error: text };
        }
        if (res.statusCode === 200) resolve(json);
        else reject(new Error(String(json.error ?? `agent answered ${res.statusCode}`)));
      });
    });
    req.on('timeout', () => req.destroy(new Error(`the inpod agent did not answer on ${socket} within ${timeoutMs / 1000} s`)));
    req.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT' || e.code === 'ECONNREFUSED') reject(new Error(`the inpod agent is not running (no listener on ${socket}); is the inpod agent DaemonSet up on this node?`));
      else reject(e);
    });
    req.end(data);
  });

function cniError(version: string, code: number, msg: string, details?: string): CniOutput {
  return { code: 1, stdout: JSON.stringify({ cniVersion: version, code, msg, ...(details ? { details } : {}) }) };
}

export function parseCniArgs(args: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const kv of args.split(';')) {
    const i = kv.indexOf('=');
    if (i > 0) out[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return out;
}

/** Runs one CNI command. Never throws: every failure is a CNI error result. */
export async function runPlugin(input: CniInput, call: AgentCall = callAgent): Promise<CniOutput> {
  let conf: Record<string, unknown>;
  try {
    conf = JSON.parse(input.stdin) as Record<string, unknown>;
  } catch (e) {
    return cniError('1.0.0', 6, 'inpod-cni: the network configuration on stdin is not valid JSON', (e as Error).message);
  }
  const version = typeof conf.cniVersion === 'string' ? conf.cniVersion : '1.0.0';
  if (input.command === 'VERSION') {
    return { code: 0, stdout: JSON.stringify({ cniVersion: '1.0.0', supportedVersions: SUPPORTED_VERSIONS }) };
  }
  if (!SUPPORTED_VERSIONS.includes(version)) return cniError(version, 1, `inpod-cni: CNI version ${version} is not supported (${SUPPORTED_VERSIONS.join(', ')})`);
  const socket = typeof conf.agentSocket === 'string' ? conf.agentSocket : DEFAULT_AGENT_SOCKET;
  const timeoutMs = typeof conf.timeoutSeconds === 'number' ? conf.timeoutSeconds * 1000 : 60_000;
  const k8s = parseCniArgs(input.args);
  const prev = conf.prevResult as { ips?: { address: string }[] } | undefined;
  const event: PodEvent = {
    podName: k8s.K8S_POD_NAME ?? '',
    podNamespace: k8s.K8S_POD_NAMESPACE ?? '',
    podUid: k8s.K8S_POD_UID ?? '',
    netns: input.netns,
    containerId: input.containerId,
    ips: (prev?.ips ?? []).map((i) => i.address.split('/')[0]!),
  };
  switch (input.command) {
    case 'ADD': {
      if (!prev) return cniError(version, 7, 'inpod-cni must be chained after the plugin that creates the pod network (no prevResult)');
      if (!input.netns) return cniError(version, 7, 'inpod-cni: CNI_NETNS is not set; the runtime must pass the pod network namespace');
      // not a Kubernetes pod: nothing for the mesh to do
      if (!event.podName || !event.podNamespace) return { code: 0, stdout: JSON.stringify(prev) };
      try {
        await call(socket, '/cmd/add', event, timeoutMs);
      } catch (e) {
        return cniError(version, 11, `inpod-cni: pod ${event.podNamespace}/${event.podName} was not added to the mesh: ${(e as Error).message}; the runtime will retry`);
      }
      return { code: 0, stdout: JSON.stringify('cniVersion' in prev ? prev : { cniVersion: version, ...prev }) };
    }
    case 'DEL':
      // best effort and idempotent: a pod being torn down must never be blocked by the mesh
      await call(socket, '/cmd/del', event, Math.min(timeoutMs, 10_000)).catch(() => {});
      return { code: 0, stdout: '' };
    case 'CHECK':
      return { code: 0, stdout: '' };
    default:
      return cniError(version, 4, `inpod-cni: unknown CNI_COMMAND "${input.command}"`);
  }
}
