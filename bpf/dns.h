/* DNS capture, as Istio's in-pod rules do it (REDIRECT of UDP and TCP 53 to the proxy's 15053 on
 * the pod's loopback, answered back through conntrack), with socket hooks on the node's cgroup
 * root instead of NAT: a query's destination is rewritten as its socket sends it (connect for
 * TCP and connected UDP, sendmsg for unconnected UDP) and remembered in the socket's storage;
 * the answers get the original server's address back (recvmsg, getpeername). Only sockets in
 * the namespace of a pod with DNS capture (ra_dns_netns), never the proxy's own. A datagram to
 * port 53 that still leaves such a pod was not sent through a UDP socket's send path (a raw
 * socket): tc_pod_egress drops it. */
#pragma once
#define RA_SOCK_RAW 3
#define RA_AF_PACKET 17
#include <linux/in.h>
#include "maps.h"
#include "counters.h"

#define RA_DNS_PORT 53
#define RA_LOOPBACK4 0x7f000001

/* The pod whose namespace the socket is in, if its DNS is captured. */
static __always_inline struct ra_dns_pod *ra_dns_pod_of(struct bpf_sock_addr *ctx)
{
    __u64 cookie = bpf_get_netns_cookie(ctx);
    return bpf_map_lookup_elem(&ra_dns_netns, &cookie);
}

/* Whether a socket with `mark` in cgroup `cgroup` is the proxy's: its mark, and its cgroup when
 * one is known (a mark alone can be forged), as for its TCP. */
static __always_inline int ra_dns_proxy_identity(const struct ra_config *cfg, __u32 mark, __u64 cgroup)
{
    if ((mark & cfg->mark_mask) != (cfg->proxy_mark & cfg->mark_mask))
        return 0;
    return !cfg->proxy_cgroup || ra_is_proxy_cgroup(cfg, cgroup);
}

/* The proxy's own queries are never redirected. */
static __always_inline int ra_dns_from_proxy(struct bpf_sock_addr *ctx, const struct ra_config *cfg)
{
    struct bpf_sock *sk = ctx->sk;
    return sk && ra_dns_proxy_identity(cfg, sk->mark, bpf_get_current_cgroup_id());
}

/* Whether a query to `dst` stays uncaptured, as Istio's rules leave it: one to the pod itself (UDP
 * through loopback: `! -o lo`; TCP to the loopback address only: `! -d 127.0.0.1/32`). */
static __always_inline int ra_dns_local(__u32 family, const struct ra_addr *dst, __u32 protocol, __u32 pod)
{
    if (family == RA_FAMILY_INET) {
        if (protocol == IPPROTO_TCP)
            return dst->words[0] == bpf_htonl(RA_LOOPBACK4);
        if ((bpf_ntohl(dst->words[0]) >> 24) == 127)
            return 1;
    } else {
        int loopback = !dst->words[0] && !dst->words[1] && !dst->words[2] && dst->words[3] == bpf_htonl(1);
        if (loopback || protocol == IPPROTO_TCP)
            return loopback;
    }
    return ra_pod_index(family, dst) == pod;
}

/* What the redirect hooks share: the pod and config, when a send of `protocol` to `dst` port
 * `port` (network order) is a query to capture. */
static __always_inline struct ra_config *ra_dns_capture(struct bpf_sock_addr *ctx, __u32 family, const struct ra_addr *dst,
                                                       __u32 port, __u32 *pod)
{
    __u32 protocol = ctx->protocol;
    if (port != bpf_htons(RA_DNS_PORT) || (protocol != IPPROTO_UDP && protocol != IPPROTO_TCP))
        return 0;
    struct ra_dns_pod *p = ra_dns_pod_of(ctx);
    struct ra_config *cfg = p ? ra_get_config() : 0;
    if (!cfg || !cfg->dns_port || ra_dns_from_proxy(ctx, cfg) || ra_dns_local(family, dst, protocol, p->pod_index))
        return 0;
    *pod = p->pod_index;
    return cfg;
}

/* Remembers where the socket's query was going. Without room for it the query is still
 * captured; its answer then shows the proxy's address and a strict resolver ignores it. */
