/** SPIFFE identities as Istio writes them: spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>. */

export interface Identity {
  trustDomain: string;
  namespace: string;
  serviceAccount: string;
}

export function spiffeUri(id: Identity): string {
  return `spiffe://${id.trustDomain}/ns/${id.namespace}/sa/${id.serviceAccount}`;
}

/** Parses a SPIFFE URI; null if it is not in Istio's ns/sa form. */
export function parseSpiffe(uri: string): Identity | null {
  const m = /^spiffe:\/\/([^/]+)\/ns\/([^/]+)\/sa\/([^/]+)$/.exec(uri);
  if (!m) return null;
  return { trustDomain: m[1]!, namespace: m[2]!, serviceAccount: m[3]! };
}

/** The principal form used by Istio policies: <trust-domain>/ns/<ns>/sa/<sa>. */
export function principal(id: Identity): string {
  return `${id.trustDomain}/ns/${id.namespace}/sa/${id.serviceAccount}`;
}

/** The URI SANs of a peer certificate from Node's `subjectaltname` string ("URI:spiffe://..., DNS:x"). */
export function uriSans(subjectaltname: string | undefined): string[] {
  if (!subjectaltname) return [];
  return subjectaltname
    .split(/,\s*/)
    .filter((s) => s.startsWith('URI:'))
    .map((s) => s.slice(4));
}
