/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The maps of the proxy's fast path (fastpath.bpf.c), with the conventions of maps.h but NOT
 * pinned: the proxy process loads them (ts/proxy/fastpath/maps.ts) and owns them; its spliced
 * sockets leave the SOCKHASHes when they close, and everything goes when the process exits.
 * Names stay under 16 bytes (BPF_OBJ_NAME_LEN). "join" and "cleanup" are the proxy's
 * (fastpath/maps.ts join(), fastpath/splice.ts at a connection's end); "cookie" is a socket
 * cookie here.
 */
#ifndef INPOD_FASTPATH_MAPS_H
#define INPOD_FASTPATH_MAPS_H

#include "types.h"

/* spliced sockets at once, per map (two per connection) */
#define INPOD_FP_MAX_SOCKS 65536

/*
 * inpod_fp_dsts: every spliced socket, as a redirect target. No program is attached, so joining
 * it changes nothing for the socket's own reads.
 *   cookie -> the socket
 *   written: join (both sockets of a connection, first)
 *   read:    the verdict program (bpf_sk_redirect_hash to a flow's peer; the peer's tcp_sock)
 *   lives:   until the socket closes (the kernel removes it)
 */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, INPOD_FP_MAX_SOCKS);
	__type(key, __u64);
	__type(value, __u64);
} inpod_fp_dsts SEC(".maps");

/*
 * inpod_fp_srcs: the sockets whose received bytes the verdict program redirects (it is attached
 * to this map). A socket joins last, once its peer is a target and its flow names the peer; from
 * then on every skb it receives, including any queued before, goes through the program.
 *   cookie -> the socket
 *   written: join (per direction, last)
 *   read:    the kernel (stream verdict on the socket's receive path)
 *   lives:   until the socket closes (the kernel removes it)
 */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, INPOD_FP_MAX_SOCKS);
	__type(key, __u64);
	__type(value, __u64);
} inpod_fp_srcs SEC(".maps");

/*
 * inpod_fp_flows: one per spliced socket, what leaves through its peer.
 *   cookie -> struct inpod_fp_flow (the peer's cookie, bytes and skbs redirected, the peer's
 *             baseline, throttled)
 *   written: join (peer, baseline); the verdict program (counts; throttled, once, for good)
 *   read:    the verdict program; the proxy (drain before half-close, hand-back, byte counts)
 *   lives:   from join to cleanup (deleted by the proxy, also when the join is refused)
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, INPOD_FP_MAX_SOCKS);
	__type(key, __u64);
	__type(value, struct inpod_fp_flow);
} inpod_fp_flows SEC(".maps");

/*
 * inpod_fp_events: flows just throttled, for the proxy (a ring buffer).
 *   record: the socket cookie (__u64)
 *   written: the verdict program, when it stops redirecting a flow
 *   read:    the proxy's watcher thread (fastpath/watcher.ts), which hands the direction back
 *   lives:   until read; a full buffer counts INPOD_FP_STAT_LOST and the proxy sweeps the flows
 */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} inpod_fp_events SEC(".maps");

/*
 * inpod_fp_stats: the fast path as a whole, counted per CPU (inpod_counter_add, counters.h).
 *   enum inpod_fp_stat -> count (one per CPU; a reader sums them)
 *   written: the verdict program
 *   read:    the proxy (inpod_fastpath_* metrics, counters())
 *   lives:   as long as the proxy process
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, INPOD_FP_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} inpod_fp_stats SEC(".maps");

#endif /* INPOD_FASTPATH_MAPS_H */
