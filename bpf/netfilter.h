/* The kernel structures a netfilter program reads (Linux 6.4+), declared as far as we use them:
 * CO-RE relocates each field against the running kernel's BTF, so no vmlinux.h is needed. */
#pragma once

struct net_device {
    int ifindex;
    unsigned int flags;
} __attribute__((preserve_access_index));

struct ns_common {
    unsigned int inum;
} __attribute__((preserve_access_index));

struct net {
    struct ns_common ns;
} __attribute__((preserve_access_index));

struct nf_hook_state {
    struct net_device *out;
    struct net *net;
} __attribute__((preserve_access_index));

struct bpf_nf_ctx {
    const struct nf_hook_state *state;
    struct sk_buff *skb;
} __attribute__((preserve_access_index));

#define RA_NF_DROP 0
#define RA_NF_ACCEPT 1
#define RA_IFF_LOOPBACK 0x8
