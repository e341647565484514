// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sockops, attached at the same cgroup as connect4. Keeps the per-connection tuple entries
 * (maps.h) alive exactly from a connection's SYN to the end of its handshake.
 *
 *  TCP_LISTEN_CB   a socket listening on the inbound port in an enrolled netns becomes
 *                  that netns's newest inbound listener (SOCKHASH, keyed by netns cookie; two
 *                  slots, so the one before it stays registered while a proxy rolls: maps.h).
 *                  The entry vanishes when the socket closes. No help from the proxy is needed.
 *  TCP_CONNECT_CB  (client, before its SYN, ports assigned) a connection to the outbound port
 *                  records its original destination by client tuple; a connection to one of the
 *                  pod's own IPs from a foreign source (the proxy's transparent upstream) is
 *                  recorded so sk_lookup lets it reach its real listener. So is a connection
 *                  from a socket of the node's own netns (inpod_host_ns: kubelet) to an enrolled
 *                  pod, keyed by the pod's netns: kubelet's probes reach the app uncaptured, as
 *                  istio-cni's host SNAT to the probe source makes them. Either way the socket
 *                  asks for state callbacks.
 *  PASSIVE_ESTABLISHED_CB (server, handshake done, before accept() returns) the proxy's
 *                  accepted socket on the outbound port takes the original destination into
 *                  its own storage, where getsockopt finds it; the tuple entries are deleted.
 *  STATE_CB        the client reaching TCP_CLOSE deletes what is left of its entries: a SYN
 *                  that was refused, dropped or timed out never has a server side.
 *
 * Why only the node's *local sockets* qualify: a packet the node forwards (from another node, or
 * from a pod, bridged or routed, masqueraded to the node's address or not) is never the SYN of a
 * socket of the host netns, so no TCP_CONNECT_CB recorded its tuple and sk_lookup captures it.
 * That is what istio-cni's `-m owner --socket-exists` tells apart (cni/pkg/iptables/iptables.go,
 * AppendHostRules). Everything in the host netns counts as the node, as there: kubelet, and
 * hostNetwork pods.
 *
 * Both families take one path: a connection's tuple holds 16-byte addresses, IPv4 as
 * ::ffff:a.b.c.d (types.h). An IPv4 connection is read from the IPv4 fields whether its socket is
 * AF_INET or a dual-stack AF_INET6 one with an IPv4-mapped peer (the kernel keeps its IPv4
 * addresses there in both, and a mapped socket's IPv6 source is only set after its connect
 * returns), so the tuple is the same whichever end is dual-stack; a native IPv6 connection is
 * read from the IPv6 fields. A listener is taken when it accepts IPv4: AF_INET, or AF_INET6
 * without IPV6_V6ONLY (ztunnel listens on [::] by default: istio/ztunnel src/config.rs,
 * bind_wildcard), which takes the pod's IPv6 too.
 */
#include "common.h"
#include "config.h"
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The connection as its client sees it. `client`: the callback runs on the client's socket. */
static __always_inline void conn_tuple(struct bpf_sock_ops *skops, __u64 netns, int client, struct inpod_tuple *t)
{
	__u32 lip[4], rip[4];
	__u32 l6[4] = { skops->local_ip6[0], skops->local_ip6[1], skops->local_ip6[2], skops->local_ip6[3] };
	__u32 r6[4] = { skops->remote_ip6[0], skops->remote_ip6[1], skops->remote_ip6[2], skops->remote_ip6[3] };
	__u16 lport = inpod_port_host(skops->local_port), rport = inpod_port_net32(skops->remote_port);

	inpod_conn_addrs(skops->family == AF_INET, 1, skops->local_ip4, skops->remote_ip4, l6, r6, lip, rip);
	t->netns = netns;
	__builtin_memcpy(t->sip, client ? lip : rip, sizeof(lip));
	__builtin_memcpy(t->dip, client ? rip : lip, sizeof(lip));
	t->sport = client ? lport : rport;
	t->dport = client ? rport : lport;
}

/* The proxy's outbound listener on the loopback of the tuple's family. */
static __always_inline int is_outbound_listener(const struct inpod_tuple *t)
{
	__u32 lo[4];

	inpod_loopback_of(lo, t->dip);
	return inpod_ip_eq(t->dip, lo) && t->dport == inpod_cfg.outbound_port;
}

/* Client, before the SYN. Returns 1 if an entry was written (its removal is then due). */
static __always_inline int record_connect(struct bpf_sock *sk, __u64 netns, const struct inpod_tuple *t)
{
	struct inpod_addr *orig;
	__u64 *owner;
	__u8 one = 1;

	if (is_outbound_listener(t)) {
		if (!sk)
			return 0;
		orig = bpf_sk_storage_get(&inpod_sk_dst, sk, 0, 0);
		/* No room: the proxy finds no original destination and refuses the connection. */
		return orig && !bpf_map_update_elem(&inpod_syn_dst, t, orig, BPF_ANY);
	}
	owner = inpod_owner(t->dip);
	if (!owner || *owner != netns)
		return 0;
	/* From a pod IP (or loopback), sk_lookup lets the SYN through without an entry. */
	owner = inpod_owner(t->sip);
	if ((owner && *owner == netns) || inpod_is_loopback(t->sip))
		return 0;
	/* No room: the SYN finds no entry and is steered to the proxy (captured, never around it). */
	return !bpf_map_update_elem(&inpod_own_conn, t, &one, BPF_ANY);
}

