/**
 * `inpod ztunnel`: the proxy process. Connects to the agent over ZDS, serves each pod it is
 * handed, reads workloads/services/policies from --config (hot-reloaded), istiod over xDS
 * (--xds-address), the Kubernetes API or a manifest directory, and drains on SIGTERM. The state
 * sources are imported by the mode that uses them: the Kubernetes client alone is about 70 MB of
 * the process's memory.
 */
import { parseArgs } from 'node:util';
import { StateStore } from '../state/store.js';
import { Ztunnel, bytePathSetting } from '../proxy/ztunnel.js';
import { ZdsClient } from '../zds/client.js';
import { DEFAULT_ZDS_SOCKET } from '../zds/server.js';
import { logger } from '../util/log.js';
import { MeshError } from '../util/errors.js';
import { startAdmin, type AdminServers } from '../proxy/admin.js';
import { PORTS } from '../istio.js';
import { http2LimitsFromEnv } from '../proxy/hbone/limits.js';
import { DEFAULT_XDS_ADDRESS, xdsOptionsFromFlags } from '../xds/flags.js';
import type { XdsSource } from '../xds/source.js';
import { MemoryReturner } from '../proxy/memory.js';

/** Default addresses of the node-level endpoints (Istio's ports). */
const ADMIN_ADDR = `127.0.0.1:${PORTS.admin}`;
const METRICS_ADDR = `0.0.0.0:${PORTS.metrics}`;
const READINESS_ADDR = `0.0.0.0:${PORTS.readiness}`;

export const ZTUNNEL_USAGE = `  inpod ztunnel  [--config FILE | --xds-address HOST:PORT | --kubeconfig F | --manifests DIR] [--zds SOCKET] [--trust-domain TD] [--ca-dir DIR] [--drain-seconds N]
                 [--xds-root-ca FILE] [--alt-xds-hostname H]  (with --xds-address, e.g. ${DEFAULT_XDS_ADDRESS}: workloads, services and
                 policies from istiod over delta xDS, as ztunnel's XDS_ADDRESS, XDS_ROOT_CA, ALT_XDS_HOSTNAME, and --auth-token, --cluster-id
                 below; the node it says it is from POD_NAME, POD_NAMESPACE, NODE_NAME, INSTANCE_IP, ISTIO_META_*)
                 [--admin-addr ${ADMIN_ADDR}] [--metrics-addr ${METRICS_ADDR}] [--readiness-addr ${READINESS_ADDR}]
                 [--fast-path off|on|promote]  (splice passthrough / plaintext-inbound connections in the kernel:
                 on: as soon as decided; promote: once a connection carried 64 KiB or lasted 50 ms; default off)
                 [--same-node hbone|direct]  (direct: pods on this node skip HBONE, delivered and spliced inside the node)
                 [--byte-path node|native]  (what moves HBONE bytes: Node's tls/http2, or the addon's native engine; default node,
                 or INPOD_BYTE_PATH)
                 [--auto-allow-waypoint-policy]  (Kubernetes state: as istiod's PILOT_AUTO_ALLOW_WAYPOINT_POLICY, workloads
                 behind a waypoint admit only it unless other ALLOW policies apply)
                 [--ca-address https://istiod.istio-system.svc:15012 [--ca-root-ca FILE] [--auth-token FILE] [--cluster-id ID] [--alt-ca-hostname H]]
                 (workload certificates from istiod's CA, as ztunnel's CA_ADDRESS, CA_ROOT_CA, AUTH_TOKEN, CLUSTER_ID,
                 ALT_CA_HOSTNAME; default root /var/run/secrets/istio/root-cert.pem, token /var/run/secrets/tokens/istio-token;
                 without --ca-address the node-local CA in --ca-dir signs them)
                 env, as ztunnel's: HTTP2_STREAM_WINDOW_SIZE (4194304), HTTP2_CONNECTION_WINDOW_SIZE (16777216), HTTP2_FRAME_SIZE (1048576)
  inpod ztunnel workloads|services|policies|certificates [--admin-addr ${ADMIN_ADDR}]`;

/** What `inpod ztunnel <what>` prints: a section of the proxy's /config_dump (ztunnel's shape). */
export const SHOW = ['workloads', 'services', 'policies', 'certificates'] as const;
export type Show = (typeof SHOW)[number];

/**
 * `inpod ztunnel workloads|services|policies|certificates`: what a running proxy knows, from its
 * admin port, in ztunnel's config-dump form (as `istioctl ztunnel-config ... -o json` prints it).
 */
