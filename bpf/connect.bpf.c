// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Outbound capture (cgroup sock_addr hooks), attached once at the configured cgroup and gated
 * per pod by inpod_enrolled[netns cookie]: enrolling a pod is a map update, not an attach.
 *
 *  connect4     TCP from an enrolled netns -> 127.0.0.1:<outbound port> (original dst kept in
 *               the socket's storage; the socket is bound to the pod IP first so the proxy sees
 *               the same peer as under iptables REDIRECT); DNS to port 53 -> 127.0.0.1:<DNS port>
 *               when enabled.
 *  connect6     the same for IPv6 (ip6tables REDIRECT's view: -> [::1]:<port>, bound to the pod's
 *               IPv6), and for IPv4-mapped destinations of dual-stack sockets as connect4 (to
 *               ::ffff:127.0.0.1, bound to ::ffff:<pod IP>).
 *  sendmsg4/6   unconnected UDP DNS -> the loopback's DNS port; recvmsg4/6 restore the answer's
 *               source. The kernel runs sendmsg4 also for a dual-stack socket sending to an
 *               IPv4-mapped address (udpv6_sendmsg hands it to udp_sendmsg before the IPv6 hook),
 *               so sendmsg6 sees native IPv6 only; the answer is read through udpv6_recvmsg
 *               either way, hence recvmsg6 for both.
 *  getpeername4/6 the app sees its real peer, not the proxy's listener (127.0.0.1, ::1 or ::ffff:127.0.0.1).
 * Every address is handled as 16 bytes, IPv4 as ::ffff:a.b.c.d (types.h), so both families take
 * one path. The ports and marks are the load-time settings of config.h (Istio's: ts/istio.ts).
 */
#include "common.h"
#include "config.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

enum verdict { PASS_THROUGH, TO_OUTBOUND, TO_DNS };

/* The pod's own address of `a`'s family (its first): inpod_pod.ip4, or inpod_pod6.ip6. */
static __always_inline int is_pod_ip(const __u32 *a, const struct inpod_pod *pod, const struct inpod_pod6 *pod6)
{
	if (inpod_mapped(a))
		return a[3] && a[3] == pod->ip4;
	return pod6 && inpod_ip_eq(a, pod6->ip6);
}

/* The address a socket is bound to, 16 bytes (zero: not bound yet). */
static __always_inline void sock_src(struct bpf_sock *sk, __u32 *a)
{
	if (sk->family == AF_INET) {
		__u32 ip4 = sk->src_ip4;

		if (ip4)
			inpod_map4(a, ip4);
		else
			a[0] = a[1] = a[2] = a[3] = 0;
		return;
	}
	a[0] = sk->src_ip6[0];
	a[1] = sk->src_ip6[1];
	a[2] = sk->src_ip6[2];
	a[3] = sk->src_ip6[3];
}

/* Decide what one connection attempt from an enrolled pod does (Istio's nat ISTIO_OUTPUT). */
static __always_inline enum verdict outbound_verdict(void *ctx, struct bpf_sock *sk, __u64 netns,
						     const struct inpod_pod *pod, const struct inpod_pod6 *pod6,
						     const __u32 *dst, __u16 dport, __u32 protocol)
{
	__u64 *owner;

	if (sk && sk->mark == inpod_cfg.proxy_mark) {
		/* The proxy's own socket. One bound to a foreign source (transparent upstream to
		 * the app, keeping the client's IP) is re-marked so that only its replies take the
		 * local route of table 100; the proxy's other sockets keep the main table. */
		__u32 src[4];

		sock_src(sk, src);
		if (!inpod_ip_zero(src) && !inpod_is_loopback(src) && !is_pod_ip(src, pod, pod6)) {
			owner = inpod_owner(src);
			if (!owner || *owner != netns) {
				int m = inpod_cfg.spoof_mark;

				bpf_setsockopt(ctx, SOL_SOCKET, SO_MARK, &m, sizeof(m));
			}
		}
		return PASS_THROUGH;
	}
	if (inpod_is_loopback(dst) || is_pod_ip(dst, pod, pod6) || inpod_is_probe(dst, pod, pod6))
		return PASS_THROUGH;
	owner = inpod_owner(dst);
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
static __always_inline void save_orig(struct bpf_sock_addr *ctx, const __u32 *dst, __u16 port)
{
	struct inpod_addr *orig = bpf_sk_storage_get(&inpod_sk_dst, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

	if (!orig)
		return;
	orig->ip[0] = dst[0];
	orig->ip[1] = dst[1];
	orig->ip[2] = dst[2];
	orig->ip[3] = dst[3];
	orig->port = inpod_port_to_net(port);
}

/* Binds the socket to the pod's address of the destination's family, as REDIRECT leaves the
 * source: the proxy's peer is the pod, not the loopback. Port 0 means "address only, port
 * chosen at connect". Fails harmlessly if already bound. */
static __always_inline void bind_pod(struct bpf_sock_addr *ctx, const int family, const __u32 *dst,
				     const struct inpod_pod *pod, const struct inpod_pod6 *pod6)
{
	struct bpf_sock *sk = ctx->sk;
	__u32 src[4];

	if (!sk || sk->src_port)
		return;
	sock_src(sk, src);
	if (!inpod_ip_zero(src))
		return;
	if (family == AF_INET) {
		struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = pod->ip4 };

		if (pod->ip4)
			bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa));
		return;
	}
	{
		struct sockaddr_in6 sa6 = { .sin6_family = AF_INET6 };

		if (inpod_mapped(dst)) {
			if (!pod->ip4)
				return;
			sa6.sin6_addr.in6_u.u6_addr32[2] = bpf_htonl(0xffff);
			sa6.sin6_addr.in6_u.u6_addr32[3] = pod->ip4;
		} else {
			if (!pod6)
				return;
			sa6.sin6_addr.in6_u.u6_addr32[0] = pod6->ip6[0];
			sa6.sin6_addr.in6_u.u6_addr32[1] = pod6->ip6[1];
			sa6.sin6_addr.in6_u.u6_addr32[2] = pod6->ip6[2];
			sa6.sin6_addr.in6_u.u6_addr32[3] = pod6->ip6[3];
		}
		bpf_bind(ctx, (struct sockaddr *)&sa6, sizeof(sa6));
	}
}

