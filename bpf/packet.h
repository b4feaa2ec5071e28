/* Packet parsing: Ethernet, IPv4/IPv6, TCP, into one flow description.
 *
 * Fail closed: a packet whose transport header cannot be located with certainty is RA_MALFORMED
 * and the pod programs drop it. The kernel walks IPv6 extension chains of any length, so a chain
 * longer than our bound, or one that runs past the bytes we can see, must never be mistaken for
 * "not TCP" and passed: the stack would find the TCP header behind it and deliver it uncaptured. */
#pragma once
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include "redirect_abi.h"

#define RA_TCP_FLAG_SYN 0x02
#define RA_TCP_FLAG_ACK 0x10
#define RA_ETH_P_8021Q 0x8100
#define RA_ETH_P_8021AD 0x88A8
#define RA_IPPROTO_MH 135
#define RA_IPPROTO_HIP 139
#define RA_IPPROTO_SHIM6 140
/* Headers are pulled into the linear area up to this many bytes before parsing. */
#define RA_PULL_LEN 256

struct ra_flow {
    __u32 family;
    struct ra_addr src;
    struct ra_addr dst;
    __u16 sport;       /* network order */
    __u16 dport;       /* network order */
    __u8 flags;        /* TCP flags byte */
    __u8 fragment;     /* 1 when the packet is a fragment */
    __u8 proto;        /* the transport (IPPROTO_*); for UDP only `dport` is filled, when its header is there */
    __u8 udp_unread;   /* UDP whose header could not be read though the packet should carry one */
    __u32 l3_off;
    __u32 l4_off;
    __u32 payload;     /* TCP payload bytes */
};

enum ra_parse {
    RA_PASS = 0,       /* not IP, or UDP/ICMP: not captured (as Istio's TCP-only rules) */
    RA_TCP = 1,        /* TCP with ports and flags in `f` (or a TCP fragment: f->fragment) */
    RA_MALFORMED = 2,  /* IP whose transport header cannot be located: drop */
    RA_UNKNOWN = 3,    /* IP carrying a transport we do not handle: drop */
};

static __always_inline int ra_is_ipv6_ext(__u8 next)
{
    return next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_FRAGMENT || next == IPPROTO_DSTOPTS ||
           next == IPPROTO_AH || next == RA_IPPROTO_MH || next == RA_IPPROTO_HIP || next == RA_IPPROTO_SHIM6;
}

/* Walks up to RA_MAX_EXT_HEADERS extension headers. Returns 0 with *next the transport, or -1
 * when the chain is longer, runs out of bytes, or is a non-first fragment (no transport header). */
static __always_inline int ra_parse_ipv6_ext(void *data, void *end, __u32 *off, __u8 *next, __u8 *fragment)
{
#pragma unroll
    for (int i = 0; i < RA_MAX_EXT_HEADERS; i++) {
        if (!ra_is_ipv6_ext(*next))
            return 0;
        __u8 *hdr = data + *off;
        if ((void *)(hdr + 8) > end)
            return -1;
        if (*next == IPPROTO_FRAGMENT) {
            *fragment = 1;
            if ((hdr[2] << 8 | (hdr[3] & 0xf8)) != 0)
                return -1; /* offset != 0: a later fragment carries no transport header */
            *off += 8;
        } else if (*next == IPPROTO_AH) {
            *off += (hdr[1] + 2) * 4;
        } else {
            *off += (hdr[1] + 1) * 8;
        }
        *next = hdr[0];
    }
    return ra_is_ipv6_ext(*next) ? -1 : 0;
}

static __always_inline int ra_transport_verdict(__u8 proto, __u32 family)
{
    if (proto == IPPROTO_TCP)
        return RA_TCP;
    if (proto == IPPROTO_UDP || (family == RA_FAMILY_INET && proto == IPPROTO_ICMP) ||
        (family == RA_FAMILY_INET6 && proto == IPPROTO_ICMPV6))
        return RA_PASS;
    return RA_UNKNOWN;
}

/* Fills `f` and classifies the packet (enum ra_parse). Addresses are filled as soon as the IP
 * header is readable, so drops can be counted against the pod. */
