// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * getsockopt(SOL_IP, SO_ORIGINAL_DST) and its IPv6 twin getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)
 * for sockets in an enrolled netns, where no conntrack entry exists (the kernel said ENOENT),
 * answered as conntrack answers under Istio's REDIRECT:
 *  - a socket accepted on the outbound port: the destination its client asked for (kept in the
 *    accepted socket's storage); without one, no answer (the proxy refuses the connection);
 *  - an app's socket that connect4/6 sent to the outbound or DNS listener: the destination it
 *    asked for (in its own storage), as conntrack finds its original tuple;
 *  - any other socket: its own local address, what conntrack answers for a connection steered
 *    without NAT (sk_lookup) or accepted without NAT.
 * The level follows the family on the wire, as conntrack's two getorigdst do: SOL_IP answers a
 * sockaddr_in for IPv4 (an AF_INET socket, or an AF_INET6 one with an IPv4-mapped peer, whose
 * IPv4 fields conntrack reads alike), SOL_IPV6 a sockaddr_in6 for native IPv6 (AF_INET6 only;
 * scope id 0, as for every address that is not link-local). A real conntrack answer is never
 * overridden.
 */
#include "common.h"
#include "config.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The connection's local and remote address, 16 bytes each (IPv4 mapped). An IPv4 connection
 * of a dual-stack socket is read from the IPv4 fields, as conntrack's SOL_IP lookup reads it. */
static __always_inline void sock_addrs(struct bpf_sock *sk, int v4, __u32 *l, __u32 *r)
{
	__u32 l6[4] = { sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2], sk->src_ip6[3] };
	__u32 r6[4] = { sk->dst_ip6[0], sk->dst_ip6[1], sk->dst_ip6[2], sk->dst_ip6[3] };

	inpod_conn_addrs(v4, 0, sk->src_ip4, sk->dst_ip4, l6, r6, l, r);
}

/* What conntrack would answer (see above), or 0 for no answer. */
static __always_inline int original_dst(struct bpf_sock *sk, int v4, struct inpod_addr *answer)
{
	struct inpod_addr *orig = NULL;
	__u32 lip[4], rip[4], lo[4];
	__u16 lport, rport;

	/* All read up front: the verifier forbids the pointer arithmetic clang would otherwise
	 * emit for one load shared by several branches. */
	sock_addrs(sk, v4, lip, rip);
	lport = inpod_port_host(sk->src_port);
	rport = inpod_port_net(sk->dst_port);
	inpod_loopback_of(lo, rip);
	if (lport == inpod_cfg.outbound_port) {
		/* put there by sockops when the handshake completed (before accept() returned) */
		orig = bpf_sk_storage_get(&inpod_sk_dst, sk, 0, 0);
		if (!orig)
			return 0;
	} else if (inpod_ip_eq(rip, lo) && (rport == inpod_cfg.outbound_port || rport == inpod_cfg.dns_port)) {
		orig = bpf_sk_storage_get(&inpod_sk_dst, sk, 0, 0);
	}
	if (orig) {
		*answer = *orig;
	} else {
		__builtin_memcpy(answer->ip, lip, sizeof(lip));
		answer->port = inpod_port_to_net(lport);
	}
	return 1;
}

SEC("cgroup/getsockopt")
int inpod_getsockopt(struct bpf_sockopt *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct inpod_addr answer = {};
	__u64 netns;
	int v4;

	INPOD_REQUIRE_CONFIG();
	if (ctx->optname != SO_ORIGINAL_DST || ctx->retval == 0)
		return 1;
	if (ctx->level != SOL_IP && ctx->level != SOL_IPV6)
		return 1;
	if (!sk || sk->protocol != IPPROTO_TCP)
		return 1;
	v4 = sk->family == AF_INET ||
	     (sk->family == AF_INET6 && inpod_is_v4_mapped(sk->dst_ip6[0], sk->dst_ip6[1], sk->dst_ip6[2]));
	if (ctx->level == SOL_IP ? !v4 : (v4 || sk->family != AF_INET6))
		return 1;
	netns = bpf_get_netns_cookie(ctx);
	if (!bpf_map_lookup_elem(&inpod_enrolled, &netns))
		return 1;
	if (!original_dst(sk, v4, &answer))
		return 1;
	if (ctx->level == SOL_IP) {
		struct sockaddr_in *sa = ctx->optval;

		if ((void *)(sa + 1) > ctx->optval_end)
			return 1;
		sa->sin_family = AF_INET;
		sa->sin_port = answer.port;
		sa->sin_addr.s_addr = answer.ip[3];
		__builtin_memset(sa->__pad, 0, sizeof(sa->__pad));
		ctx->optlen = sizeof(*sa);
	} else {
		struct sockaddr_in6 *sa6 = ctx->optval;

		if ((void *)(sa6 + 1) > ctx->optval_end)
			return 1;
		sa6->sin6_family = AF_INET6;
		sa6->sin6_port = answer.port;
		sa6->sin6_flowinfo = 0;
		sa6->sin6_addr.in6_u.u6_addr32[0] = answer.ip[0];
		sa6->sin6_addr.in6_u.u6_addr32[1] = answer.ip[1];
		sa6->sin6_addr.in6_u.u6_addr32[2] = answer.ip[2];
		sa6->sin6_addr.in6_u.u6_addr32[3] = answer.ip[3];
		sa6->sin6_scope_id = 0;
		ctx->optlen = sizeof(*sa6);
	}
	ctx->retval = 0;
	inpod_count(INPOD_STAT_ORIG_DST);
	return 1;
}
