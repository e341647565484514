/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The capture programs' load-time settings (.rodata): Istio's ports and marks.
 *
 * Their one source is ts/istio.ts. The loader (ts/redirect/ebpf.ts, ISTIO_CONFIG) writes them into
 * the skeleton's rodata between open and load, and libbpf freezes .rodata before the programs
 * load. Here they are zero on purpose: a second copy of the numbers could only drift from the
 * first, and a program that was not given them must not run at all (a proxy mark of zero would
 * exempt every unmarked socket: capture would fail open). Hence INPOD_REQUIRE_CONFIG.
 * test/redirect/istio-config.test.ts reads the .rodata of the loaded programs back from the kernel.
 */
#ifndef INPOD_CONFIG_H
#define INPOD_CONFIG_H

#include "types.h"

const volatile struct inpod_config inpod_cfg = {};

/* Every field written? Read from frozen .rodata, this is a constant to the verifier. */
static __always_inline int inpod_config_set(void)
{
	return inpod_cfg.proxy_mark && inpod_cfg.spoof_mark && inpod_cfg.outbound_port &&
	       inpod_cfg.inbound_port && inpod_cfg.hbone_port && inpod_cfg.dns_port;
}

/*
 * First statement of every capture program. Unconfigured, the program returns a value no hook
 * accepts (cgroup sock_addr, sockops, sockopt and sk_lookup programs must return 0 or 1), so the
 * verifier refuses to load it. Configured, the verifier knows inpod_config_set() is true and never
 * follows that return; what stays at run time is six loads and compares of constants (about 20
 * instructions per run, e.g. sk_lookup 205 -> 224 translated instructions).
 */
#define INPOD_UNCONFIGURED 2
#define INPOD_REQUIRE_CONFIG()                       \
	do {                                         \
		if (!inpod_config_set())             \
			return INPOD_UNCONFIGURED;   \
	} while (0)

#endif /* INPOD_CONFIG_H */
