/**
 * A proxy's xDS side against the fake istiod (test/fixtures/istiod): the client, the WDS state,
 * the StateStore it feeds and the metrics registry, over real gRPC with TLS on loopback.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { startFakeIstiod, type FakeIstiod } from '../fixtures/istiod/index.js';
import { addXdsService, type AddXdsOptions, type FakeXds } from '../fixtures/istiod/xds.js';
import { StateStore } from '../../ts/state/store.js';
import { XdsClient, type XdsClientOptions } from '../../ts/xds/client.js';
import { XdsMetrics } from '../../ts/xds/metrics.js';
import { WdsState } from '../../ts/xds/wds.js';
import { xdsNode } from '../../ts/xds/node.js';
import { until as poll } from '../../ts/util/until.js';

export const silent = pino({ level: 'silent' });

export interface Proxy {
  client: XdsClient;
  store: StateStore;
  wds: WdsState;
  registry: Registry;
  tokenFile: string;
}

export interface Rig {
  istiod: FakeIstiod;
  xds: FakeXds;
  /** a proxy's xDS client on this istiod (not started) */
  proxy(o?: Partial<XdsClientOptions> & { token?: string; env?: Record<string, string> }): Proxy;
  close(): Promise<void>;
}

/** `hosts`: the names of istiod's serving certificate (default istiod.istio-system.svc, localhost, 127.0.0.1) */
export async function rig(opts: AddXdsOptions & { hosts?: string[] } = {}): Promise<Rig> {
  let xds!: FakeXds;
  const istiod = await startFakeIstiod({ services: [(s) => void (xds = addXdsService(s, opts))], hosts: opts.hosts });
  const clients: XdsClient[] = [];
  let n = 0;
  return {
    istiod,
    xds,
    proxy(o = {}) {
      const tokenFile = join(istiod.dir, `token-${++n}`);
      writeFileSync(tokenFile, o.token ?? 'token-of-ztunnel');
      const store = new StateStore();
      const wds = new WdsState(store, silent, { onDemand: o.onDemand });
      const registry = new Registry();
      const client = new XdsClient({
        address: istiod.address,
        rootCert: istiod.rootCertFile,
        tokenFile,
        clusterId: 'Kubernetes',
        node: xdsNode(o.env ?? { POD_NAME: 'ztunnel-abc', POD_NAMESPACE: 'istio-system', NODE_NAME: 'node-a', INSTANCE_IP: '10.0.0.9' }).node,
        handlers: wds.handlers(),
        metrics: new XdsMetrics(registry),
        log: silent,
        ...o,
      });
      clients.push(client);
      return { client, store, wds, registry, tokenFile };
    },
    async close() {
      for (const c of clients) c.stop();
      await istiod.close();
    },
  };
}

/** The shared poller, looking every 5 ms: these waits are on in-process state, cheap to look at. */
export const until = (what: string, cond: () => boolean, ms = 10_000): Promise<void> => poll(what, cond, { timeoutMs: ms, intervalMs: 5 });

/** The value of one series of `registry` (0 when absent). */
export async function metric(registry: Registry, name: string, labels: Record<string, string> = {}): Promise<number> {
  const m = (await registry.getMetricsAsJSON()).find((x) => x.name === name);
  const v = (m?.values ?? []).find((x) => Object.entries(labels).every(([k, val]) => x.labels[k] === val));
  return v?.value ?? 0;
}
