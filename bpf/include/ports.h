/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Port byte order, in one place. Inside the programs a port is a host-order __u16 (and so are the
 * ports of inpod_tuple, inpod_port_key and inpod_config); only a sockaddr's port is network order
 * (inpod_addr.port, sockaddr_in.sin_port, what a hook writes back into its context). The kernel
 * hands each hook its ports in its own convention (shared KERNEL-NOTES.md, "Port byte order"):
 *
 *   context field                                      order                    read with
 *   bpf_sock_addr.user_port                            network, low 16 bits     inpod_port_net
 *   bpf_sock.dst_port, bpf_sk_lookup.remote_port       network (__be16)         inpod_port_net
 *   bpf_sock_ops.remote_port                           network, as ntohl gives  inpod_port_net32
 *   bpf_sock_ops.local_port, bpf_sock.src_port,
 *   bpf_sk_lookup.local_port                           host                     inpod_port_host
 *
 * A field is converted where it is read, with the helper its row names, and written back with
 * inpod_port_to_net; no program compares ports in network order.
 */
#ifndef INPOD_PORTS_H
#define INPOD_PORTS_H

#include <bpf/bpf_endian.h>

/* A port the kernel keeps in network order in the low 16 bits of the field. */
static __always_inline __u16 inpod_port_net(__u32 field)
{
	return bpf_ntohs((__u16)field);
}

/* bpf_sock_ops.remote_port: the kernel shifts the __be16 so that ntohl of the word yields it. */
static __always_inline __u16 inpod_port_net32(__u32 field)
{
	return (__u16)bpf_ntohl(field);
}

/* A port the kernel already gives in host order (in a __u32 field). */
static __always_inline __u16 inpod_port_host(__u32 field)
{
	return (__u16)field;
}

/* A host-order port as a sockaddr (and bpf_sock_addr.user_port) carries it. */
static __always_inline __u16 inpod_port_to_net(__u16 port)
{
	return bpf_htons(port);
}

#endif /* INPOD_PORTS_H */
