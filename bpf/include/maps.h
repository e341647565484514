/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Every map of the capture programs, pinned by name under the pin root given at open time, so
 * the separately loaded hook objects share them and they outlive the process that loaded them
 * (restart path). Names stay under 16 bytes (BPF_OBJ_NAME_LEN). Userspace opens them by pin in
 * ts/redirect/ebpf.ts (the agent, or `inpod redirect` run as its own process).
 *
 * Each map says what it holds (key -> value), who writes it, who reads it and how long an entry
 * lives. "enroll" and "unenroll" are ts/redirect/ebpf.ts; "cookie" is the netns cookie.
 *
 * The proxy's fast path declares its maps the same way in fastpath_maps.h, but not pinned: they
 * belong to the proxy process. They cannot live here: libbpf creates every map an object
 * declares, used or not, and pins it by name, so the fast path's object would create (or take
 * over) the capture maps' pins if it included this header.
 */
#ifndef INPOD_MAPS_H
#define INPOD_MAPS_H

#include "types.h"

#define INPOD_MAX_PODS 4096
/* connections between their SYN and the end of their handshake, node-wide, per map */
#define INPOD_MAX_HANDSHAKES 65536

/*
 * inpod_enrolled: the enrolled pod netns, the gate of every capture decision.
 *   cookie -> struct inpod_pod (first pod IPv4, probe source, INPOD_POD_* flags)
 *   written: enroll (last, once the pod's other entries are in), unenroll (deleted first)
 *   read:    connect4/6, sendmsg4/6, sockops (listen, connect), getsockopt, sk_lookup; isEnrolled, list
 *   lives:   from enroll to unenroll (or uninstall)
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, INPOD_MAX_PODS);
	__type(key, __u64);
	__type(value, struct inpod_pod);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_enrolled SEC(".maps");

/*
 * inpod_pod_ips: which netns an address belongs to (sk_lookup cannot read the netns cookie).
 *   pod IPv4 (network order) -> cookie, one entry per address of the pod
 *   written: enroll, unenroll
 *   read:    sk_lookup (the pod a SYN is for; a source of the same pod), connect4/6 and sockops
 *            (a destination that is one of the pod's own addresses; the pod a node socket
 *            connects to); list
 *   lives:   from enroll to unenroll
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, INPOD_MAX_PODS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_pod_ips SEC(".maps");

/*
 * inpod_pod6: the IPv6 side of an enrolled pod that has IPv6 addresses (dual-stack, IPv6-only).
 *   cookie -> struct inpod_pod6 (first pod IPv6, IPv6 probe source)
 *   written: enroll (before the inpod_enrolled gate), unenroll
 *   read:    connect6, sendmsg6, sk_lookup (the pod's own IPv6, the probe source); list
 *   lives:   from enroll to unenroll; none for an IPv4-only pod (its IPv6 is captured all the same)
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, INPOD_MAX_PODS);
	__type(key, __u64);
	__type(value, struct inpod_pod6);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_pod6 SEC(".maps");

/*
 * inpod_pod_ips6: inpod_pod_ips for IPv6 addresses.
 *   pod IPv6 (16 bytes, network order) -> cookie, one entry per IPv6 address of the pod
 *   written, read, lives: as inpod_pod_ips
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, INPOD_MAX_PODS);
	__type(key, __u32[4]);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_pod_ips6 SEC(".maps");

/*
 * inpod_host_ns: the node's own network namespace (the host's, where kubelet's sockets live).
 *   0 -> its cookie; 0 when none was named (then every connection from the node is captured)
 *   written: install (ts/redirect/ebpf.ts, from the agent's --host-netns, /proc/1/ns/net by default)
 *   read:    sockops at TCP_CONNECT_CB (a node socket connecting to an enrolled pod: a kubelet probe)
 *   lives:   from install to uninstall; read-only to the programs
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_RDONLY_PROG);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_host_ns SEC(".maps");

/*
 * inpod_port_excl: ports a pod excludes from capture, per direction.
 *   struct inpod_port_key {cookie, port (host order), INPOD_DIR_IN | INPOD_DIR_OUT} -> 1
 *   written: enroll (the pod's set replaced), unenroll
 *   read:    sk_lookup (inbound), connect4/6 (outbound); list
 *   lives:   from enroll to unenroll
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, INPOD_MAX_PODS * 4);
	__type(key, struct inpod_port_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_port_excl SEC(".maps");

/*
 * inpod_cidr_excl: outbound destination CIDRs a pod excludes from capture (longest prefix match).
 *   struct inpod_cidr_key {64 cookie bits + the CIDR's prefix, cookie, IPv4} -> 1
 *   written: enroll (the pod's set replaced), unenroll
 *   read:    connect4/6; list
 *   lives:   from enroll to unenroll
 */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, INPOD_MAX_PODS * 4);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct inpod_cidr_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_cidr_excl SEC(".maps");

/*
 * inpod_cidr6_excl: inpod_cidr_excl for IPv6 CIDRs.
 *   struct inpod_cidr6_key {64 cookie bits + the CIDR's prefix, cookie, IPv6} -> 1
 *   written, read, lives: as inpod_cidr_excl
 */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, INPOD_MAX_PODS * 4);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct inpod_cidr6_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_cidr6_excl SEC(".maps");

