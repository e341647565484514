// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Inbound capture: one program, attached to each enrolled pod netns (a pinned link per pod).
 * sk_lookup cannot read the netns cookie, so the netns is found from the local (pod) address.
 * A new TCP connection to the pod is assigned to the pod's inbound listener (the inbound port of
 * config.h; the newest registered, else the one before it, maps.h), with the original destination left as the accepted socket's local address. Exempt:
 * the HBONE port, the inbound port itself, the probe source, loopback sources, the pod's own
 * connections, the node's own (kubelet's probes: the tuple a socket of the host netns connected
 * with, recorded by sockops) and excluded ports. Enrolled with no listener: the SYN is dropped
 * (fail closed, never bypass).
 * IPv6 SYNs take the same path, their addresses 16 bytes as an IPv4 SYN's mapped ones (types.h):
 * the pod found from its IPv6 (inpod_pod_ips6), the IPv6 probe source (inpod_pod6), ::1. They
 * need a listener that takes IPv6 (ztunnel's dual-stack [::]); an AF_INET one cannot be
 * assigned an IPv6 SYN, which is then dropped. A SYN to a link-local address (fe80::/10, which
 * every pod's eth0 has, IPv4-only pods too) is dropped: the address names no netns (the same one
 * may sit on several links, so inpod_pod_ips6 cannot hold it, and an assignment to another
 * netns's listener must never happen), and this program only runs in enrolled netns, whose TCP
 * must not reach an app around the proxy. ip6tables REDIRECTs it to 15006 instead.
 */
#include "common.h"
#include "config.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The netns's newest inbound listener, else the one before it (maps.h, inpod_inbound). */
static __always_inline struct bpf_sock *inbound_listener(__u64 netns)
{
	__u32 *newest = bpf_map_lookup_elem(&inpod_inbound_slot, &netns);
	struct bpf_sock *sk;

	if (newest && *newest == 1) {
		sk = bpf_map_lookup_elem(&inpod_inbound1, &netns);
		return sk ? sk : bpf_map_lookup_elem(&inpod_inbound, &netns);
	}
	sk = bpf_map_lookup_elem(&inpod_inbound, &netns);
	return sk ? sk : bpf_map_lookup_elem(&inpod_inbound1, &netns);
}

SEC("sk_lookup")
int inpod_sk_lookup(struct bpf_sk_lookup *ctx)
{
	struct inpod_pod *pod;
	struct inpod_pod6 *pod6;
	struct bpf_sock *sk;
	struct inpod_tuple t = {};
	__u16 lport = inpod_port_host(ctx->local_port);
	__u64 *owner, netns;
	long err;

	INPOD_REQUIRE_CONFIG();
	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	if (ctx->family == AF_INET) {
		inpod_map4(t.dip, ctx->local_ip4);
		inpod_map4(t.sip, ctx->remote_ip4);
	} else if (ctx->family == AF_INET6) {
		if ((ctx->local_ip6[0] & bpf_htonl(0xffc00000)) == bpf_htonl(0xfe800000)) {
			inpod_count(INPOD_STAT_V6_DENY);
			return SK_DROP;
		}
		t.dip[0] = ctx->local_ip6[0];
		t.dip[1] = ctx->local_ip6[1];
		t.dip[2] = ctx->local_ip6[2];
		t.dip[3] = ctx->local_ip6[3];
		t.sip[0] = ctx->remote_ip6[0];
		t.sip[1] = ctx->remote_ip6[1];
		t.sip[2] = ctx->remote_ip6[2];
		t.sip[3] = ctx->remote_ip6[3];
	} else {
		return SK_PASS;
	}
	owner = inpod_owner(t.dip);
	if (!owner)
		return SK_PASS; /* not to a pod address (loopback, or a netns without a pod IP) */
	netns = *owner;
	pod = bpf_map_lookup_elem(&inpod_enrolled, &netns);
	if (!pod)
		return SK_PASS;
	pod6 = bpf_map_lookup_elem(&inpod_pod6, &netns);
	if (lport == inpod_cfg.hbone_port || lport == inpod_cfg.inbound_port || inpod_is_probe(t.sip, pod, pod6) ||
	    inpod_is_loopback(t.sip) || inpod_port_excluded(netns, lport, INPOD_DIR_IN)) {
		inpod_count(INPOD_STAT_IN_BYPASS);
		return SK_PASS;
	}
	t.netns = netns;
	t.sport = inpod_port_net(ctx->remote_port);
	t.dport = lport;
	{
		__u64 *src_owner = inpod_owner(t.sip);

		/* The pod talking to itself, or, while its handshake lasts, the proxy's transparent
		 * upstream to the app or a node socket's connection (both recorded by sockops at
		 * connect). Any other SYN from a foreign source, whatever tuple it reuses or address
		 * it carries (the node's own, masqueraded), goes to the proxy. */
		if ((src_owner && *src_owner == netns) || bpf_map_lookup_elem(&inpod_own_conn, &t)) {
			inpod_count(INPOD_STAT_IN_BYPASS);
			return SK_PASS;
		}
	}
	sk = inbound_listener(netns);
	if (!sk) {
		inpod_count(INPOD_STAT_IN_NO_LISTENER);
		return SK_DROP;
	}
	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (err) {
		inpod_count(INPOD_STAT_IN_NO_LISTENER);
		return SK_DROP;
	}
	inpod_count(INPOD_STAT_IN_STEER);
	return SK_PASS;
}