static __always_inline int ra_parse(struct __sk_buff *skb, struct ra_flow *f)
{
    __builtin_memset(f, 0, sizeof(*f));
    if (skb->data_end - skb->data < RA_PULL_LEN && skb->len > skb->data_end - skb->data)
        bpf_skb_pull_data(skb, skb->len < RA_PULL_LEN ? skb->len : RA_PULL_LEN);
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return RA_MALFORMED;
    f->l3_off = sizeof(*eth);
    __u8 proto;
    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = data + sizeof(*eth);
        if ((void *)(ip + 1) > end)
            return RA_MALFORMED;
        f->family = RA_FAMILY_INET;
        f->src.words[0] = ip->saddr;
        f->dst.words[0] = ip->daddr;
        if (ip->version != 4 || ip->ihl < 5)
            return RA_MALFORMED;
        proto = ip->protocol;
        f->fragment = (ip->frag_off & bpf_htons(0x3fff)) != 0;
        f->l4_off = f->l3_off + ip->ihl * 4;
    } else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = data + sizeof(*eth);
        if ((void *)(ip6 + 1) > end)
            return RA_MALFORMED;
        f->family = RA_FAMILY_INET6;
        __builtin_memcpy(f->src.words, ip6->saddr.in6_u.u6_addr32, 16);
        __builtin_memcpy(f->dst.words, ip6->daddr.in6_u.u6_addr32, 16);
        if (ip6->version != 6)
            return RA_MALFORMED;
        proto = ip6->nexthdr;
        f->l4_off = f->l3_off + sizeof(*ip6);
        if (ra_parse_ipv6_ext(data, end, &f->l4_off, &proto, &f->fragment) < 0)
            return RA_MALFORMED;
    } else if (eth->h_proto == bpf_htons(RA_ETH_P_8021Q) || eth->h_proto == bpf_htons(RA_ETH_P_8021AD)) {
        return RA_MALFORMED; /* a pod has no VLANs: a tag could only hide what follows */
    } else {
        return RA_PASS; /* ARP and other non-IP frames never reach TCP */
    }
    f->proto = proto;
    int verdict = ra_transport_verdict(proto, f->family);
    if (proto == IPPROTO_UDP) {
        /* For DNS capture's egress check. A later IPv4 fragment has no header (and is useless
         * without the first); any other datagram whose header is out of reach may be a query. */
        int later = f->family == RA_FAMILY_INET && (((struct iphdr *)(data + sizeof(*eth)))->frag_off & bpf_htons(0x1fff));
        struct udphdr *udp = data + f->l4_off;
        if (later)
            ;
        else if ((void *)(udp + 1) <= end)
            f->dport = udp->dest;
        else
            f->udp_unread = 1;
    }
    if (verdict != RA_TCP)
        return verdict;
    if (f->fragment) {
        if (f->family == RA_FAMILY_INET && (((struct iphdr *)(data + sizeof(*eth)))->frag_off & bpf_htons(0x1fff)))
            return RA_MALFORMED; /* a later IPv4 fragment: no TCP header in it */
        return RA_TCP; /* a first fragment: ports readable but the flow cannot be trusted; callers drop it */
    }
    struct tcphdr *tcp = data + f->l4_off;
    if ((void *)(tcp + 1) > end || tcp->doff < 5)
        return RA_MALFORMED;
    f->sport = tcp->source;
    f->dport = tcp->dest;
    f->flags = ((__u8 *)tcp)[13];
    __u32 headers = f->l4_off + tcp->doff * 4;
    f->payload = skb->len > headers ? skb->len - headers : 0;
    return RA_TCP;
}

static __always_inline int ra_is_new_connection(const struct ra_flow *f)
{
    return (f->flags & (RA_TCP_FLAG_SYN | RA_TCP_FLAG_ACK)) == RA_TCP_FLAG_SYN;
}

/* No SYN and no payload: an ACK, FIN or reset that can neither open a connection nor carry data. */
static __always_inline int ra_is_bare_segment(const struct ra_flow *f)
{
    return !(f->flags & RA_TCP_FLAG_SYN) && f->payload == 0;
}

static __always_inline int ra_addr_eq(const struct ra_addr *a, const struct ra_addr *b, __u32 family)
{
    if (family == RA_FAMILY_INET)
        return a->words[0] == b->words[0];
    return a->words[0] == b->words[0] && a->words[1] == b->words[1] && a->words[2] == b->words[2] && a->words[3] == b->words[3];
}
