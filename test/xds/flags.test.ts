/**
 * `inpod ztunnel`'s xDS flags with ztunnel's defaults (src/config.rs: XDS_ADDRESS, XDS_ROOT_CA,
 * AUTH_TOKEN used only when the default file exists, CLUSTER_ID from ISTIO_META_CLUSTER_ID).
 */
import { describe, expect, it } from 'vitest';
import { xdsOptionsFromFlags } from '../../ts/xds/flags.js';

describe('the xDS flags', () => {
  it("take ztunnel's defaults: the mounted root, the projected token only if it exists, the cluster from the environment", () => {
    const env = { ISTIO_META_CLUSTER_ID: 'c1' };
    expect(xdsOptionsFromFlags({ 'xds-address': 'istiod.istio-system.svc:15012' }, env, () => true)).toEqual({
      address: 'istiod.istio-system.svc:15012', rootCert: '/var/run/secrets/istio/root-cert.pem', tokenFile: '/var/run/secrets/tokens/istio-token', clusterId: 'c1', altHostname: undefined,
    });
    expect(xdsOptionsFromFlags({ 'xds-address': 'https://istiod:15012' }, {}, () => false)).toMatchObject({ tokenFile: undefined, clusterId: 'Kubernetes' });
    expect(xdsOptionsFromFlags({ 'xds-address': 'h:1', 'xds-root-ca': '/r', 'auth-token': '/t', 'cluster-id': 'c2', 'alt-xds-hostname': 'istiod.x' }, env, () => false))
      .toEqual({ address: 'h:1', rootCert: '/r', tokenFile: '/t', clusterId: 'c2', altHostname: 'istiod.x' });
  });

  it('are none without --xds-address, and refuse an address without a port', () => {
    expect(xdsOptionsFromFlags({}, {})).toBeUndefined();
    expect(() => xdsOptionsFromFlags({ 'xds-address': 'istiod' }, {})).toThrow(/--xds-address "istiod": expected host:port or https:\/\/host:port/);
  });
});