static __always_inline void ra_dns_remember(struct bpf_sock_addr *ctx, __u32 family, const struct ra_addr *dst, __u32 port,
                                            __u32 pod)
{
    struct bpf_sock *sk = ctx->sk;
    struct ra_dns_origin *o = sk ? bpf_sk_storage_get(&ra_dns_origins, sk, 0, BPF_SK_STORAGE_GET_F_CREATE) : 0;
    if (o) {
        o->family = family;
        o->addr = *dst;
        o->port = port;
    }
    ra_count(pod, RA_DNS_CAPTURED);
    if (ra_monitoring()) {
        struct ra_addr unknown = {};
        ra_emit(pod, RA_DNS_CAPTURED, RA_HOOK_SOCKET, ctx->protocol, family, &unknown, dst, 0, port, 0);
    }
}

/* IPv4 (connect4, sendmsg4; also a v4-mapped send of an IPv6 socket, which the kernel hands to
 * the IPv4 path): to 127.0.0.1:<dns port>. */
static __always_inline void ra_dns_redirect4(struct bpf_sock_addr *ctx)
{
    struct ra_addr dst = { .words = { ctx->user_ip4 } };
    __u32 port = ctx->user_port, pod;
    struct ra_config *cfg = ra_dns_capture(ctx, RA_FAMILY_INET, &dst, port, &pod);
    if (!cfg)
        return;
    ra_dns_remember(ctx, RA_FAMILY_INET, &dst, port, pod);
    ctx->user_ip4 = bpf_htonl(RA_LOOPBACK4);
    ctx->user_port = bpf_htons(cfg->dns_port);
}

/* IPv6 (connect6, sendmsg6): to [::1]:<dns port>, or to the v4-mapped 127.0.0.1 for a v4-mapped
 * destination (remembered as IPv4). */
static __always_inline void ra_dns_redirect6(struct bpf_sock_addr *ctx)
{
    __u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];
    __u32 port = ctx->user_port, pod;
    int mapped = !w0 && !w1 && w2 == bpf_htonl(0xffff);
    struct ra_addr dst = { .words = { w0, w1, w2, w3 } };
    struct ra_addr dst4 = { .words = { w3 } };
    __u32 family = mapped ? RA_FAMILY_INET : RA_FAMILY_INET6;
    struct ra_config *cfg = ra_dns_capture(ctx, family, mapped ? &dst4 : &dst, port, &pod);
    if (!cfg)
        return;
    ra_dns_remember(ctx, family, mapped ? &dst4 : &dst, port, pod);
    ctx->user_ip6[0] = 0;
    ctx->user_ip6[1] = 0;
    ctx->user_ip6[2] = mapped ? bpf_htonl(0xffff) : 0;
    ctx->user_ip6[3] = mapped ? bpf_htonl(RA_LOOPBACK4) : bpf_htonl(1);
    ctx->user_port = bpf_htons(cfg->dns_port);
}

/* The origin of a redirected socket's answer from `port` (network order), or NULL: only answers
 * from the proxy's DNS port to a socket whose query was redirected are rewritten. */
static __always_inline struct ra_dns_origin *ra_dns_answer_origin(struct bpf_sock_addr *ctx, __u32 port)
{
    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return 0;
    struct ra_dns_origin *o = bpf_sk_storage_get(&ra_dns_origins, sk, 0, 0);
    if (!o)
        return 0;
    struct ra_config *cfg = ra_get_config();
    return cfg && port == bpf_htons(cfg->dns_port) ? o : 0;
}

/* recvmsg4, getpeername4: 127.0.0.1:<dns port> becomes the original server. */
static __always_inline void ra_dns_restore4(struct bpf_sock_addr *ctx)
{
    if (ctx->user_ip4 != bpf_htonl(RA_LOOPBACK4))
        return;
    struct ra_dns_origin *o = ra_dns_answer_origin(ctx, ctx->user_port);
    if (!o || o->family != RA_FAMILY_INET)
        return;
    ctx->user_ip4 = o->addr.words[0];
    ctx->user_port = o->port;
}

