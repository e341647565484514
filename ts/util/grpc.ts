/** What istiod's gRPC clients (xDS and CA) share. */
import { MeshError } from './errors.js';

/**
 * host:port for grpc-js from an istiod address as ztunnel takes it: "https://host:port" or a bare
 * "host:port" (config.rs validate_uri adds the scheme). `flag` names the setting in the error.
 */
export function grpcTarget(address: string, flag: string): string {
  const m = /^(?:https?:\/\/)?([^/]+?)\/?$/.exec(address);
  if (!m) throw new MeshError('INPOD_ERR_USAGE', `${flag} ${JSON.stringify(address)}: expected https://host:port or host:port, e.g. istiod.istio-system.svc:15012`);
  return m[1]!;
}
