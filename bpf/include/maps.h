/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Every map, pinned by name under the pin root given at open time, so the separately loaded
 * hook objects share them and they outlive the process that loaded them (restart path).
 * Names stay under 16 bytes (BPF_OBJ_NAME_LEN).
 */
#ifndef INPOD_MAPS_H
#define INPOD_MAPS_H

#include "types.h"

#define INPOD_MAX_PODS 4096
/* connections between their SYN and the end of their handshake, node-wide, per map */
#define INPOD_MAX_HANDSHAKES 65536

/* enrolled pod netns: netns cookie -> settings. Enrolling a pod is an update here. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, INPOD_MAX_PODS);
	__type(key, __u64);
	__type(value, struct inpod_pod);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_enrolled SEC(".maps");

/* pod IPv4 (network order) -> netns cookie: sk_lookup cannot read the netns cookie itself. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, INPOD_MAX_PODS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_pod_ips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, INPOD_MAX_PODS * 4);
	__type(key, struct inpod_port_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_port_excl SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, INPOD_MAX_PODS * 4);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct inpod_cidr_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_cidr_excl SEC(".maps");

/* the inbound listener of each enrolled netns, found by sockops at listen() */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, INPOD_MAX_PODS);
	__type(key, __u64);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_inbound SEC(".maps");

/*
 * Per-connection state. None of it may outlive its connection: an entry left behind would answer
 * for a later connection that reuses the tuple (sk_lookup would hand that SYN to the app, around
 * the proxy). So per-socket state lives in socket storage, freed with the socket, and the two
 * tuple maps hold a connection only from its SYN until its handshake is done (sockops deletes the
 * entry at the server side's PASSIVE_ESTABLISHED_CB, and at the client's TCP_CLOSE when there is
 * no server side: refused, dropped, timed out). Plain hashes, not LRU: a live entry is never
 * evicted, and a full map makes the insert fail, which leaves the connection captured (see
 * sockops.bpf.c). Unenroll purges a pod's entries (ts/redirect/ebpf.ts).
 */

/* per socket: the original destination. connect4/sendmsg4 write it on the app's socket
 * (getpeername4/recvmsg4 read it); sockops moves it onto the proxy's accepted socket on the
 * outbound port (getsockopt answers SO_ORIGINAL_DST from it). */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct inpod_addr);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_sk_orig SEC(".maps");

/* client tuple -> original destination, from the app's TCP_CONNECT_CB (before its SYN) until
 * the proxy's accepted socket on the outbound port takes it over */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, INPOD_MAX_HANDSHAKES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct inpod_tuple);
	__type(value, struct inpod_addr);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_syn_orig SEC(".maps");

/* connections a pod opens to one of its own IPs from a source that is not one of them (the
 * proxy's transparent upstream to the app, from the client's IP), during their handshake:
 * sk_lookup lets these reach their real listener. From a pod IP, sk_lookup needs no entry. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, INPOD_MAX_HANDSHAKES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct inpod_tuple);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_own_syn SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, INPOD_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_stats SEC(".maps");

#endif /* INPOD_MAPS_H */
