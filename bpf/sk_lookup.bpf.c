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
	struct bpf_sock *sk;
	__u32 lip = ctx->local_ip4, rip = ctx->remote_ip4;
	__u16 lport = inpod_port_host(ctx->local_port);
	__u64 *owner, netns;
	long err;

	INPOD_REQUIRE_CONFIG();
	if (ctx->protocol != IPPROTO_TCP || ctx->family != AF_INET)
		return SK_PASS;
	owner = bpf_map_lookup_elem(&inpod_pod_ips, &lip);
	if (!owner)
		return SK_PASS; /* not to a pod address (loopback, or a netns without a pod IP) */
	netns = *owner;
	pod = bpf_map_lookup_elem(&inpod_enrolled, &netns);
	if (!pod)
		return SK_PASS;
	if (lport == inpod_cfg.hbone_port || lport == inpod_cfg.inbound_port || rip == pod->probe_ip4 ||
	    inpod_is_loopback4(rip) || inpod_port_excluded(netns, lport, INPOD_DIR_IN)) {
		inpod_count(INPOD_STAT_IN_BYPASS);
		return SK_PASS;
	}
	{
		struct inpod_tuple t = {
			.netns = netns,
			.sip = rip,
			.dip = lip,
			.sport = inpod_port_net(ctx->remote_port),
			.dport = lport,
		};
		__u64 *src_owner = bpf_map_lookup_elem(&inpod_pod_ips, &rip);

		/* The pod talking to itself, or, while its handshake lasts, the proxy's transparent
		 * upstream to the app or a node socket's connection (both recorded by sockops at
		 * connect). Any other SYN from a foreign source, whatever tuple it reuses or address
		 * it carries (the node's own, masqueraded), goes to the proxy. */
		if ((src_owner && *src_owner == netns) || bpf_map_lookup_elem(&inpod_own_syn, &t)) {
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
