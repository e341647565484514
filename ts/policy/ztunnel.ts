/**
 * ztunnel's Authorization as ztunnel's local config writes it (the `policies:` list; serde of
 * ztunnel src/rbac.rs `Authorization`, `RbacMatch`, `StringMatch`, `ServiceAccountMatch`), read
 * into ./rbac.ts's form, which is the same form, so it is enforced as written: no Istio
 * AuthorizationPolicy translation (that is ./istio.ts, for objects from Kubernetes).
 *
 *   - name: deny-9999            # required, as every field of Authorization
 *     namespace: default
 *     scope: Namespace           # Global | Namespace | WorkloadSelector (named by workloads'
 *     action: Allow              #   authorizationPolicies) ; Allow | Deny
 *     dryRun: false
 *     rules:                     # rules (OR) -> clauses (AND) -> matches (OR)
 *     - - - notDestinationPorts: [9999]
 *           principals: [!Exact cluster.local/ns/default/sa/sleep]   # StringMatch: a YAML tag
 *
 * Where this is stricter than ztunnel: serde ignores a key RbacMatch or ServiceAccountMatch does
 * not have; here it refuses the file, naming the key. A misspelt field would otherwise leave its
 * match empty, which ztunnel skips: a DENY written with a typo would deny nothing.
 */
import { Struct, Tagged, configError, ipNet, list, str, uint } from '../util/fields.js';
import type { Authorization, RbacMatch, ServiceAccountMatch, StringMatch } from './rbac.js';

const AUTHORIZATION = ['name', 'namespace', 'scope', 'action', 'rules', 'dryRun'] as const;
const STRING_MATCHES = ['namespaces', 'notNamespaces', 'principals', 'notPrincipals'] as const;
const SA_MATCHES = ['serviceAccounts', 'notServiceAccounts'] as const;
const NETS = ['sourceIps', 'notSourceIps', 'destinationIps', 'notDestinationIps'] as const;
const PORTS = ['destinationPorts', 'notDestinationPorts'] as const;
const MATCH = [...STRING_MATCHES, ...SA_MATCHES, ...NETS, ...PORTS] as const;

/** `!Exact x`, `!Prefix x`, `!Suffix x`, `!Presence []` (serde_yaml's externally tagged enum). */
function stringMatch(path: string, v: unknown): StringMatch {
  if (!(v instanceof Tagged)) {
    throw configError(path, `expected a string match written as a YAML tag: !Exact value, !Prefix value, !Suffix value or !Presence [] (ztunnel's form), got ${JSON.stringify(v)}`);
  }
  switch (v.tag) {
    case 'Exact':
      return { Exact: str(path, v.value) };
    case 'Prefix':
      return { Prefix: str(path, v.value) };
    case 'Suffix':
      return { Suffix: str(path, v.value) };
    case 'Presence':
      if (!Array.isArray(v.value) || v.value.length !== 0) throw configError(path, 'expected !Presence []');
      return { Presence: [] };
    default:
      throw configError(path, `!${v.tag}: expected !Exact, !Prefix, !Suffix or !Presence`);
  }
}

function serviceAccountMatch(path: string, v: unknown): ServiceAccountMatch {
  const f = new Struct(path, v, ['namespace', 'serviceAccount'], 'a service account match');
  return { namespace: f.str('namespace'), serviceAccount: f.str('serviceAccount') };
}

function rbacMatch(path: string, v: unknown): RbacMatch {
  const f = new Struct(path, v, MATCH, 'a match');
  const m: RbacMatch = {};
  for (const k of STRING_MATCHES) if (f.has(k)) m[k] = list(f.at(k), f.v[k], stringMatch);
  for (const k of SA_MATCHES) if (f.has(k)) m[k] = list(f.at(k), f.v[k], serviceAccountMatch);
  for (const k of NETS) if (f.has(k)) m[k] = list(f.at(k), f.v[k], ipNet);
  for (const k of PORTS) if (f.has(k)) m[k] = list(f.at(k), f.v[k], (p, x) => uint(p, x, 65535));
  return m;
}

/** Looks like an Istio AuthorizationPolicy object rather than ztunnel's form. */
function istioShaped(v: unknown): boolean {
  return typeof v === 'object' && v !== null && ('spec' in v || 'metadata' in v || 'apiVersion' in v);
}

/** One entry of local config's `policies:`. Throws MeshError INPOD_ERR_CONFIG naming the field. */
export function localAuthorization(path: string, v: unknown): Authorization {
  if (istioShaped(v)) {
    throw configError(path, "an Istio AuthorizationPolicy (metadata/spec) is not ztunnel's local-config form, and ztunnel refuses it: write it as ztunnel's Authorization (name, namespace, scope, action, rules, dryRun), or serve it from the Kubernetes API or a manifest directory (--kubeconfig, --manifests), where Istio's form is read");
  }
  const f = new Struct(path, v, AUTHORIZATION, 'an authorization policy');
  return {
    name: f.str('name'),
    namespace: f.str('namespace'),
    scope: f.oneOf('scope', ['Global', 'Namespace', 'WorkloadSelector']),
    action: f.oneOf('action', ['Allow', 'Deny']),
    rules: list(f.at('rules'), f.list('rules', true), (rp, rule) => list(rp, rule, (cp, clause) => list(cp, clause, rbacMatch))),
    dryRun: f.bool('dryRun'),
  };
}
