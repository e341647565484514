// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Outbound capture (cgroup sock_addr hooks), attached once at the configured cgroup and gated
 * per pod by inpod_enrolled[netns cookie]: enrolling a pod is a map update, not an attach.
 *
 *  connect4     TCP from an enrolled netns -> 127.0.0.1:<outbound port> (original dst kept in
 *               the socket's storage; the socket is bound to the pod IP first so the proxy sees
 *               the same peer as under iptables REDIRECT); DNS to port 53 -> 127.0.0.1:<DNS port>
 *               when enabled.
 *  connect6     IPv4-mapped destinations (dual-stack sockets) as connect4, to ::ffff:127.0.0.1
 *               and bound to ::ffff:<pod IP>; native IPv6 is refused (fail closed).
 *  sendmsg4     unconnected UDP DNS -> 127.0.0.1:<DNS port>; recvmsg4 restores the answer's source.
 *               The kernel runs sendmsg4 also for a dual-stack socket sending to an IPv4-mapped
 *               address (udpv6_sendmsg hands it to udp_sendmsg), so there is no sendmsg6; the
 *               answer is read through udpv6_recvmsg, hence recvmsg6.
 *  getpeername4/6 the app sees its real peer, not the proxy's listener (127.0.0.1 or ::ffff:127.0.0.1).
 * The ports and marks are the load-time settings of config.h (Istio's: ts/istio.ts).
 */
#include "common.h"
#include "config.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

enum verdict { PASS_THROUGH, TO_OUTBOUND, TO_DNS };

/* Decide what one connection attempt from an enrolled pod does (Istio's nat ISTIO_OUTPUT). */
static __always_inline enum verdict outbound_verdict(void *ctx, struct bpf_sock *sk, __u64 netns,
						     const struct inpod_pod *pod, __u32 dst, __u16 dport,
						     __u32 protocol)
{
	__u64 *owner;

	if (sk && sk->mark == inpod_cfg.proxy_mark) {
		/* The proxy's own socket. One bound to a foreign source (transparent upstream to
		 * the app, keeping the client's IP) is re-marked so that only its replies take the
		 * local route of table 100; the proxy's other sockets keep the main table. */
		if (sk->src_ip4 && sk->src_ip4 != pod->ip4 && !inpod_is_loopback4(sk->src_ip4)) {
			int m = inpod_cfg.spoof_mark;

			bpf_setsockopt(ctx, SOL_SOCKET, SO_MARK, &m, sizeof(m));
		}
		return PASS_THROUGH;
	}
	if (inpod_is_loopback4(dst) || dst == pod->ip4 || dst == pod->probe_ip4)
		return PASS_THROUGH;
	owner = bpf_map_lookup_elem(&inpod_pod_ips, &dst);
	if (owner && *owner == netns)
		return PASS_THROUGH; /* another of the pod's own addresses */
	if (dport == DNS_PORT && (pod->flags & INPOD_POD_DNS_CAPTURE))
		return TO_DNS;
	if (protocol != IPPROTO_TCP)
		return PASS_THROUGH;
	if (inpod_port_excluded(netns, dport, INPOD_DIR_OUT) || inpod_cidr_excluded(netns, dst))
		return PASS_THROUGH;
	return TO_OUTBOUND;
}

/* Kept on the socket itself, so it goes with the socket. Without memory for it the connection
 * is still redirected: the proxy then finds no original destination and refuses it. */
static __always_inline void save_orig(struct bpf_sock_addr *ctx, __u32 ip4, __u16 port)
{
	struct inpod_addr *orig = bpf_sk_storage_get(&inpod_sk_orig, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

	if (!orig)
		return;
	orig->ip4 = ip4;
	orig->port = inpod_port_to_net(port);
}

/* Rewrites an IPv4 destination (`dport` host order); returns the new port or 0 to leave it.
 * `bind_family` is a constant per hook: 0 where bpf_bind does not exist (sendmsg), else the
 * socket's family (connect4: AF_INET, connect6: AF_INET6, whose bind takes ::ffff:<pod IP>). */
static __always_inline __u16 redirect4(struct bpf_sock_addr *ctx, __u32 dst, __u16 dport, const int bind_family)
{
	__u64 netns = bpf_get_netns_cookie(ctx);
	struct inpod_pod *pod = bpf_map_lookup_elem(&inpod_enrolled, &netns);
	struct bpf_sock *sk = ctx->sk;
	enum verdict v;

	if (!pod)
		return 0;
	v = outbound_verdict(ctx, sk, netns, pod, dst, dport, ctx->protocol);
	if (v == PASS_THROUGH) {
		inpod_count(INPOD_STAT_OUT_BYPASS);
		return 0;
	}
	save_orig(ctx, dst, dport);
	if (v == TO_DNS) {
		inpod_count(INPOD_STAT_DNS_REDIRECT);
		return inpod_cfg.dns_port;
	}
	/* Source = pod IP, as REDIRECT would leave it: the proxy's peer is the pod, not 127.0.0.1.
	 * Port 0 means "address only, port chosen at connect". Fails harmlessly if already bound. */
	if (bind_family && sk && !sk->src_ip4 && !sk->src_port && pod->ip4) {
		if (bind_family == AF_INET6) {
			struct sockaddr_in6 sa6 = { .sin6_family = AF_INET6 };

			sa6.sin6_addr.in6_u.u6_addr32[2] = bpf_htonl(0xffff);
			sa6.sin6_addr.in6_u.u6_addr32[3] = pod->ip4;
			bpf_bind(ctx, (struct sockaddr *)&sa6, sizeof(sa6));
		} else {
			struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = pod->ip4 };

			bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa));
		}
	}
	inpod_count(INPOD_STAT_OUT_REDIRECT);
	return inpod_cfg.outbound_port;
}