export async function ztunnelShow(what: Show, argv: string[]): Promise<unknown> {
  const { values: v } = parseArgs({ args: argv, options: { 'admin-addr': { type: 'string', default: ADMIN_ADDR } }, strict: true });
  const res = await fetch(`http://${v['admin-addr']}/config_dump`).catch((e: Error) => {
    throw new Error(`cannot reach the proxy admin on ${v['admin-addr']} (${e.message}); is inpod ztunnel running on this node?`);
  });
  if (!res.ok) throw new Error(`the proxy admin on ${v['admin-addr']} answered ${res.status} to /config_dump: ${(await res.text()).trim()}`);
  const dump = (await res.json()) as Record<Show, unknown[]>;
  return dump[what];
}

export async function ztunnelCommand(argv: string[]): Promise<void> {
  const { values: v } = parseArgs({
    args: argv,
    options: {
      config: { type: 'string' },
      kubeconfig: { type: 'string' },
      manifests: { type: 'string' },
      zds: { type: 'string', default: DEFAULT_ZDS_SOCKET },
      'trust-domain': { type: 'string', default: 'cluster.local' },
      'ca-dir': { type: 'string', default: Ztunnel.defaultCaDir() },
      'drain-seconds': { type: 'string', default: '5' },
      'admin-addr': { type: 'string', default: ADMIN_ADDR },
      'metrics-addr': { type: 'string', default: METRICS_ADDR },
      'readiness-addr': { type: 'string', default: READINESS_ADDR },
      'fast-path': { type: 'string', default: process.env.INPOD_FAST_PATH ?? 'off' },
      'same-node': { type: 'string', default: 'hbone' },
      'byte-path': { type: 'string' },
      'auto-allow-waypoint-policy': { type: 'boolean', default: false },
      'ca-address': { type: 'string' },
      'ca-root-ca': { type: 'string' },
      'auth-token': { type: 'string' },
      'cluster-id': { type: 'string' },
      'alt-ca-hostname': { type: 'string' },
      'xds-address': { type: 'string' },
      'xds-root-ca': { type: 'string' },
      'alt-xds-hostname': { type: 'string' },
    },
    strict: true,
  });
  const fastPath = v['fast-path'];
  if (fastPath !== 'on' && fastPath !== 'promote' && fastPath !== 'off') throw new MeshError('INPOD_ERR_USAGE', `--fast-path ${fastPath}: want on, promote or off`);
  const sameNode = v['same-node'];
  if (sameNode !== 'hbone' && sameNode !== 'direct') throw new MeshError('INPOD_ERR_USAGE', `--same-node ${sameNode}: want hbone or direct`);
  const bytePath = bytePathSetting(v['byte-path']);
  // before anything starts: a malformed value refuses to start, as in ztunnel
  const hbone = http2LimitsFromEnv(process.env);
  const sources = (['config', 'manifests', 'xds-address', 'kubeconfig'] as const).filter((k) => v[k] !== undefined);
  if (sources.length > 1) throw new MeshError('INPOD_ERR_USAGE', `--${sources.join(' and --')}: the state comes from one source; choose one`);
  const log = logger('ztunnel');
  // istiod's xDS (--xds-address): its flags checked before anything is started; its root and
  // token are read on every connect (a ConfigMap mounted late is waited for, as ztunnel does)
  const xdsOpts = xdsOptionsFromFlags(v, process.env);
  // Istio mode (--ca-address): checked before anything is started, so a bad flag or a missing root ends the process
  // imported only then: its gRPC client is about 1.4 MB of heap a proxy with the node-local CA never uses
  const ca = v['ca-address'] ? await import('../identity/istio-ca.js') : undefined;
  const caOpts = ca?.caOptionsFromFlags(v, v['trust-domain']!);
  const identity = caOpts && ca!.IstioCaClient.open({ ...caOpts, log: logger('ca-client') });
  if (caOpts) log.info({ ca: caOpts.address, root: caOpts.rootCertFile, token: caOpts.tokenFile ?? null }, 'workload certificates from istiod\'s CA');
  const state = new StateStore();
  if (v.config) {
    state.watchFile(v.config);
    state.on('error', (e) => log.error({ err: e.message }, 'config reload refused; keeping the last good state'));
    state.on('update', (s) => log.info({ workloads: s.state.workloads.length, services: s.state.services.length }, 'config loaded'));
  }
  let kube: { stop(): void } | undefined;
  if (!v.config && v.manifests) {
    const { ManifestStateSource } = await import('../state/kube.js');
    const src = new ManifestStateSource(v.manifests, state, v['trust-domain']!);
    kube = src;
    await src.start();
  } else if (!v.config && !xdsOpts && (v.kubeconfig || process.env.KUBERNETES_SERVICE_HOST)) {
    const [{ KubeStateSource }, { loadKubeConfig }] = await Promise.all([import('../state/kube.js'), import('../agent/kube.js')]);
    const src = new KubeStateSource(loadKubeConfig(v.kubeconfig), state, v['trust-domain']!, { autoAllowWaypointPolicy: v['auto-allow-waypoint-policy'] });
    kube = src;
    await src.start();
    log.info('state from the Kubernetes API (pods, nodes, namespaces, services, endpointslices, authorizationpolicies, gateways, gatewayclasses)');
  }
  const zt = await Ztunnel.create({ trustDomain: v['trust-domain']!, caDir: v['ca-dir']!, identity, state, log, fastPath, sameNode, hbone, bytePath });
  // memory grown under a load goes back to the kernel once the load is over
  const memory = new MemoryReturner({ log: logger('memory') });
  let xds: XdsSource | undefined;
  if (xdsOpts) {
    // after the proxy exists: the xDS series go into its registry
    const { startXdsSource } = await import('../xds/source.js');
    xds = startXdsSource({ ...xdsOpts, env: process.env, store: state, registry: zt.telemetry.registry, log: logger('xds') });
    log.info({ xds: xdsOpts.address, root: xdsOpts.rootCert, token: xdsOpts.tokenFile ?? null }, 'state from istiod (xDS)');
  }
  if (zt.fastPath.active) log.info('kernel fast path on: passthrough and plaintext-inbound connections are spliced in the kernel');
  else log.info({ reason: zt.fastPath.unavailable ?? 'not switched on (--fast-path on)' }, 'kernel fast path off: every connection is relayed in userspace');
  const client = new ZdsClient({
    path: v.zds!,
    log: logger('zds'),
    handler: zt.zdsHandler(),
    // as ztunnel (app.rs): a protocol error ends the process, undrained; its restart backs off
    onFatal: (e) => {
      log.error({ err: e.message, code: e.code }, 'protocol mismatch with the node agent; exiting');
      process.exit(1);
    },
  });
  // as ztunnel (app.rs): pods are taken from the agent only once istiod's state has arrived, so
  // no pod is served without its workloads and policies
  if (xds && !xds.client.synced) {
    xds.client.once('synced', () => client.start());
    log.info('waiting for the first state from istiod before taking pods from the agent');
  } else client.start();
  let draining = false;
  const drainSeconds = Number(v['drain-seconds']);
  let servers: AdminServers | undefined;
  let stopped: () => void = () => {};
  // Drain (ARCHITECTURE.md, "Upgrades"): a rollout sends SIGTERM once the next proxy is ready,
  // that is, listening in every pod beside this one (SO_REUSEPORT); POST /quitquitquit does the
  // same, as in ztunnel. Stop taking pods (leave ZDS: the agent sends new pods to the next
  // proxy), stop the admin, metrics and readiness listeners (as ztunnel's drain does), close
  // every pod's listeners at once (the kernel moves what is queued on them to the next proxy's)
  // and tell HBONE peers GOAWAY; open connections then have until the deadline. Exit as soon as
  // all have ended.
  const stop = (why: string): void => {
    if (draining) return;
    const deadline = drainSeconds * 1000;
    draining = true;
    log.info({ signal: why, drainMs: deadline }, 'draining');
    client.stop();
    state.close();
    kube?.stop();
    xds?.stop();
    servers?.stop();
    memory.stop();
    const exit = (msg: string): void => {
      log.info(msg);
      process.exit(0);
    };
    setTimeout(() => exit('drain deadline reached; exiting'), deadline).unref();
    void zt.close({ drain: true }).then(() => exit('drained: every connection has ended; exiting'));
    stopped();
  };
  servers = await startAdmin(zt, {
    admin: v['admin-addr']!,
    metrics: v['metrics-addr']!,
    readiness: v['readiness-addr']!,
    // as ztunnel (src/inpod/workloadmanager.rs): the "workload proxy manager" task is pending
    // until every pod of the agent's snapshot is served, and again while the agent is away; a
    // refused reload keeps the last good state served, so it stays ready (logs, /state say so).
    // In Istio mode the "state manager" task is pending until istiod's first state (app.rs).
    pending: () => [
      ...(xds && !xds.client.synced ? ['state manager'] : []),
      ...(draining || !client.connected || zt.notReady() !== null ? ['workload proxy manager'] : []),
    ],
    shutdown: () => stop('quitquitquit'),
    zds: v.zds!,
    drainSeconds,
    localConfig: !!v.config,
    memory,
  });
  log.info({ zds: v.zds, trustDomain: v['trust-domain'] }, 'ztunnel started');
  await new Promise<void>((resolve) => {
    stopped = resolve;
    if (draining) resolve();
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
}