/* The node's netns? Its cookie is 0 when none was named: then nothing is. */
static __always_inline int is_host_netns(__u64 netns)
{
	__u32 key = 0;
	__u64 *host = bpf_map_lookup_elem(&inpod_host_ns, &key);

	return host && *host && *host == netns;
}

/* Client in the node's netns, before the SYN: a connection to an enrolled pod's IP is recorded
 * for that pod's netns (where sk_lookup looks). Returns 1 if an entry was written. */
static __always_inline int record_node_connect(struct inpod_tuple *t)
{
	__u64 *owner = inpod_owner(t->dip);
	__u8 one = 1;

	if (!owner || !bpf_map_lookup_elem(&inpod_enrolled, owner))
		return 0;
	t->netns = *owner;
	/* No room: the probe is steered to the proxy like any other SYN (captured, never around it). */
	return !bpf_map_update_elem(&inpod_own_conn, t, &one, BPF_ANY);
}

/* Server, handshake done: the entries have served their purpose. */
static __always_inline void handshake_done(struct bpf_sock *sk, const struct inpod_tuple *t)
{
	struct inpod_addr *orig, *kept;

	if (!is_outbound_listener(t)) {
		bpf_map_delete_elem(&inpod_own_conn, t);
		return;
	}
	orig = bpf_map_lookup_elem(&inpod_syn_dst, t);
	if (!orig)
		return;
	if (sk) {
		kept = bpf_sk_storage_get(&inpod_sk_dst, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (kept)
			*kept = *orig;
	}
	bpf_map_delete_elem(&inpod_syn_dst, t);
}

/* Does this listener accept IPv4 connections? A v6-only one must not become the inbound listener:
 * sk_lookup could not assign it an IPv4 SYN (it would drop them all, the AF_INET one unused).
 * Binding a native IPv6 address sets IPV6_V6ONLY too. */
static __always_inline int ipv4_listener(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	struct tcp6_sock *tp6;

	if (skops->family == AF_INET)
		return 1;
	if (skops->family != AF_INET6 || !sk)
		return 0;
	tp6 = bpf_skc_to_tcp6_sock(sk);
	return tp6 && !BPF_CORE_READ_BITFIELD(&tp6->tcp.inet_conn.icsk_inet.sk.__sk_common, skc_ipv6only);
}

/* The new inbound listener takes the slot that does not hold the newest, replacing the older of
 * the two registered (maps.h, inpod_inbound); then it is the newest. */
static __always_inline long register_inbound(struct bpf_sock_ops *skops, __u64 netns)
{
	__u32 *newest = bpf_map_lookup_elem(&inpod_inbound_slot, &netns);
	/* none recorded: slot 0 is the newest (it may hold a listener from before the slots) */
	__u32 slot = newest && *newest == 1 ? 0 : 1;
	long err;

	err = slot ? bpf_sock_hash_update(skops, &inpod_inbound1, &netns, BPF_ANY)
		   : bpf_sock_hash_update(skops, &inpod_inbound, &netns, BPF_ANY);
	if (!err)
		bpf_map_update_elem(&inpod_inbound_slot, &netns, &slot, BPF_ANY);
	return err;
}

SEC("sockops")
int inpod_sockops(struct bpf_sock_ops *skops)
{
	struct inpod_tuple t = {};
	__u64 netns;

	INPOD_REQUIRE_CONFIG();
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_LISTEN_CB:
		if (inpod_port_host(skops->local_port) != inpod_cfg.inbound_port || !ipv4_listener(skops))
			break;
		netns = bpf_get_netns_cookie(skops);
		if (!bpf_map_lookup_elem(&inpod_enrolled, &netns))
			break;
		if (!register_inbound(skops, netns))
			inpod_count(INPOD_STAT_LISTENER_ADD);
		break;
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		netns = bpf_get_netns_cookie(skops);
		conn_tuple(skops, netns, 1, &t);
		if (bpf_map_lookup_elem(&inpod_enrolled, &netns)) {
			if (!record_connect(skops->sk, netns, &t))
				break;
		} else if (!is_host_netns(netns) || !record_node_connect(&t)) {
			break;
		}
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		/* No enrolled check: a pod unenrolled meanwhile still gets its entries removed. */
		conn_tuple(skops, bpf_get_netns_cookie(skops), 0, &t);
		handshake_done(skops->sk, &t);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		/* args[1] is the new state; ports and addresses are still set at TCP_CLOSE. */
		if (skops->args[1] != BPF_TCP_CLOSE)
			break;
		netns = bpf_get_netns_cookie(skops);
		conn_tuple(skops, netns, 1, &t);
		/* Not an enrolled netns: a node socket, whose entry is the destination pod's (by the
		 * enrollment it has now: unenroll purged the entries of a pod it removed). Decided
		 * without inpod_host_ns, so a host netns renamed meanwhile leaves no entry behind. */
		if (!bpf_map_lookup_elem(&inpod_enrolled, &netns)) {
			__u64 *owner = inpod_owner(t.dip);

			if (!owner)
				break;
			t.netns = *owner;
		}
		if (is_outbound_listener(&t))
			bpf_map_delete_elem(&inpod_syn_dst, &t);
		else
			bpf_map_delete_elem(&inpod_own_conn, &t);
		break;
	}
	return 1;
}