/* Decides a destination (`dst` 16 bytes, `dport` host order); returns the port of the proxy's
 * listener to send it to, or 0 to leave it. `bind_family` is a constant per hook: 0 where
 * bpf_bind does not exist (sendmsg), else the socket's family (connect4: AF_INET, connect6:
 * AF_INET6). */
static __always_inline __u16 redirect(struct bpf_sock_addr *ctx, const __u32 *dst, __u16 dport, const int bind_family)
{
	__u64 netns = bpf_get_netns_cookie(ctx);
	struct inpod_pod *pod = bpf_map_lookup_elem(&inpod_enrolled, &netns);
	struct inpod_pod6 *pod6;
	enum verdict v;

	if (!pod)
		return 0;
	pod6 = bpf_map_lookup_elem(&inpod_pod6, &netns);
	v = outbound_verdict(ctx, ctx->sk, netns, pod, pod6, dst, dport, ctx->protocol);
	if (v == PASS_THROUGH) {
		inpod_count(INPOD_STAT_OUT_BYPASS);
		return 0;
	}
	save_orig(ctx, dst, dport);
	if (v == TO_DNS) {
		inpod_count(INPOD_STAT_DNS_REDIRECT);
		return inpod_cfg.dns_port;
	}
	if (bind_family)
		bind_pod(ctx, bind_family, dst, pod, pod6);
	inpod_count(INPOD_STAT_OUT_REDIRECT);
	return inpod_cfg.outbound_port;
}

static __always_inline void dst6(struct bpf_sock_addr *ctx, __u32 *a)
{
	a[0] = ctx->user_ip6[0];
	a[1] = ctx->user_ip6[1];
	a[2] = ctx->user_ip6[2];
	a[3] = ctx->user_ip6[3];
}

/* Sends an IPv6 socket to `port` on the loopback of its destination's family. */
static __always_inline void to_loopback6(struct bpf_sock_addr *ctx, const __u32 *dst, __u16 port)
{
	__u32 lo[4];

	inpod_loopback_of(lo, dst);
	ctx->user_ip6[0] = lo[0];
	ctx->user_ip6[1] = lo[1];
	ctx->user_ip6[2] = lo[2];
	ctx->user_ip6[3] = lo[3];
	ctx->user_port = inpod_port_to_net(port);
}

