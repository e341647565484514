/**
 * Istio's numbers, in one place: the ports the proxy listens on, the socket marks, the routing
 * table and the kubelet probe source. They are Istio's (istio cni/pkg/iptables/iptables.go,
 * ztunnel src/config.rs), so an inpod agent and proxy interoperate with Istio's own. Every
 * TypeScript module and the eBPF programs (through the load-time config the redirect backend
 * writes into their .rodata) take them from here.
 */

/** Ports of the proxy: the listeners inside each pod's netns, and the node-level endpoints. */
export const PORTS = Object.freeze({
  /** outbound capture (REDIRECT / connect4 target) */
  outbound: 15001,
  /** inbound plaintext capture */
  inboundPlaintext: 15006,
  /** HBONE (mTLS HTTP/2 CONNECT); never redirected */
  hbone: 15008,
  /** DNS capture, when on */
  dns: 15053,
  /** admin (localhost only) */
  admin: 15000,
  /** Prometheus metrics */
  metrics: 15020,
  /** readiness */
  readiness: 15021,
});

/** SO_MARK / fwmark values. */
export const MARKS = Object.freeze({
  /** the proxy's own sockets: never captured (Istio's 1337) */
  proxy: 0x539,
  /** the proxy's transparent upstream to the app (eBPF backend: routes the app's replies back) */
  spoof: 0x53a,
  /** iptables backend: connmark of connections redirected inbound (Istio's in-pod rules) */
  connmark: 0x111,
  /** the mask Istio matches its marks with */
  mask: 0xfff,
});

/** The routing table for the transparent return path inside the pod netns. */
export const ROUTE_TABLE = 100;

/** Source address of kubelet probes after the host-side SNAT (istio-cni). */
export const PROBE_SOURCE = Object.freeze({ ipv4: '169.254.7.127', ipv6: 'fd16:9254:7127:1337:ffff:ffff:ffff:ffff' });

/**
 * The proxy's own ports: a connection it would make to one of them on its own addresses loops
 * back into it (ztunnel's illegal_ports, src/config.rs, widened to DNS and the node endpoints).
 */
export const PROXY_PORTS: ReadonlySet<number> = new Set(Object.values(PORTS));
