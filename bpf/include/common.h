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
#define SO_ORIGINAL_DST 80
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

static __always_inline int inpod_port_excluded(__u64 netns, __u16 port, __u8 dir)
{
	struct inpod_port_key k = { .netns = netns, .port = port, .dir = dir };

	return bpf_map_lookup_elem(&inpod_port_excl, &k) != NULL;
}

static __always_inline int inpod_cidr_excluded(__u64 netns, __u32 ip_be)
{
	struct inpod_cidr_key k = { .prefixlen = 64 + 32, .addr = ip_be };

	__builtin_memcpy(k.netns, &netns, sizeof(k.netns));
	return bpf_map_lookup_elem(&inpod_cidr_excl, &k) != NULL;
}

#endif /* INPOD_COMMON_H */
