/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Structs shared by the eBPF programs and userspace (addon + TypeScript encoders).
 * Fixed width, explicit padding: the addon static_asserts these sizes and exports
 * {sizeof, offsetof} so the TypeScript encoders are checked against them in tests.
 * Addresses and the port in inpod_addr are network order; other ports are host order (ports.h).
 * Per-connection state holds either family in 16 bytes: an IPv6 address, or an IPv4 one as
 * ::ffff:a.b.c.d, the form a dual-stack socket gives it, so one tuple and one code path serve
 * both families and a connection has the same tuple whichever end is dual-stack.
 */
#ifndef INPOD_TYPES_H
#define INPOD_TYPES_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* Load-time settings (.rodata, config.h): Istio's ports and marks, written by the loader from
 * ts/istio.ts (MARKS, PORTS) before load. Ports host order. */
struct inpod_config {
	__u32 proxy_mark;    /* SO_MARK of the proxy's own sockets: never captured */
	__u32 spoof_mark;    /* re-mark for the proxy's transparent upstream sockets */
	__u16 outbound_port; /* the proxy's outbound listener (connect4 target) */
	__u16 inbound_port;  /* the proxy's inbound plaintext listener (sk_lookup target) */
	__u16 hbone_port;    /* the proxy's HBONE listener: never steered */
	__u16 dns_port;      /* the proxy's DNS listener (DNS capture target) */
};

/* inpod_enrolled value: one per enrolled pod netns (key: netns cookie). */
#define INPOD_POD_DNS_CAPTURE 0x1
struct inpod_pod {
	__u32 ip4;       /* the pod's (first) IPv4, network order */
	__u32 probe_ip4; /* kubelet probe source after SNAT, network order */
	__u32 flags;     /* INPOD_POD_* */
	__u32 _pad;
};

/* inpod_pod6 value: the IPv6 side of an enrolled pod that has IPv6 (key: netns cookie). */
struct inpod_pod6 {
	__u32 ip6[4];       /* the pod's (first) IPv6, network order */
	__u32 probe_ip6[4]; /* kubelet probe source after SNAT (Istio's fd16:9254:7127:1337:ffff:ffff:ffff:ffff) */
};

/* inpod_port_excl key: a port the pod excludes from capture in one direction. */
#define INPOD_DIR_IN 1
#define INPOD_DIR_OUT 2
struct inpod_port_key {
	__u64 netns;
	__u16 port; /* host order */
	__u8 dir;   /* INPOD_DIR_* */
	__u8 _pad[5];
};

/* inpod_cidr_excl key (LPM trie): prefixlen counts 64 netns-cookie bits + the CIDR's bits. */
struct inpod_cidr_key {
	__u32 prefixlen;
	__u8 netns[8]; /* netns cookie, as stored in memory (little endian here) */
	__u32 addr;    /* network order */
};

/* inpod_cidr6_key key (LPM trie): prefixlen counts 64 netns-cookie bits + the CIDR's bits. */
struct inpod_cidr6_key {
	__u32 prefixlen;
	__u8 netns[8]; /* netns cookie, as stored in memory (little endian here) */
	__u32 addr[4]; /* network order */
};

/* A connection as its client sees it, inside one netns. Addresses IPv6 or IPv4-mapped; ports host order. */
struct inpod_tuple {
	__u64 netns;
	__u32 sip[4];
	__u32 dip[4];
	__u16 sport;
	__u16 dport;
	__u32 _pad;
};

/* A socket address of either family (IPv4 as ::ffff:a.b.c.d). */
struct inpod_addr {
	__u32 ip[4]; /* network order */
	__u16 port;  /* network order */
	__u16 _pad;
};

/*
 * inpod_fp_flows value: one per spliced socket (key: its socket cookie). The proxy writes
 * `peer` before the socket joins inpod_fp_srcs; the stream verdict program adds what it
 * redirects, so telemetry and the drain-before-half-close check read exact byte counts.
 */
struct inpod_fp_flow {
	__u64 peer;      /* socket cookie of the socket the bytes go out of */
	__u64 bytes;     /* bytes redirected so far */
	__u64 segs;      /* skbs redirected so far */
	__u64 peer_base; /* the peer's acked + queued bytes when the flow began (the proxy's tcpWritten) */
	__u32 throttled; /* set by the program when the peer fell behind: bytes now stay with the socket */
	__u32 _pad;
};

/* The fast path's load-time settings (.rodata of fastpath.bpf.c, inpod_fp_cfg), written by the
 * proxy (ts/proxy/fastpath/maps.ts) before load. */
struct inpod_fp_config {
	/* In-flight bytes (redirected, not yet taken by the peer's socket) past which the program
	 * stops redirecting a flow: its later skbs stay with the source socket (SK_PASS), charged to
	 * its receive buffer, so TCP's window closes on the sender; the proxy relays the rest. */
	__u64 max_inflight;
};

/* inpod_fp_stats indexes (per-CPU counters of the fast path as a whole). */
enum inpod_fp_stat {
	INPOD_FP_STAT_BYTES = 0, /* bytes redirected between spliced sockets */
	INPOD_FP_STAT_SEGS,      /* skbs redirected */
	INPOD_FP_STAT_DROP,      /* skbs with no flow or no peer socket: dropped */
	INPOD_FP_STAT_THROTTLE,  /* flows stopped because their peer fell behind */
	INPOD_FP_STAT_LOST,      /* throttle events the ring buffer had no room for */
	INPOD_FP_STAT_MAX,
};

/* inpod_stats indexes (per-CPU counters, summed by userspace). */
enum inpod_stat {
	INPOD_STAT_OUT_REDIRECT = 0, /* connect4/6 sent to the outbound listener */
	INPOD_STAT_DNS_REDIRECT,     /* connect/sendmsg sent to the DNS listener */
	INPOD_STAT_OUT_BYPASS,       /* enrolled, but exempt (mark, loopback, own IP, exclusion) */
	INPOD_STAT_IN_STEER,         /* sk_lookup assigned the inbound listener */
	INPOD_STAT_IN_BYPASS,        /* enrolled, but exempt (HBONE port, probe, loopback, own, exclusion) */
	INPOD_STAT_IN_NO_LISTENER,   /* enrolled, no inbound listener: dropped (fail closed) */
	INPOD_STAT_LISTENER_ADD,     /* sockops registered an inbound listener */
	INPOD_STAT_ORIG_DST,         /* getsockopt(SO_ORIGINAL_DST) answered */
	INPOD_STAT_V6_DENY,          /* sk_lookup: a SYN to a link-local IPv6 address of an enrolled netns, dropped */
	INPOD_STAT_MAX,
};

#endif /* INPOD_TYPES_H */
