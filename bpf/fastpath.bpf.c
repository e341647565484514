// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The kernel fast path: bytes arriving on one of two spliced proxy sockets leave through the
 * other without crossing into userspace. Its maps are in fastpath_maps.h (not pinned: they
 * belong to the proxy process); its one setting, in .rodata, is written by the proxy at load.
 *
 * Two SOCKHASHes, so that switching a connection to the kernel never races its own bytes: every
 * spliced socket is first a redirect target (inpod_fp_dsts, no program), and joins the map the
 * verdict program is attached to (inpod_fp_srcs) only once its peer is a target and its flow
 * names that peer.
 *
 * Back-pressure: a redirected skb leaves the source socket's accounting at once and waits in the
 * peer's psock queue, so nothing would stop a fast sender filling kernel memory behind a slow
 * receiver (measured: 400 MiB in 0.1 s). The program reads how much the peer's socket has taken
 * (tcp_sock: acked + queued) and stops redirecting once more than inpod_fp_cfg.max_inflight is on
 * its way: from then on skbs stay with the source socket (SK_PASS), in order and charged to its
 * receive buffer, so TCP's window closes; the proxy is told through a ring buffer and relays the
 * rest of that direction itself, with Node's back-pressure.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "types.h"
#include "counters.h"
#include "fastpath_maps.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/*
 * Written by the proxy (ts/proxy/fastpath/maps.ts) between open and load; libbpf freezes .rodata
 * before the program loads. Left at zero, every flow would be handed back to the proxy at its
 * second skb: correct, never fast (the proxy refuses to load with zero).
 */
const volatile struct inpod_fp_config inpod_fp_cfg = {};

/* More than max_inflight redirected bytes not yet taken by the peer's socket? */
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
		behind = flow->bytes > taken + inpod_fp_cfg.max_inflight;
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
			inpod_counter_add(&inpod_fp_stats, INPOD_FP_STAT_LOST, 1); /* the proxy sweeps the flows instead */
		inpod_counter_add(&inpod_fp_stats, INPOD_FP_STAT_THROTTLE, 1);
		return SK_PASS;
	}
	if (bpf_sk_redirect_hash(skb, &inpod_fp_dsts, &flow->peer, 0) != SK_PASS)
		goto drop;
	__sync_fetch_and_add(&flow->bytes, len);
	__sync_fetch_and_add(&flow->segs, 1);
	inpod_counter_add(&inpod_fp_stats, INPOD_FP_STAT_BYTES, len);
	inpod_counter_add(&inpod_fp_stats, INPOD_FP_STAT_SEGS, 1);
	return SK_PASS;
drop:
	inpod_counter_add(&inpod_fp_stats, INPOD_FP_STAT_DROP, 1);
	return SK_DROP;
}