SEC("cgroup/connect4")
int inpod_connect4(struct bpf_sock_addr *ctx)
{
	__u16 port;

	INPOD_REQUIRE_CONFIG();
	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return 1;
	port = redirect4(ctx, ctx->user_ip4, inpod_port_net(ctx->user_port), AF_INET);
	if (port) {
		ctx->user_ip4 = bpf_htonl(INPOD_LOOPBACK4);
		ctx->user_port = inpod_port_to_net(port);
	}
	return 1;
}

static __always_inline int is_v4_mapped(struct bpf_sock_addr *ctx)
{
	return inpod_is_v4_mapped(ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2]);
}

static __always_inline int is_loopback6(struct bpf_sock_addr *ctx)
{
	return ctx->user_ip6[0] == 0 && ctx->user_ip6[1] == 0 && ctx->user_ip6[2] == 0 &&
	       ctx->user_ip6[3] == bpf_htonl(1);
}

SEC("cgroup/connect6")
int inpod_connect6(struct bpf_sock_addr *ctx)
{
	__u64 netns;
	__u16 port;

	INPOD_REQUIRE_CONFIG();
	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return 1;
	if (is_v4_mapped(ctx)) {
		port = redirect4(ctx, ctx->user_ip6[3], inpod_port_net(ctx->user_port), AF_INET6);
		if (port) {
			ctx->user_ip6[3] = bpf_htonl(INPOD_LOOPBACK4);
			ctx->user_port = inpod_port_to_net(port);
		}
		return 1;
	}
	if (ctx->protocol != IPPROTO_TCP || is_loopback6(ctx))
		return 1;
	netns = bpf_get_netns_cookie(ctx);
	if (!bpf_map_lookup_elem(&inpod_enrolled, &netns))
		return 1;
	if (ctx->sk && ctx->sk->mark == inpod_cfg.proxy_mark)
		return 1;
	/* Native IPv6 capture is not implemented: refuse rather than let it bypass the proxy. */
	inpod_count(INPOD_STAT_V6_DENY);
	return 0;
}

SEC("cgroup/sendmsg4")
int inpod_sendmsg4(struct bpf_sock_addr *ctx)
{
	__u16 port;

	INPOD_REQUIRE_CONFIG();
	if (ctx->protocol != IPPROTO_UDP || inpod_port_net(ctx->user_port) != DNS_PORT)
		return 1;
	port = redirect4(ctx, ctx->user_ip4, DNS_PORT, 0);
	if (port) {
		ctx->user_ip4 = bpf_htonl(INPOD_LOOPBACK4);
		ctx->user_port = inpod_port_to_net(port);
	}
	return 1;
}

/* The address the app asked for, when `ip4` (the peer the kernel would show) is the proxy's
 * listener that connect/sendmsg sent this socket to; else NULL. */
static __always_inline struct inpod_addr *asked_for(struct bpf_sock_addr *ctx, __u32 ip4)
{
	__u16 port = inpod_port_net(ctx->user_port);

	if (ip4 != bpf_htonl(INPOD_LOOPBACK4))
		return NULL;
	if (port != inpod_cfg.outbound_port && port != inpod_cfg.dns_port)
		return NULL;
	return bpf_sk_storage_get(&inpod_sk_orig, ctx->sk, 0, 0);
}

static __always_inline void restore_peer4(struct bpf_sock_addr *ctx)
{
	struct inpod_addr *orig = asked_for(ctx, ctx->user_ip4);

	if (!orig)
		return;
	ctx->user_ip4 = orig->ip4;
	ctx->user_port = orig->port;
}

/* A dual-stack socket sees its IPv4 peer as ::ffff:a.b.c.d: only the last word changes. */
static __always_inline void restore_peer6(struct bpf_sock_addr *ctx)
{
	struct inpod_addr *orig;

	if (!is_v4_mapped(ctx))
		return;
	orig = asked_for(ctx, ctx->user_ip6[3]);
	if (!orig)
		return;
	ctx->user_ip6[3] = orig->ip4;
	ctx->user_port = orig->port;
}

SEC("cgroup/recvmsg4")
int inpod_recvmsg4(struct bpf_sock_addr *ctx)
{
	INPOD_REQUIRE_CONFIG();
	restore_peer4(ctx);
	return 1;
}

SEC("cgroup/getpeername4")
int inpod_getpeername4(struct bpf_sock_addr *ctx)
{
	INPOD_REQUIRE_CONFIG();
	restore_peer4(ctx);
	return 1;
}

SEC("cgroup/recvmsg6")
int inpod_recvmsg6(struct bpf_sock_addr *ctx)
{
	INPOD_REQUIRE_CONFIG();
	restore_peer6(ctx);
	return 1;
}

SEC("cgroup/getpeername6")
int inpod_getpeername6(struct bpf_sock_addr *ctx)
{
	INPOD_REQUIRE_CONFIG();
	restore_peer6(ctx);
	return 1;
}