SEC("cgroup/connect4")
int inpod_connect4(struct bpf_sock_addr *ctx)
{
	__u32 dst[4];
	__u16 port;

	INPOD_REQUIRE_CONFIG();
	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return 1;
	inpod_map4(dst, ctx->user_ip4);
	port = redirect(ctx, dst, inpod_port_net(ctx->user_port), AF_INET);
	if (port) {
		ctx->user_ip4 = bpf_htonl(INPOD_LOOPBACK4);
		ctx->user_port = inpod_port_to_net(port);
	}
	return 1;
}

SEC("cgroup/connect6")
int inpod_connect6(struct bpf_sock_addr *ctx)
{
	__u32 dst[4];
	__u16 port;

	INPOD_REQUIRE_CONFIG();
	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return 1;
	dst6(ctx, dst);
	port = redirect(ctx, dst, inpod_port_net(ctx->user_port), AF_INET6);
	if (port)
		to_loopback6(ctx, dst, port);
	return 1;
}

SEC("cgroup/sendmsg4")
int inpod_sendmsg4(struct bpf_sock_addr *ctx)
{
	__u32 dst[4];
	__u16 port;

	INPOD_REQUIRE_CONFIG();
	if (ctx->protocol != IPPROTO_UDP || inpod_port_net(ctx->user_port) != DNS_PORT)
		return 1;
	inpod_map4(dst, ctx->user_ip4);
	port = redirect(ctx, dst, DNS_PORT, 0);
	if (port) {
		ctx->user_ip4 = bpf_htonl(INPOD_LOOPBACK4);
		ctx->user_port = inpod_port_to_net(port);
	}
	return 1;
}

SEC("cgroup/sendmsg6")
int inpod_sendmsg6(struct bpf_sock_addr *ctx)
{
	__u32 dst[4];
	__u16 port;

	INPOD_REQUIRE_CONFIG();
	if (ctx->protocol != IPPROTO_UDP || inpod_port_net(ctx->user_port) != DNS_PORT)
		return 1;
	dst6(ctx, dst);
	port = redirect(ctx, dst, DNS_PORT, 0);
	if (port)
		to_loopback6(ctx, dst, port);
	return 1;
}

/* The address the app asked for, when `peer` (the peer the kernel would show) is the proxy's
 * listener on the loopback of its family that connect/sendmsg sent this socket to; else NULL. */
static __always_inline struct inpod_addr *asked_for(struct bpf_sock_addr *ctx, const __u32 *peer)
{
	__u16 port = inpod_port_net(ctx->user_port);
	__u32 lo[4];

	inpod_loopback_of(lo, peer);
	if (!inpod_ip_eq(peer, lo))
		return NULL;
	if (port != inpod_cfg.outbound_port && port != inpod_cfg.dns_port)
		return NULL;
	return bpf_sk_storage_get(&inpod_sk_dst, ctx->sk, 0, 0);
}

static __always_inline void restore_peer4(struct bpf_sock_addr *ctx)
{
	struct inpod_addr *orig;
	__u32 peer[4];

	inpod_map4(peer, ctx->user_ip4);
	orig = asked_for(ctx, peer);
	if (!orig || !inpod_mapped(orig->ip))
		return;
	ctx->user_ip4 = orig->ip[3];
	ctx->user_port = orig->port;
}

/* A dual-stack socket sees its IPv4 peer as ::ffff:a.b.c.d, the form the destination was kept in. */
static __always_inline void restore_peer6(struct bpf_sock_addr *ctx)
{
	struct inpod_addr *orig;
	__u32 peer[4];

	dst6(ctx, peer);
	orig = asked_for(ctx, peer);
	if (!orig || inpod_mapped(orig->ip) != inpod_mapped(peer))
		return;
	ctx->user_ip6[0] = orig->ip[0];
	ctx->user_ip6[1] = orig->ip[1];
	ctx->user_ip6[2] = orig->ip[2];
	ctx->user_ip6[3] = orig->ip[3];
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
