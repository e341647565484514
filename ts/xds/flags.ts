/**
 * `inpod ztunnel`'s Istio-mode xDS flags, named after ztunnel's environment (src/config.rs):
 * --xds-address (XDS_ADDRESS), --xds-root-ca (XDS_ROOT_CA), --alt-xds-hostname
 * (ALT_XDS_HOSTNAME), and --auth-token (AUTH_TOKEN) and --cluster-id (CLUSTER_ID), which the CA
 * client reads too (ts/identity/istio-ca.ts). Pure, and free of gRPC: the command line checks
 * them before anything starts.
 */
import { existsSync } from 'node:fs';
import { MeshError } from '../util/errors.js';
import { clusterIdOf, type Env } from './node.js';

/** istiod's address in ztunnel's DaemonSet (istio manifests/charts/ztunnel) */
export const DEFAULT_XDS_ADDRESS = 'istiod.istio-system.svc:15012';
/** the istio-ca-root-cert ConfigMap as mounted (ztunnel's XDS_ROOT_CA default) */
export const DEFAULT_XDS_ROOT_CA = '/var/run/secrets/istio/root-cert.pem';
/** the projected service-account token, audience istio-ca (ztunnel's AUTH_TOKEN default) */
export const DEFAULT_AUTH_TOKEN = '/var/run/secrets/tokens/istio-token';

export interface XdsFlags {
  'xds-address'?: string;
  'xds-root-ca'?: string;
  'auth-token'?: string;
  'cluster-id'?: string;
  'alt-xds-hostname'?: string;
}

export interface XdsFlagOptions {
  address: string;
  rootCert: string;
  /** undefined: no token is sent */
  tokenFile?: string;
  clusterId: string;
  altHostname?: string;
}

/**
 * The xDS client's options, or undefined without --xds-address. As ztunnel: the root defaults to
 * the mounted ConfigMap, the token to the projected token when that file exists (else none is
 * sent), the cluster to ISTIO_META_CLUSTER_ID, CLUSTER_ID, else Kubernetes. Throws MeshError
 * INPOD_ERR_USAGE for an address that is not host:port.
 */
export function xdsOptionsFromFlags(f: XdsFlags, env: Env, exists: (p: string) => boolean = existsSync): XdsFlagOptions | undefined {
  const address = f['xds-address'];
  if (address === undefined) return undefined;
  if (!/^(?:https?:\/\/)?[^/\s]+:\d+\/?$/.test(address)) {
    throw new MeshError('INPOD_ERR_USAGE', `--xds-address ${JSON.stringify(address)}: expected host:port or https://host:port, e.g. ${DEFAULT_XDS_ADDRESS}`);
  }
  return {
    address,
    rootCert: f['xds-root-ca'] ?? DEFAULT_XDS_ROOT_CA,
    tokenFile: f['auth-token'] ?? (exists(DEFAULT_AUTH_TOKEN) ? DEFAULT_AUTH_TOKEN : undefined),
    clusterId: f['cluster-id'] ?? clusterIdOf(env),
    altHostname: f['alt-xds-hostname'],
  };
}
