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
#define INPOD_MAX_CONNS 65536

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

/* the inbound (15006) listener of each enrolled netns, found by sockops at listen() */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, INPOD_MAX_PODS);
	__type(key, __u64);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_inbound SEC(".maps");

/* socket cookie -> original destination, written by connect4/sendmsg4 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, INPOD_MAX_CONNS);
	__type(key, __u64);
	__type(value, struct inpod_addr);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_ck_orig SEC(".maps");

/* client tuple -> original destination, for the proxy's accepted socket (SO_ORIGINAL_DST) */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, INPOD_MAX_CONNS);
	__type(key, struct inpod_tuple);
	__type(value, struct inpod_addr);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_tup_orig SEC(".maps");

/* connections a pod opened to one of its own IPs (app to self, the proxy's transparent
 * upstream): sk_lookup must let these reach their real listener. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, INPOD_MAX_CONNS);
	__type(key, struct inpod_tuple);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_local SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, INPOD_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inpod_stats SEC(".maps");

#endif /* INPOD_MAPS_H */