/*
 * inpod_inbound, inpod_inbound1: the proxy's inbound plaintext listeners of each enrolled netns
 * (SOCKHASH, two slots): the newest and the one before it. While a proxy rolls, two proxies
 * listen on the port (SO_REUSEPORT; sk_lookup's assign picks within their group); whichever of
 * the two closes first, the old one draining or the new one failing, the other still takes the
 * SYNs. One slot alone lost the older listener's entry to the newer one, and the newer one's
 * close left the netns with none although the older one still listened.
 *   cookie -> the listening socket (on inpod_cfg.inbound_port, accepting IPv4: AF_INET, or a
 *   dual-stack AF_INET6 one, which takes the pod's IPv6 SYNs too; an AF_INET one cannot, and
 *   sk_lookup drops those: fail closed)
 *   written: sockops at TCP_LISTEN_CB, with no help from the proxy, into the slot that does not
 *            hold the newest (inpod_inbound_slot), replacing the older of the two
 *   read:    sk_lookup (bpf_sk_assign of an inbound SYN): the newest, else the other
 *   lives:   until the listener closes (the kernel removes it) or a listener two newer replaces
 *            it; no listener in an enrolled netns means the SYN is dropped (fail closed)
 */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, INPOD_MAX_PODS);
	__type(key, __u64);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_inbound SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, INPOD_MAX_PODS);
	__type(key, __u64);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_inbound1 SEC(".maps");

/*
 * inpod_inbound_slot: which inbound slot holds a netns's newest listener.
 *   cookie -> 0 (inpod_inbound) or 1 (inpod_inbound1); none: slot 0 is the newest
 *   written: sockops at TCP_LISTEN_CB; deleted at unenroll
 *   read:    sockops (where the next listener goes), sk_lookup (which slot first)
 *   lives:   from the netns's first inbound listener to unenroll
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, INPOD_MAX_PODS);
	__type(key, __u64);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_inbound_slot SEC(".maps");

/*
 * Per-connection state. None of it may outlive its connection: an entry left behind would answer
 * for a later connection that reuses the tuple (sk_lookup would hand that SYN to the app, around
 * the proxy). So per-socket state lives in socket storage, freed with the socket, and the two
 * tuple maps hold a connection only from its SYN until its handshake is done (sockops deletes the
 * entry at the server side's PASSIVE_ESTABLISHED_CB, and at the client's TCP_CLOSE when there is
 * no server side: refused, dropped, timed out). Plain hashes, not LRU: a live entry is never
 * evicted, and a full map makes the insert fail, which leaves the connection captured (see
 * sockops.bpf.c). Unenroll purges a pod's entries (ts/redirect/ebpf.ts, TUPLE_MAPS).
 * Their addresses are 16 bytes for both families (types.h); the maps with IPv4-only layouts
 * they replace (inpod_sk_orig, inpod_syn_orig, inpod_own_syn) are unpinned at install.
 */

/*
 * inpod_sk_dst: the original destination of a socket (socket storage).
 *   socket -> struct inpod_addr (address and port, network order, as SO_ORIGINAL_DST gives them)
 *   written: connect4/6, sendmsg4/6 (on the app's socket they redirect); sockops at
 *            PASSIVE_ESTABLISHED_CB (on the proxy's socket accepted on the outbound port)
 *   read:    getpeername4/6, recvmsg4/6 (the app's socket); sockops at TCP_CONNECT_CB (copied to
 *            inpod_syn_dst); getsockopt (SO_ORIGINAL_DST)
 *   lives:   as long as the socket
 */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct inpod_addr);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_sk_dst SEC(".maps");

/*
 * inpod_syn_dst: a redirected connection's original destination, between the app's socket and
 * the proxy's accepted one.
 *   struct inpod_tuple (as the client sees it) -> struct inpod_addr
 *   written: sockops at the app's TCP_CONNECT_CB (before its SYN), to the outbound listener
 *   read:    sockops at the proxy's PASSIVE_ESTABLISHED_CB (moved into inpod_sk_dst)
 *   lives:   from the SYN to the end of the handshake: deleted by sockops there, or at the
 *            client's TCP_CLOSE when there was no server side, or by unenroll's purge
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, INPOD_MAX_HANDSHAKES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct inpod_tuple);
	__type(value, struct inpod_addr);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_syn_dst SEC(".maps");

/*
 * inpod_own_conn: connections to a pod that a local socket opened, and that sk_lookup lets reach
 * their real listener instead of the proxy: (a) the pod's own, to one of its IPs from a source
 * that is not one of them (the proxy's transparent upstream to the app, from the client's IP;
 * from a pod IP sk_lookup needs no entry); (b) the node's, from a socket of the host netns
 * (inpod_host_ns) to an enrolled pod's IP: kubelet's probes. Keyed by the pod's netns either way.
 * A packet the node forwards (from another node or pod) never passed a local connect(), so it
 * never has an entry: it is captured, whatever source address it carries.
 *   struct inpod_tuple (as the client sees it; netns: the pod's) -> 1
 *   written: sockops at the client's TCP_CONNECT_CB (before its SYN)
 *   read:    sk_lookup (such a SYN goes to its real listener, not to the proxy)
 *   lives:   from the SYN to the end of the handshake, as inpod_syn_dst
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, INPOD_MAX_HANDSHAKES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct inpod_tuple);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_own_conn SEC(".maps");

/*
 * inpod_stats: what the capture programs decided, counted per CPU (inpod_count, common.h).
 *   enum inpod_stat -> count (one per CPU; a reader sums them)
 *   written: every capture program
 *   read:    no inpod code yet; `bpftool map dump pinned <pin root>/inpod_stats`
 *   lives:   from the first install to uninstall (counts survive restarts and upgrades)
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, INPOD_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_stats SEC(".maps");

#endif /* INPOD_MAPS_H */
