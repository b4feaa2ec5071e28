/* Source/destination address rewrite with checksum fix-ups, for the node's probe SNAT. */
#pragma once
#include <stddef.h>
#include "packet.h"

#define RA_IP_CSUM_OFF(f) ((f)->l3_off + offsetof(struct iphdr, check))
#define RA_TCP_CSUM_OFF(f) ((f)->l4_off + offsetof(struct tcphdr, check))

/* Replaces the source (is_src) or destination address of the packet with `to`. */
static __always_inline int ra_rewrite_addr(struct __sk_buff *skb, const struct ra_flow *f, int is_src, const struct ra_addr *to)
{
    if (f->family == RA_FAMILY_INET) {
        __u32 off = f->l3_off + (is_src ? offsetof(struct iphdr, saddr) : offsetof(struct iphdr, daddr));
        __u32 from = is_src ? f->src.words[0] : f->dst.words[0];
        __u32 new = to->words[0];
        if (bpf_l4_csum_replace(skb, RA_TCP_CSUM_OFF(f), from, new, BPF_F_PSEUDO_HDR | 4) < 0)
            return -1;
        if (bpf_l3_csum_replace(skb, RA_IP_CSUM_OFF(f), from, new, 4) < 0)
            return -1;
        return bpf_skb_store_bytes(skb, off, &new, 4, 0);
    }
    __u32 off = f->l3_off + (is_src ? offsetof(struct ipv6hdr, saddr) : offsetof(struct ipv6hdr, daddr));
    struct ra_addr from = is_src ? f->src : f->dst;
    struct ra_addr new = *to;
    __s64 diff = bpf_csum_diff(from.words, 16, new.words, 16, 0);
    if (bpf_l4_csum_replace(skb, RA_TCP_CSUM_OFF(f), 0, diff, BPF_F_PSEUDO_HDR) < 0)
        return -1;
    return bpf_skb_store_bytes(skb, off, new.words, 16, 0);
}
