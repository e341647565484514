/**
 * The traffic labels are derived once per distinct connection description and state snapshot
 * (labels.ts LabelCache), not once per connection. These check that the cache can never give a
 * connection another connection's labels (its key follows every field the labels are made of)
 * and that a state update reaches the next connection's series at once.
 */
import { describe, expect, it } from 'vitest';
import { pino } from 'pino';
import type { ConnContext, ConnRecord } from '../../ts/proxy/hooks.js';
import { shopState } from './shop.js';
import { StateSnapshot, StateStore } from '../../ts/state/store.js';
import { IstioTelemetry } from '../../ts/telemetry/istio.js';
import { describe as describeConn, describeKey, LabelCache } from '../../ts/telemetry/labels.js';

const snap = new StateSnapshot(shopState());

const SLEEP = 'spiffe://cluster.local/ns/default/sa/sleep';
const WEB = 'spiffe://cluster.local/ns/shop/sa/web';
const webSvc = { hostname: 'web.shop.svc.cluster.local', name: 'web', namespace: 'shop' };
const adminSvc = { hostname: 'admin.shop.svc.cluster.local', name: 'admin', namespace: 'shop' };

const bases: ConnContext[] = [
  { direction: 'outbound', transport: 'hbone', src: { ip: '10.0.0.1', port: 40000, identity: SLEEP }, dst: { ip: '10.0.0.2', port: 8080 },
    via: { ip: '10.0.0.2', port: 15008 }, pod: { uid: 'u-sleep', name: 'sleep-7f-abc', namespace: 'default' }, service: webSvc },
  { direction: 'inbound', transport: 'hbone', src: { ip: '10.0.0.1', port: 40000, identity: SLEEP }, dst: { ip: '10.0.0.2', port: 8080, identity: WEB },
    via: { ip: '10.0.0.2', port: 15008 }, pod: { uid: 'u-web', name: 'web-5d-xyz', namespace: 'shop' } },
  { direction: 'inbound', transport: 'plaintext', src: { ip: '192.168.1.9', port: 5000 }, dst: { ip: '10.0.0.9', port: 80, identity: WEB },
    pod: { uid: 'u-none', name: 'gone', namespace: 'shop' } },
  { direction: 'outbound', transport: 'passthrough', src: { ip: '10.0.0.9', port: 40000, identity: SLEEP }, dst: { ip: '10.0.0.3', port: 5432 },
    pod: { uid: 'u-none', name: 'gone', namespace: 'default' } },
];

/** Every field of a context, each set to other values the state gives a meaning to. */
const mutations: [string, (c: ConnContext) => void][] = [
  ['direction', (c) => void (c.direction = c.direction === 'inbound' ? 'outbound' : 'inbound')],
  ...(['hbone', 'plaintext', 'passthrough', 'local'] as const).map((t): [string, (c: ConnContext) => void] => [`transport ${t}`, (c) => void (c.transport = t)]),
  ...['10.0.0.1', '10.0.0.2', '10.0.0.3', '10.0.0.9'].flatMap((ip): [string, (c: ConnContext) => void][] => [
    [`src.ip ${ip}`, (c) => void (c.src.ip = ip)],
    [`dst.ip ${ip}`, (c) => void (c.dst.ip = ip)],
    [`via ${ip}`, (c) => void (c.via = { ip, port: 15008 })],
  ]),
  ['via none', (c) => void (c.via = undefined)],
  ['src.port', (c) => void (c.src.port += 1)],
  ...[undefined, SLEEP, WEB, 'spiffe://cluster.local/ns/x/sa/y'].flatMap((id): [string, (c: ConnContext) => void][] => [
    [`src.identity ${id}`, (c) => void (c.src.identity = id)],
    [`dst.identity ${id}`, (c) => void (c.dst.identity = id)],
  ]),
  ...[80, 8080, 9090, 1].map((p): [string, (c: ConnContext) => void] => [`dst.port ${p}`, (c) => void (c.dst.port = p)]),
  ...['u-sleep', 'u-web', 'u-db', 'u-none'].map((u): [string, (c: ConnContext) => void] => [`pod.uid ${u}`, (c) => void (c.pod.uid = u)]),
  ...['default', 'shop', 'other'].map((n): [string, (c: ConnContext) => void] => [`pod.namespace ${n}`, (c) => void (c.pod.namespace = n)]),
  ['pod.name', (c) => void (c.pod.name = 'renamed')],
  ...[undefined, webSvc, adminSvc, { ...webSvc, name: 'web2' }, { ...webSvc, namespace: 'other' }].map((s): [string, (c: ConnContext) => void] =>
    [`service ${s?.hostname}/${s?.name}/${s?.namespace}`, (c) => void (c.service = s && { ...s })]),
  ['originalDst', (c) => void (c.originalDst = { ip: '10.96.0.10', port: 80 })],
  ['traceId', (c) => void (c.traceId = 'f'.repeat(32))],
];

