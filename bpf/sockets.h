/* Socket lookups and hand-offs for capture. */
#pragma once
#include "packet.h"
#include "maps.h"

#define RA_TCP_STATE_LISTEN 10
/* The loopback device has this index in every network namespace. */
#define RA_LOOPBACK_IFINDEX 1
#define RA_TCP_STATE_TIME_WAIT 6
#define RA_TCP_STATE_NEW_SYN_RECV 12

/* Istio's rule for whether `sk` is the proxy's, used when no proxy cgroup is configured: a full
 * socket's mark decides, and request sockets pass, since once a pod is enrolled only the proxy's
 * listeners receive SYNs from outside. (A socket's cgroup can only be read after it is assigned to
 * the packet: tc programs may not call bpf_sk_cgroup_id. See ra_assign_proxy.) */
static __always_inline int ra_sk_marked_proxy(struct bpf_sock *sk, const struct ra_config *cfg)
{
    if (sk->state == RA_TCP_STATE_NEW_SYN_RECV)
        return 1;
    struct bpf_sock *full = bpf_sk_fullsock(sk);
    return full && (full->mark & cfg->mark_mask) == (cfg->proxy_mark & cfg->mark_mask);
}

/* Marks this CPU as inside a tc program's socket lookup (see ra_tc_lookup). */
static __always_inline void ra_tc_lookup_set(__u32 on)
{
    __u32 zero = 0;
    __u32 *v = bpf_map_lookup_elem(&ra_tc_lookup, &zero);
    if (v)
        *v = on;
}

/* Whether the running lookup was asked for by one of our tc programs. */
static __always_inline int ra_in_tc_lookup(void)
{
    __u32 zero = 0;
    __u32 *v = bpf_map_lookup_elem(&ra_tc_lookup, &zero);
    return v && *v;
}

/* Builds the lookup tuple for packet `f` (as received), optionally with another destination port. */
static __always_inline __u32 ra_tuple(const struct ra_flow *f, struct bpf_sock_tuple *t, __u16 dport)
{
    if (f->family == RA_FAMILY_INET) {
        t->ipv4.saddr = f->src.words[0];
        t->ipv4.daddr = f->dst.words[0];
        t->ipv4.sport = f->sport;
        t->ipv4.dport = dport;
        return sizeof(t->ipv4);
    }
    __builtin_memcpy(t->ipv6.saddr, f->src.words, 16);
    __builtin_memcpy(t->ipv6.daddr, f->dst.words, 16);
    t->ipv6.sport = f->sport;
    t->ipv6.dport = dport;
    return sizeof(t->ipv6);
}

/* The socket that owns this flow in the current namespace: established, request or TIME_WAIT.
 * A listener is never returned: those are chosen by port below. NULL when none. */
static __always_inline struct bpf_sock *ra_flow_socket(struct __sk_buff *skb, const struct ra_flow *f)
{
    struct bpf_sock_tuple t = {};
    __u32 len = ra_tuple(f, &t, f->dport);
    ra_tc_lookup_set(1);
    struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
    ra_tc_lookup_set(0);
    if (sk && sk->state == RA_TCP_STATE_LISTEN) {
        bpf_sk_release(sk);
        return NULL;
    }
    return sk;
}

/* The listener on `port` in the current namespace, only if it carries the proxy mark: an app
 * listening on 15001 must never receive captured traffic. Its cgroup is checked once assigned. */
static __always_inline struct bpf_sock *ra_proxy_listener(struct __sk_buff *skb, const struct ra_flow *f, __u16 port,
                                                          const struct ra_config *cfg)
{
    struct bpf_sock_tuple t = {};
    __u32 len = ra_tuple(f, &t, bpf_htons(port));
    ra_tc_lookup_set(1);
    struct bpf_sock *sk = bpf_sk_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
    ra_tc_lookup_set(0);
    if (!sk)
        return NULL;
    if (sk->state != RA_TCP_STATE_LISTEN || (sk->mark & cfg->mark_mask) != (cfg->proxy_mark & cfg->mark_mask)) {
        bpf_sk_release(sk);
        return NULL;
    }
    return sk;
}

/* Records a SYN that must pass through a TIME_WAIT socket, so that the kernel's fresh listener
 * lookup (which runs our sk_lookup program) picks the proxy's listener instead of the app's. */
static __always_inline void ra_time_wait_handoff(const struct ra_flow *f, const struct ra_addr *pod, __u16 port)
{
    struct ra_tuple_key k = {};
    k.family = f->family;
    k.local = f->dst;
    k.remote = f->src;
    k.local_port = bpf_ntohs(f->dport);
    k.remote_port = bpf_ntohs(f->sport);
    struct ra_listener_key v = {};
    v.family = f->family;
    v.addr = *pod;
    v.port = port;
    bpf_map_update_elem(&ra_tw_handoff, &k, &v, BPF_ANY);
}
