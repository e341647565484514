// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * getsockopt(SOL_IP, SO_ORIGINAL_DST) for sockets in an enrolled netns, where no conntrack
 * entry exists (the kernel said ENOENT), answered as conntrack answers under Istio's REDIRECT:
 *  - a socket accepted on the outbound port: the destination its client asked for (kept in the
 *    accepted socket's storage); without one, no answer (the proxy refuses the connection);
 *  - an app's socket that connect4/6 sent to the outbound or DNS listener: the destination it
 *    asked for (in its own storage), as conntrack finds its original tuple;
 *  - any other socket: its own local address, what conntrack answers for a connection steered
 *    without NAT (sk_lookup) or accepted without NAT.
 * Sockets that are IPv4 on the wire are answered whatever their family: AF_INET, or AF_INET6
 * with an IPv4-mapped peer (conntrack's SOL_IP lookup reads the same IPv4 fields for those).
 * A real conntrack answer is never overridden.
 */
#include "common.h"
#include "config.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("cgroup/getsockopt")
int inpod_getsockopt(struct bpf_sockopt *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct sockaddr_in *sa = ctx->optval;
	struct inpod_addr answer, *orig = NULL;
	__u32 lip, rip;
	__u16 lport, rport;
	__u64 netns;

	INPOD_REQUIRE_CONFIG();
	if (ctx->level != SOL_IP || ctx->optname != SO_ORIGINAL_DST || ctx->retval == 0)
		return 1;
	if (!sk || sk->protocol != IPPROTO_TCP)
		return 1;
	if (sk->family != AF_INET &&
	    !(sk->family == AF_INET6 && inpod_is_v4_mapped(sk->dst_ip6[0], sk->dst_ip6[1], sk->dst_ip6[2])))
		return 1;
	if ((void *)(sa + 1) > ctx->optval_end)
		return 1;
	netns = bpf_get_netns_cookie(ctx);
	if (!bpf_map_lookup_elem(&inpod_enrolled, &netns))
		return 1;
	/* All read up front: the verifier forbids the pointer arithmetic clang would otherwise
	 * emit for one load shared by several branches. */
	lip = sk->src_ip4;
	lport = inpod_port_host(sk->src_port);
	rip = sk->dst_ip4;
	rport = inpod_port_net(sk->dst_port);
	if (lport == inpod_cfg.outbound_port) {
		/* put there by sockops when the handshake completed (before accept() returned) */
		orig = bpf_sk_storage_get(&inpod_sk_orig, sk, 0, 0);
		if (!orig)
			return 1;
	} else if (rip == bpf_htonl(INPOD_LOOPBACK4) &&
		   (rport == inpod_cfg.outbound_port || rport == inpod_cfg.dns_port)) {
		orig = bpf_sk_storage_get(&inpod_sk_orig, sk, 0, 0);
	}
	if (orig) {
		answer = *orig;
	} else {
		answer.ip4 = lip;
		answer.port = inpod_port_to_net(lport);
	}
	sa->sin_family = AF_INET;
	sa->sin_port = answer.port;
	sa->sin_addr.s_addr = answer.ip4;
	__builtin_memset(sa->__pad, 0, sizeof(sa->__pad));
	ctx->optlen = sizeof(*sa);
	ctx->retval = 0;
	inpod_count(INPOD_STAT_ORIG_DST);
	return 1;
}
