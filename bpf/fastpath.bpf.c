// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The kernel fast path: bytes arriving on one of two spliced proxy sockets leave through the
 * other without crossing into userspace.
 *
 * Two SOCKHASHes, so that switching a connection to the kernel never races its own bytes:
 *   inpod_fp_dsts  every spliced socket, as a redirect target. No program is attached, so
 *                  joining it changes nothing for the socket's own reads.
 *   inpod_fp_srcs  the stream verdict program is attached here. A socket joins it last, once
 *                  its peer is already a target and its flow names that peer; from then on
 *                  every skb it receives (including any queued before) is redirected.
 * The maps are not pinned: they belong to the proxy process, and its sockets leave them when
 * closed (or all at once when the process exits).
 *
 * Back-pressure: a redirected skb leaves the source socket's accounting at once and waits in the
 * peer's psock queue, so nothing would stop a fast sender filling kernel memory behind a slow
 * receiver (measured: 400 MiB in 0.1 s). The program reads how much the peer's socket has taken
 * (tcp_sock: acked + queued) and stops redirecting once more than INPOD_FP_MAX_INFLIGHT is on
 * its way: from then on skbs stay with the source socket (SK_PASS), in order and charged to its
 * receive buffer, so TCP's window closes; the proxy is told through a ring buffer and relays the
 * rest of that direction itself, with Node's back-pressure.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "types.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define INPOD_FP_MAX_SOCKS 65536

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, INPOD_FP_MAX_SOCKS);
	__type(key, __u64);
	__type(value, __u64);
} inpod_fp_dsts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, INPOD_FP_MAX_SOCKS);
	__type(key, __u64);
	__type(value, __u64);
} inpod_fp_srcs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, INPOD_FP_MAX_SOCKS);
	__type(key, __u64);
	__type(value, struct inpod_fp_flow);
} inpod_fp_flows SEC(".maps");

/* socket cookies of flows just throttled, for the proxy */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} inpod_fp_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, INPOD_FP_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} inpod_fp_stats SEC(".maps");

static __always_inline void fp_add(enum inpod_fp_stat idx, __u64 n)
{
	__u32 key = idx;
	__u64 *v = bpf_map_lookup_elem(&inpod_fp_stats, &key);

	if (v)
		*v += n;
}

/* More than INPOD_FP_MAX_INFLIGHT redirected bytes not yet taken by the peer's socket? */
static __always_inline int fp_peer_behind(struct inpod_fp_flow *flow)
{
	struct bpf_sock *sk = bpf_map_lookup_elem(&inpod_fp_dsts, &flow->peer);
	struct tcp_sock *tp;
	__u64 taken;
	int behind = 0;

	if (!sk)
		return 0; /* the redirect below fails and counts the drop */
	tp = bpf_skc_to_tcp_sock(sk);
	if (tp) {
		/* the same sum as the proxy's tcpWritten(): acked + still queued */
		taken = tp->bytes_acked + (__u32)(tp->write_seq - tp->snd_una) - flow->peer_base;
		behind = flow->bytes > taken + INPOD_FP_MAX_INFLIGHT;
	}
	bpf_sk_release(sk);
	return behind;
}

SEC("sk_skb/stream_verdict")
int inpod_fp_verdict(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct inpod_fp_flow *flow = bpf_map_lookup_elem(&inpod_fp_flows, &cookie);
	__u32 len = skb->len;

	/*
	 * An skb without payload (the one carrying a FIN) must not be redirected: the peer's
	 * worker would "send" 0 bytes, take it for a broken pipe and stop. The FIN itself is seen
	 * by the proxy, which half-closes the peer once the bytes before it have drained.
	 */
	if (!len)
		return SK_DROP;
	/* SK_PASS only once throttled (for good): before, a passed skb would reach the proxy out of order. */
	if (!flow)
		goto drop;
	if (flow->throttled)
		return SK_PASS;
	if (fp_peer_behind(flow)) {
		flow->throttled = 1;
		if (bpf_ringbuf_output(&inpod_fp_events, &cookie, sizeof(cookie), 0))
			fp_add(INPOD_FP_STAT_LOST, 1); /* the proxy sweeps the flows instead */
		fp_add(INPOD_FP_STAT_THROTTLE, 1);
		return SK_PASS;
	}
	if (bpf_sk_redirect_hash(skb, &inpod_fp_dsts, &flow->peer, 0) != SK_PASS)
		goto drop;
	__sync_fetch_and_add(&flow->bytes, len);
	__sync_fetch_and_add(&flow->segs, 1);
	fp_add(INPOD_FP_STAT_BYTES, len);
	fp_add(INPOD_FP_STAT_SEGS, 1);
	return SK_PASS;
drop:
	fp_add(INPOD_FP_STAT_DROP, 1);
	return SK_DROP;
}
