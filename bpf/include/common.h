/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * What every capture program (connect, sockops, sk_lookup, getsockopt) shares: the pinned maps,
 * port byte order, the kernel constants vmlinux.h lacks, the counters and the exclusion lookups.
 * Their load-time settings are in config.h.
 */
#ifndef INPOD_COMMON_H
#define INPOD_COMMON_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "counters.h"
#include "maps.h"
#include "ports.h"

#define AF_INET 2
#define AF_INET6 10
#define SOL_SOCKET 1
#define SO_MARK 36
#define SOL_IP 0
#define SOL_IPV6 41
#define SO_ORIGINAL_DST 80 /* and IPv6's twin, IP6T_SO_ORIGINAL_DST, at SOL_IPV6 */
#define DNS_PORT 53 /* what DNS capture matches, as Istio's rules do */

#define INPOD_LOOPBACK4 0x7f000001 /* 127.0.0.1, host order */

static __always_inline void inpod_count(enum inpod_stat idx)
{
	inpod_counter_add(&inpod_stats, idx, 1);
}

static __always_inline int inpod_is_loopback4(__u32 ip_be)
{
	return (bpf_ntohl(ip_be) >> 24) == 127;
}

/* ::ffff:a.b.c.d, given the first three words of an IPv6 address (network order). Passed as
 * values: the verifier refuses a pointer into the context. */
static __always_inline int inpod_is_v4_mapped(__u32 w0, __u32 w1, __u32 w2)
{
	return w0 == 0 && w1 == 0 && w2 == bpf_htonl(0xffff);
}

/*
 * Addresses of either family as 16 bytes (types.h): IPv6, or IPv4 as ::ffff:a.b.c.d. Context
 * fields are copied to the stack first (the verifier refuses a pointer into the context).
 */
static __always_inline void inpod_map4(__u32 *a, __u32 ip4)
{
	a[0] = 0;
	a[1] = 0;
	a[2] = bpf_htonl(0xffff);
	a[3] = ip4;
}

/*
 * A connection's local and remote address, 16 bytes each (IPv4 mapped), from context fields the
 * caller read once each, unconditionally, into these values: each is held (barrier_var) before
 * the family picks one, because otherwise clang selects between field offsets and loads through a
 * computed context pointer, which the verifier refuses. IPv4 when `v4`, or when `mapped_is_v4`
 * and the remote IPv6 address is IPv4-mapped (a dual-stack socket's IPv4 connection).
 */
static __always_inline void inpod_conn_addrs(int v4, int mapped_is_v4, __u32 l4, __u32 r4, __u32 *l6, __u32 *r6, __u32 *l, __u32 *r)
{
	barrier_var(l4);
	barrier_var(r4);
	barrier_var(l6[0]);
	barrier_var(l6[1]);
	barrier_var(l6[2]);
	barrier_var(l6[3]);
	barrier_var(r6[0]);
	barrier_var(r6[1]);
	barrier_var(r6[2]);
	barrier_var(r6[3]);
	if (v4 || (mapped_is_v4 && inpod_is_v4_mapped(r6[0], r6[1], r6[2]))) {
		inpod_map4(l, l4);
		inpod_map4(r, r4);
		return;
	}
	__builtin_memcpy(l, l6, 16);
	__builtin_memcpy(r, r6, 16);
}

static __always_inline int inpod_mapped(const __u32 *a)
{
	return inpod_is_v4_mapped(a[0], a[1], a[2]);
}

static __always_inline int inpod_ip_eq(const __u32 *a, const __u32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

static __always_inline int inpod_ip_zero(const __u32 *a)
{
	return !(a[0] | a[1] | a[2] | a[3]);
}

/* ::1, or 127/8 (IPv4-mapped) */
static __always_inline int inpod_is_loopback(const __u32 *a)
{
	if (inpod_mapped(a))
		return inpod_is_loopback4(a[3]);
	return a[0] == 0 && a[1] == 0 && a[2] == 0 && a[3] == bpf_htonl(1);
}

/* The loopback of an address's family: ::ffff:127.0.0.1 for IPv4-mapped, ::1 for IPv6. */
static __always_inline void inpod_loopback_of(__u32 *out, const __u32 *a)
{
	if (inpod_mapped(a)) {
		inpod_map4(out, bpf_htonl(INPOD_LOOPBACK4));
		return;
	}
	out[0] = 0;
	out[1] = 0;
	out[2] = 0;
	out[3] = bpf_htonl(1);
}

/* The netns an address of an enrolled pod belongs to (inpod_pod_ips, inpod_pod_ips6); NULL if none. */
static __always_inline __u64 *inpod_owner(const __u32 *a)
{
	__u32 ip4;

	if (inpod_mapped(a)) {
		ip4 = a[3];
		return bpf_map_lookup_elem(&inpod_pod_ips, &ip4);
	}
	return bpf_map_lookup_elem(&inpod_pod_ips6, (void *)a);
}

/* Is `a` the pod's probe source (IPv4's in inpod_pod, IPv6's in inpod_pod6)? */
static __always_inline int inpod_is_probe(const __u32 *a, const struct inpod_pod *pod, const struct inpod_pod6 *pod6)
{
	if (inpod_mapped(a))
		return a[3] == pod->probe_ip4;
	return pod6 && inpod_ip_eq(a, pod6->probe_ip6);
}

static __always_inline int inpod_port_excluded(__u64 netns, __u16 port, __u8 dir)
{
	struct inpod_port_key k = { .netns = netns, .port = port, .dir = dir };

	return bpf_map_lookup_elem(&inpod_port_excl, &k) != NULL;
}

static __always_inline int inpod_cidr_excluded(__u64 netns, const __u32 *a)
{
	if (inpod_mapped(a)) {
		struct inpod_cidr_key k = { .prefixlen = 64 + 32, .addr = a[3] };

		__builtin_memcpy(k.netns, &netns, sizeof(k.netns));
		return bpf_map_lookup_elem(&inpod_cidr_excl, &k) != NULL;
	} else {
		struct inpod_cidr6_key k = { .prefixlen = 64 + 128 };

		__builtin_memcpy(k.netns, &netns, sizeof(k.netns));
		k.addr[0] = a[0];
		k.addr[1] = a[1];
		k.addr[2] = a[2];
		k.addr[3] = a[3];
		return bpf_map_lookup_elem(&inpod_cidr6_excl, &k) != NULL;
	}
}

#endif /* INPOD_COMMON_H */
