/**
 * The proxy's state from istiod (Istio mode, `inpod ztunnel --xds-address`): the xDS client
 * (./client.ts) feeding the WDS state (./wds.ts) into the StateStore, its series in the proxy's
 * registry, its node from the environment ztunnel's DaemonSet sets (POD_NAME, POD_NAMESPACE,
 * NODE_NAME, INSTANCE_IP, ISTIO_META_*; ./node.ts).
 */
import type { Registry } from 'prom-client';
import type { Logger } from '../util/log.js';
import type { StateStore } from '../state/store.js';
import { XdsClient } from './client.js';
import { XdsMetrics } from './metrics.js';
import { xdsNode, type Env } from './node.js';
import type { XdsFlagOptions } from './flags.js';
import { WdsState } from './wds.js';

export interface XdsSourceOptions extends XdsFlagOptions {
  /** the node's identity (POD_NAME, POD_NAMESPACE, NODE_NAME, INSTANCE_IP, ISTIO_META_*) */
  env: Env;
  store: StateStore;
  registry: Registry;
  log: Logger;
}

export interface XdsSource {
  client: XdsClient;
  wds: WdsState;
  stop(): void;
}

export function startXdsSource(o: XdsSourceOptions): XdsSource {
  const { node, skipped } = xdsNode(o.env);
  for (const k of skipped) o.log.error({ env: k }, 'not JSON; left out of the node metadata');
  const wds = new WdsState(o.store, o.log);
  const client = new XdsClient({
    address: o.address,
    rootCert: o.rootCert,
    tokenFile: o.tokenFile,
    clusterId: o.clusterId,
    altHostname: o.altHostname,
    node,
    handlers: wds.handlers(),
    metrics: new XdsMetrics(o.registry),
    log: o.log,
  });
  o.store.describeSource(`istiod at ${o.address} (xDS)`);
  client.on('nack', (n) => o.log.error({ typeUrl: n.typeUrl, err: n.errorDetail }, 'istiod sent resources the proxy cannot apply; refused (NACK), keeping the last good state'));
  client.on('synced', () => o.log.info({ workloads: o.store.snapshot.state.workloads.length, services: o.store.snapshot.state.services.length }, 'state from istiod'));
  client.start();
  return { client, wds, stop: () => client.stop() };
}
