// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sockops, attached at the same cgroup as connect4. Needs no cb flags: the callbacks used here
 * are delivered unconditionally.
 *
 *  TCP_LISTEN_CB   a socket listening on the inbound port (15006) in an enrolled netns becomes
 *                  that netns's inbound listener (SOCKHASH, keyed by netns cookie). The entry
 *                  vanishes when the socket closes; a new listener replaces it. No help from the
 *                  proxy is needed.
 *  TCP_CONNECT_CB  (before the SYN, ports assigned) a connection the proxy's listener will see
 *                  on the outbound port gets its original destination by client tuple, for
 *                  SO_ORIGINAL_DST; a connection to one of the pod's own IPs is recorded so
 *                  sk_lookup lets it reach its real listener.
 */
#include "common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("sockops")
int inpod_sockops(struct bpf_sock_ops *skops)
{
	__u64 netns, cookie;

	if (skops->family != AF_INET)
		return 1;
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_LISTEN_CB:
		if (skops->local_port != inpod_cfg.inbound_port)
			break;
		netns = bpf_get_netns_cookie(skops);
		if (!bpf_map_lookup_elem(&inpod_enrolled, &netns))
			break;
		if (!bpf_sock_hash_update(skops, &inpod_inbound, &netns, BPF_ANY))
			inpod_count(INPOD_STAT_LISTENER_ADD);
		break;
	case BPF_SOCK_OPS_TCP_CONNECT_CB: {
		struct inpod_tuple t = {};
		struct inpod_addr *orig;
		__u64 *owner;
		__u32 dip = skops->remote_ip4;

		netns = bpf_get_netns_cookie(skops);
		if (!bpf_map_lookup_elem(&inpod_enrolled, &netns))
			break;
		t.netns = netns;
		t.sip = skops->local_ip4;
		t.dip = dip;
		t.sport = (__u16)skops->local_port;
		t.dport = (__u16)bpf_ntohl(skops->remote_port);
		if (dip == bpf_htonl(INPOD_LOOPBACK4) && t.dport == inpod_cfg.outbound_port) {
			cookie = bpf_get_socket_cookie(skops);
			orig = bpf_map_lookup_elem(&inpod_ck_orig, &cookie);
			if (orig) {
				struct inpod_addr copy = *orig;

				bpf_map_update_elem(&inpod_tup_orig, &t, &copy, BPF_ANY);
			}
			break;
		}
		owner = bpf_map_lookup_elem(&inpod_pod_ips, &dip);
		if (owner && *owner == netns) {
			__u8 one = 1;

			bpf_map_update_elem(&inpod_local, &t, &one, BPF_ANY);
		}
		break;
	}
	}
	return 1;
}
