/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Counters, one way for every program: a BPF_MAP_TYPE_PERCPU_ARRAY of __u64 indexed by an enum of
 * types.h, each CPU adding to its own slot (no atomics), userspace summing the slots. The capture
 * programs count into inpod_stats (maps.h, via inpod_count in common.h), the fast path into
 * inpod_fp_stats (fastpath_maps.h).
 */
#ifndef INPOD_COUNTERS_H
#define INPOD_COUNTERS_H

#include <bpf/bpf_helpers.h>

/* Adds `n` to slot `idx` of the per-CPU counter array `map`. */
static __always_inline void inpod_counter_add(void *map, __u32 idx, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(map, &idx);

	if (v)
		*v += n;
}

#endif /* INPOD_COUNTERS_H */