/* recvmsg6, getpeername6: [::1] or the v4-mapped 127.0.0.1, at the DNS port, becomes the
 * original server (v4-mapped again when it was IPv4). */
static __always_inline void ra_dns_restore6(struct bpf_sock_addr *ctx)
{
    __u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];
    if (w0 || w1)
        return;
    int mapped = w2 == bpf_htonl(0xffff) && w3 == bpf_htonl(RA_LOOPBACK4);
    int loopback = !w2 && w3 == bpf_htonl(1);
    if (!mapped && !loopback)
        return;
    struct ra_dns_origin *o = ra_dns_answer_origin(ctx, ctx->user_port);
    if (!o || (o->family == RA_FAMILY_INET) != mapped)
        return;
    if (mapped) {
        ctx->user_ip6[3] = o->addr.words[0];
    } else {
        ctx->user_ip6[0] = o->addr.words[0];
        ctx->user_ip6[1] = o->addr.words[1];
        ctx->user_ip6[2] = o->addr.words[2];
        ctx->user_ip6[3] = o->addr.words[3];
    }
    ctx->user_port = o->port;
}

/* bind4, bind6: in a pod with DNS capture, only the proxy may take the DNS port (any address):
 * redirected queries arrive there over loopback, so an app that held it (while the proxy is away)
 * would read and answer them. Returns 0 to refuse the bind (EPERM). A socket this hook never saw
 * (bound before enrolment, or by autobind) is left to tc_pod_loopback, which checks at delivery. */
static __always_inline int ra_dns_bind_allowed(struct bpf_sock_addr *ctx)
{
    struct ra_config *cfg = ra_get_config();
    if (!cfg || !cfg->dns_port || ctx->user_port != bpf_htons(cfg->dns_port))
        return 1;
    struct ra_dns_pod *p = ra_dns_pod_of(ctx);
    if (!p || ra_dns_from_proxy(ctx, cfg))
        return 1;
    ra_count(p->pod_index, RA_REFUSED_DNS_BIND);
    return 0;
}

/* Whether a raw or packet socket sent the packet: it may claim any source address, so the address
 * does not say which pod's setting applies. An ordinary UDP socket's query met the socket hooks,
 * which go by the socket's namespace; a packet with no socket was forwarded or made by the kernel,
 * and is taken as the address's pod's unless it came in on lo (a packet socket can write a frame
 * there, which the pod then forwards without its socket). */
static __always_inline int ra_sent_by_raw_socket(struct __sk_buff *skb)
{
    struct bpf_sock *sk = skb->sk;
    if (!sk)
        return skb->ingress_ifindex == RA_LOOPBACK_IFINDEX; /* a frame written to lo, then forwarded */
    sk = bpf_sk_fullsock(sk);
    return sk && (sk->type == RA_SOCK_RAW || sk->family == RA_AF_PACKET);
}

/* tc_pod_egress: whether a datagram leaving a meshed pod is a query the socket hooks should have
 * redirected (UDP to port 53, or UDP whose port cannot be read), not the proxy's: it came from a
 * raw socket or another path around them, and is dropped. Only a source that is a pod with DNS
 * capture off sends queries as they are, and not from a raw socket (which could be in any pod); a
 * source that is no pod's (claimed by a raw socket) cannot be attributed, so its query is dropped too
 * (counted on index 0). */
static __always_inline int ra_dns_uncaptured(struct __sk_buff *skb, const struct ra_config *cfg, const struct ra_flow *f)
{
    if (f->proto != IPPROTO_UDP || (f->dport != bpf_htons(RA_DNS_PORT) && !f->udp_unread))
        return 0;
    struct ra_pod_info *info = ra_pod_lookup(f->family, &f->src);
    if (info && !(info->flags & RA_POD_DNS_CAPTURE) && !ra_sent_by_raw_socket(skb))
        return 0;
    if (ra_dns_proxy_identity(cfg, skb->mark, bpf_skb_cgroup_id(skb)))
        return 0;
    ra_count(info ? info->pod_index : 0, RA_DROP_DNS_UNCAPTURED);
    return 1;
}
