// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * getsockopt(SOL_IP, SO_ORIGINAL_DST) for sockets in an enrolled netns, where no conntrack
 * entry exists (the kernel said ENOENT): a socket accepted on the outbound port answers the
 * destination its client asked for (kept in the accepted socket's storage); any other socket
 * answers its own local address, which is what conntrack answers for a connection steered
 * without NAT (sk_lookup) or not NATed at all.
 * A real conntrack answer is never overridden.
 */
#include "common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("cgroup/getsockopt")
int inpod_getsockopt(struct bpf_sockopt *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct sockaddr_in *sa = ctx->optval;
	struct inpod_addr answer, *orig;
	__u32 lip, lport;
	__u64 netns;

	if (ctx->level != SOL_IP || ctx->optname != SO_ORIGINAL_DST || ctx->retval == 0)
		return 1;
	if (!sk || sk->family != AF_INET || sk->protocol != IPPROTO_TCP)
		return 1;
	if ((void *)(sa + 1) > ctx->optval_end)
		return 1;
	netns = bpf_get_netns_cookie(ctx);
	if (!bpf_map_lookup_elem(&inpod_enrolled, &netns))
		return 1;
	/* Both read up front: the verifier forbids the pointer arithmetic clang would otherwise
	 * emit for one load shared by both branches. */
	lip = sk->src_ip4;
	lport = sk->src_port;
	if (lport == inpod_cfg.outbound_port) {
		/* put there by sockops when the handshake completed (before accept() returned) */
		orig = bpf_sk_storage_get(&inpod_sk_orig, sk, 0, 0);
		if (!orig)
			return 1;
		answer = *orig;
	} else {
		answer.ip4 = lip;
		answer.port = bpf_htons((__u16)lport);
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
