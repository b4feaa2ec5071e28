/* The kernel structures the LSM programs read, declared as far as we use them: CO-RE relocates
 * each field against the running kernel's BTF, so no vmlinux.h is needed. struct net and
 * struct ns_common come from netfilter.h. */
#pragma once
#include <bpf/bpf_core_read.h>
#include "netfilter.h"

typedef struct {
    struct net *net;
} possible_net_t;

struct sock_common {
    possible_net_t skc_net;
} __attribute__((preserve_access_index));

struct sock {
    struct sock_common __sk_common;
} __attribute__((preserve_access_index));

struct socket {
    struct sock *sk;
} __attribute__((preserve_access_index));

struct nsproxy {
    struct net *net_ns;
} __attribute__((preserve_access_index));

struct task_struct {
    struct nsproxy *nsproxy;
} __attribute__((preserve_access_index));

#define RA_AF_XDP 44
#define RA_SOL_PACKET 263
#define RA_PACKET_QDISC_BYPASS 20
#define RA_EPERM 1

/* The index of the meshed pod whose network namespace has inode `inum` (the namespace marker
 * of ra_egress_ifaces), or NULL. */
static __always_inline __u32 *ra_meshed_netns(__u32 inum)
{
    struct ra_netns_iface k = { .netns = inum, .ifindex = 0 };
    return inum ? bpf_map_lookup_elem(&ra_egress_ifaces, &k) : 0;
}
