/* Packet parsing: Ethernet, IPv4/IPv6, TCP, into one flow description. */
#pragma once
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include "redirect_abi.h"

#define RA_TCP_FLAG_SYN 0x02
#define RA_TCP_FLAG_ACK 0x10

struct ra_flow {
    __u32 family;
    struct ra_addr src;
    struct ra_addr dst;
    __u16 sport;       /* network order */
    __u16 dport;       /* network order */
    __u8 flags;        /* TCP flags byte */
    __u8 fragment;     /* 1 when the packet is a fragment */
    __u32 l3_off;
    __u32 l4_off;
};

enum ra_parse { RA_NOT_TCP = 0, RA_TCP = 1 };

static __always_inline int ra_parse_ipv6_ext(void *data, void *end, __u32 *off, __u8 *next, __u8 *fragment)
{
    /* Walk a bounded number of extension headers so one cannot hide the TCP header. */
#pragma unroll
    for (int i = 0; i < 4; i++) {
        if (*next != IPPROTO_HOPOPTS && *next != IPPROTO_ROUTING && *next != IPPROTO_DSTOPTS && *next != IPPROTO_FRAGMENT)
            return 0;
        __u8 *hdr = data + *off;
        if ((void *)(hdr + 8) > end)
            return -1;
        if (*next == IPPROTO_FRAGMENT) {
            *fragment = 1;
            *next = hdr[0];
            *off += 8;
        } else {
            *next = hdr[0];
            *off += (hdr[1] + 1) * 8;
        }
    }
    return 0;
}

/* Fills `f` for a TCP packet; RA_NOT_TCP for anything else (passed untouched). */
static __always_inline int ra_parse(struct __sk_buff *skb, struct ra_flow *f)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return RA_NOT_TCP;
    __builtin_memset(f, 0, sizeof(*f));
    f->l3_off = sizeof(*eth);
    __u8 proto;
    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = data + sizeof(*eth);
        if ((void *)(ip + 1) > end)
            return RA_NOT_TCP;
        proto = ip->protocol;
        f->family = RA_FAMILY_INET;
        f->src.words[0] = ip->saddr;
        f->dst.words[0] = ip->daddr;
        f->fragment = (ip->frag_off & bpf_htons(0x3fff)) != 0;
        f->l4_off = f->l3_off + ip->ihl * 4;
    } else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = data + sizeof(*eth);
        if ((void *)(ip6 + 1) > end)
            return RA_NOT_TCP;
        proto = ip6->nexthdr;
        f->family = RA_FAMILY_INET6;
        __builtin_memcpy(f->src.words, ip6->saddr.in6_u.u6_addr32, 16);
        __builtin_memcpy(f->dst.words, ip6->daddr.in6_u.u6_addr32, 16);
        f->l4_off = f->l3_off + sizeof(*ip6);
        if (ra_parse_ipv6_ext(data, end, &f->l4_off, &proto, &f->fragment) < 0)
            return RA_NOT_TCP;
    } else {
        return RA_NOT_TCP;
    }
    if (proto != IPPROTO_TCP)
        return RA_NOT_TCP;
    if (f->fragment)
        return RA_TCP; /* ports unknown; callers drop it */
    struct tcphdr *tcp = data + f->l4_off;
    if ((void *)(tcp + 1) > end)
        return RA_NOT_TCP;
    f->sport = tcp->source;
    f->dport = tcp->dest;
    f->flags = ((__u8 *)tcp)[13];
    return RA_TCP;
}

static __always_inline int ra_is_new_connection(const struct ra_flow *f)
{
    return (f->flags & (RA_TCP_FLAG_SYN | RA_TCP_FLAG_ACK)) == RA_TCP_FLAG_SYN;
}

static __always_inline int ra_addr_eq(const struct ra_addr *a, const struct ra_addr *b, __u32 family)
{
    if (family == RA_FAMILY_INET)
        return a->words[0] == b->words[0];
    return a->words[0] == b->words[0] && a->words[1] == b->words[1] && a->words[2] == b->words[2] && a->words[3] == b->words[3];
}