const clone = (c: ConnContext): ConnContext => structuredClone(c);
const seen = (c: ConnContext): string => {
  const d = describeConn(snap, c);
  return JSON.stringify([d.labels, d.source?.uid, d.destination?.uid]);
};

describe('the traffic labels, derived once per connection description and state snapshot', () => {
  it('never gives one connection the labels of another: any change of a field the labels come from changes the key', () => {
    let checked = 0;
    for (const base of bases) {
      for (const [what, mutate] of mutations) {
        const other = clone(base);
        mutate(other);
        if (seen(other) === seen(base)) continue;
        checked++;
        expect(describeKey(other), `${base.direction} ${base.transport}: ${what}`).not.toBe(describeKey(base));
      }
    }
    expect(checked).toBeGreaterThan(40);
  });

  it('gives the labels of the current snapshot: a state update reaches the next connection at once', () => {
    const cache = new LabelCache();
    const ctx = clone(bases[0]!);
    expect(cache.get(snap, ctx).described.labels.source_canonical_service).toBe('sleep');
    const next = new StateSnapshot(shopState({ sleepService: 'sleep-renamed' }));
    expect(cache.get(next, clone(ctx)).described.labels.source_canonical_service).toBe('sleep-renamed');
    expect(cache.get(next, clone(ctx))).toBe(cache.get(next, ctx));
  });

  it('keeps at most `max` descriptions, and still answers right past it', () => {
    const cache = new LabelCache(2);
    for (const ip of ['10.0.0.1', '10.0.0.2', '10.0.0.3', '10.0.0.1']) {
      const c = clone(bases[1]!);
      c.src.ip = ip;
      expect(cache.get(snap, c).described).toEqual(describeConn(snap, c));
    }
  });

  it('moves the metric of the new labels after a state update (the series a scrape shows)', async () => {
    const store = new StateStore();
    store.set(shopState());
    const t = new IstioTelemetry(store, pino({ level: 'silent' }), { processMetrics: false, buildTag: 'test' });
    const connect = (): void => {
      const ctx = clone(bases[0]!);
      const rec: ConnRecord = { ...ctx, startedAt: 0, durationMs: 1, bytesSent: 1, bytesReceived: 2, outcome: 'ok' };
      t.opened(ctx).closed(rec);
    };
    const opened = async (): Promise<Record<string, number>> => {
      const m = await t.registry.getSingleMetric('istio_tcp_connections_opened_total')!.get();
      return Object.fromEntries(m.values.map((v) => [String(v.labels.source_canonical_service), v.value]));
    };
    connect();
    connect();
    expect(await opened()).toEqual({ sleep: 2 });
    store.set(shopState({ sleepService: 'sleep-renamed' }));
    connect();
    expect(await opened()).toEqual({ sleep: 2, 'sleep-renamed': 1 });
  });
});
