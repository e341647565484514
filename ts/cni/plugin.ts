/**
 * The chained CNI plugin (spec 1.0.0). ADD asks the agent to capture the pod and hand it to the
 * proxy, and returns only once both are done; if that fails the runtime gets a CNI error and
 * retries, so an ambient pod never starts uncaptured. The previous result passes through
 * unchanged. Every malformed input (input.ts checks each field read) is a CNI error result
 * with the spec's code, never an exception. DEL always succeeds, bounded in time: a pod's
 * teardown is never blocked by the mesh, whatever the input.
 */
import http from 'node:http';
import { CNI_ERR, CniFailure, SUPPORTED_VERSIONS, checkAddEnv, parseCommand, parseNetConf, podIdentity, type CniInput, type NetConf } from './input.js';

export { DEFAULT_AGENT_SOCKET, SUPPORTED_VERSIONS, parseCniArgs, type CniInput } from './input.js';

export interface CniOutput {
  code: number; // process exit code
  stdout: string;
  /** notes for the runtime's log (unstructured, as the spec allows on stderr) */
  stderr?: string;
}

export interface PodEvent {
  podName: string;
  podNamespace: string;
  podUid: string;
  netns: string;
  containerId: string;
  ips: string[];
}

/** DEL waits for the agent at most this long. */
export const DEL_TIMEOUT_MS = 10_000;
/** The agent's answer is a small JSON object; more than this is not one. */
const MAX_ANSWER_BYTES = 64 * 1024;

/** Sends one event to the agent; resolves with its JSON answer or rejects with its error. */
export type AgentCall = (socket: string, path: string, body: object, timeoutMs: number) => Promise<Record<string, unknown>>;

export const callAgent: AgentCall = (socket, path, body, timeoutMs) =>
  new Promise((resolve, reject) => {
    const data = JSON.stringify(body);
    // the whole exchange has a deadline, not only each idle gap
    const deadline = setTimeout(() => req.destroy(new Error(`the inpod agent did not answer on ${socket} within ${timeoutMs / 1000} s`)), timeoutMs).unref();
    const req = http.request({ socketPath: socket, path, method: 'POST', headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) }, timeout: timeoutMs }, (res) => {
      let text = '';
      res.on('data', (d) => {
        text += d;
        if (text.length > MAX_ANSWER_BYTES) req.destroy(new Error(`the inpod agent on ${socket} answered more than ${MAX_ANSWER_BYTES} bytes`));
      });
      res.on('error', (e) => {
        clearTimeout(deadline);
        reject(e);
      });
      res.on('end', () => {
        clearTimeout(deadline);
        let json: Record<string, unknown> = {};
        try {
          json = JSON.parse(text || '{}') as Record<string, unknown>;
        } catch {
          json = { error: text.slice(0, 500) };
        }
        if (res.statusCode === 200) resolve(json);
        else reject(new Error(String(json.error ?? `agent answered ${res.statusCode}`)));
      });
    });
    req.on('timeout', () => req.destroy(new Error(`the inpod agent did not answer on ${socket} within ${timeoutMs / 1000} s`)));
    req.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(deadline);
      if (e.code === 'ENOENT' || e.code === 'ECONNREFUSED') reject(new Error(`the inpod agent is not running (no listener on ${socket}); is the inpod agent DaemonSet up on this node?`));
      else reject(e);
    });
    req.end(data);
  });

function cniError(version: string, code: number, msg: string, details?: string): CniOutput {
  return { code: 1, stdout: JSON.stringify({ cniVersion: version, code, msg, ...(details ? { details } : {}) }) };
}

/** Runs one CNI command. Never throws: every failure is a CNI error result. */
export async function runPlugin(input: CniInput, call: AgentCall = callAgent): Promise<CniOutput> {
  let version = '1.0.0'; // errors before the config's version is known are in this one
  try {
    const command = parseCommand(input.command);
    if (command === 'VERSION') return { code: 0, stdout: JSON.stringify({ cniVersion: '1.0.0', supportedVersions: SUPPORTED_VERSIONS }) };
    if (command === 'DEL') return await del(input, call);
    const conf = parseNetConf(input.stdin);
    version = conf.cniVersion;
    if (command === 'CHECK') return { code: 0, stdout: '' };
    return await add(input, conf, call);
  } catch (e) {
    if (e instanceof CniFailure) return cniError(version, e.cniCode, e.message, e.details);
    return cniError(version, CNI_ERR.INTERNAL, `inpod-cni: internal error: ${(e as Error)?.message ?? String(e)}`, 'please report this with the network configuration that caused it');
  }
}

async function add(input: CniInput, conf: NetConf, call: AgentCall): Promise<CniOutput> {
  const prev = conf.prevResult;
  if (!prev) throw new CniFailure(CNI_ERR.INVALID_CONFIG, 'inpod-cni must be chained after the plugin that creates the pod network (no prevResult)', 'put inpod-cni last in the conflist\'s plugins');
  checkAddEnv(input);
  const pod = podIdentity(input.args);
  const passThrough = { code: 0, stdout: JSON.stringify('cniVersion' in prev ? prev : { cniVersion: conf.cniVersion, ...prev }) };
  // not a Kubernetes pod: nothing for the mesh to do
  if (!pod) return passThrough;
  const event: PodEvent = { ...pod, netns: input.netns, containerId: input.containerId, ips: conf.ips };
  try {
    await call(conf.agentSocket, '/cmd/add', event, conf.timeoutMs);
  } catch (e) {
    throw new CniFailure(CNI_ERR.TRY_AGAIN, `inpod-cni: pod ${pod.podNamespace}/${pod.podName} was not added to the mesh: ${(e as Error).message}; the runtime will retry`);
  }
  return passThrough;
}

/**
 * Best effort and idempotent: tells the agent when the input says which pod and where the
 * agent is, and succeeds in every case, within DEL_TIMEOUT_MS. What was wrong goes to stderr.
 */
async function del(input: CniInput, call: AgentCall): Promise<CniOutput> {
  let conf: NetConf;
  let pod: ReturnType<typeof podIdentity>;
  try {
    conf = parseNetConf(input.stdin);
    pod = podIdentity(input.args);
  } catch (e) {
    return { code: 0, stdout: '', stderr: `inpod-cni: DEL not passed to the agent (${(e as Error).message.replace(/^inpod-cni: /, '')}); the agent removes the pod when it is deleted\n` };
  }
  if (!pod) return { code: 0, stdout: '' };
  const event: PodEvent = { ...pod, netns: input.netns, containerId: input.containerId, ips: conf.ips };
  const note = await call(conf.agentSocket, '/cmd/del', event, Math.min(conf.timeoutMs, DEL_TIMEOUT_MS)).then(
    () => '',
    (e: Error) => `inpod-cni: DEL of ${pod.podNamespace}/${pod.podName} not passed to the agent (${e.message}); the agent removes the pod when it is deleted\n`,
  );
  return { code: 0, stdout: '', ...(note ? { stderr: note } : {}) };
}
