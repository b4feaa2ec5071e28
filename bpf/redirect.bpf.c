// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* redirect-agent's capture programs. One entry program per attach point:
 *   tc_pod_egress   pod's own interface, egress, in the pod's namespace
 *   tc_pod_ingress  pod's own interface, ingress
 *   tc_pod_ingress_reroute  ingress of an interface whose inbound is outbound (a VM's tap)
 *   tc_pod_loopback the pod's lo ingress, with DNS capture (queries reach only the proxy's DNS socket)
 *   sk_lookup_pod   the pod's namespace, every interface (TIME_WAIT hand-off; SYNs no tc program saw)
 *   nf_pod_egress   the pod's namespace, netfilter POST_ROUTING (Linux 6.4+): nothing leaves through an
 *                   interface the tc programs do not watch yet
 *   cg_node_connect4, cg_node_connect6  the node's cgroup root: a kubelet connect() to an in-mesh
 *                   pod is bound to the probe IP
 *   sockops_node    the node's cgroup root: records that connection as a probe flow
 *   cg_pod_connect4/6, cg_pod_sendmsg4/6, cg_pod_recvmsg4/6, cg_pod_getpeername4/6, cg_pod_bind4/6
 *                   the node's cgroup root, for sockets in pods' namespaces: DNS capture (dns.h)
 *   lsm_pod_socket_create, lsm_pod_setsockopt  the node's security hooks (BPF LSM): no socket in a
 *                   meshed pod may send past the tc programs
 * Nothing is attached to the host side of a pod's veth: the primary CNI owns it.
 * Behaviour matches Istio's in-pod iptables rules; see README.md for the decisions. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "packet.h"
#include "maps.h"
#include "counters.h"
#include "sockets.h"
#include "node_probe.h"
#include "netfilter.h"
#include "lsm.h"
#include "dns.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Whether a packet leaving the pod is the proxy's own: its mark, and (when configured) a socket in
 * the proxy's cgroup, since any app with CAP_NET_RAW can set the mark. Two kinds of packet carry
 * the proxy's mark without a socket of its cgroup, and pass on the mark alone: the kernel's own
 * replies with no owning socket (a SYN cookie's SYN-ACK, a reset), whose mark comes from the
 * listener or socket they answer for; and bare segments (no SYN, no data: TIME_WAIT ACKs, resets)
 * sent from the kernel's control socket. Neither can open a connection from an app socket or
 * carry an app's bytes (iptables mode passes both unmarked, as conntrack knows them). */
static __always_inline int ra_is_proxy(struct __sk_buff *skb, const struct ra_config *cfg, const struct ra_flow *f)
{
    if ((skb->mark & cfg->mark_mask) != (cfg->proxy_mark & cfg->mark_mask))
        return 0;
    if (!cfg->proxy_cgroup || ra_is_bare_segment(f))
        return 1;
    __u64 cgroup = bpf_skb_cgroup_id(skb);
    if (cgroup == 0 || ra_is_proxy_cgroup(cfg, cgroup))
        return 1;
    if (ra_is_new_connection(f))
        ra_count(ra_pod_index(f->family, &f->src), RA_FORGED_MARK);
    return 0;
}

static __always_inline int ra_is_captured(const struct __sk_buff *skb, const struct ra_config *cfg)
{
    return (skb->mark & cfg->mark_mask) == (cfg->capture_mark & cfg->mark_mask);
}

/* Whether the packet belongs to a flow this node's probe SNAT created (inbound: from the probe
 * IP to the pod; outbound: the pod's reply to it). Only such flows skip capture: another pod can
 * send from the probe IP too, and must not bypass the proxy by doing so. */
static __always_inline int ra_is_probe_flow(const struct ra_config *cfg, const struct ra_flow *f, int inbound)
{
    const struct ra_addr *probe = inbound ? &f->src : &f->dst;
    if (!ra_is_probe_ip(cfg, f->family, probe))
        return 0;
    struct ra_flow_key k = { .family = f->family, .probe = *probe };
    k.pod = inbound ? f->dst : f->src;
    k.pod_port = inbound ? f->dport : f->sport;
    k.probe_port = inbound ? f->sport : f->dport;
    struct ra_flow_value *v = bpf_map_lookup_elem(&ra_probe_flows, &k);
    if (!v)
        return 0;
    __u64 closed = v->closed_ns;
    if (!closed)
        return 1;
    /* The kubelet's socket is gone: its connection's last segments only, never a new one. */
    return !ra_is_new_connection(f) && bpf_ktime_get_ns() - closed < RA_PROBE_TAIL_NS;
}

/* Whether the socket the packet carries (its sender on egress; the one bpf_sk_assign gave it on
 * ingress) has its cookie in `map`. */
static __always_inline int ra_socket_in(struct __sk_buff *skb, void *map)
{
    __u64 cookie = bpf_get_socket_cookie(skb);
    return cookie && bpf_map_lookup_elem(map, &cookie);
}

/* Whether that socket belongs to a connection that existed before its pod was enrolled. The
 * node's flag spares every other packet the hash lookup while no such connection is kept. */
static __always_inline int ra_is_kept(struct __sk_buff *skb, const struct ra_node *node)
{
    return node && node->kept_connections && ra_socket_in(skb, &ra_kept);
}

/* Egress of a pod with inbound capture bypassed: its answers to inbound connections leave as they
 * are, as iptables' REDIRECT (new connections only) leaves them: the handshake's replies (from a
 * request socket or a listener: they carry no app data) and packets of connections it accepted.
 * What it opens itself is captured as from any pod. */
static __always_inline int ra_is_bypass_reply(struct __sk_buff *skb, const struct ra_flow *f, const struct ra_node *node)
{
    if (!node || !node->bypass_pods)
        return 0;
    struct ra_pod_info *info = ra_pod_lookup(f->family, &f->src);
    if (!info || !(info->flags & RA_POD_BYPASS_INBOUND))
        return 0;
    struct bpf_sock *sk = skb->sk;
    if (!sk)
        return 0;
    /* The other end is a socket in this namespace: the proxy's connection to the app carrying its
     * client's address (HBONE still reaches 15008). Its answers go back to the proxy, captured. */
    struct bpf_sock *local = ra_flow_socket(skb, f);
    if (local) {
        bpf_sk_release(local);
        return 0;
    }
    if (sk->state == RA_TCP_STATE_NEW_SYN_RECV || sk->state == RA_TCP_STATE_LISTEN)
        return 1;
    return ra_socket_in(skb, &ra_bypass_flows);
}

/* The pod programs' answer to what the parser could not accept: drop and count, never pass. */
static __always_inline int ra_parse_pod(struct __sk_buff *skb, struct ra_flow *f, int inbound)
{
    int verdict = ra_parse(skb, f);
    if (verdict == RA_MALFORMED || verdict == RA_UNKNOWN) {
        __u32 pod = ra_pod_index(f->family, inbound ? &f->dst : &f->src);
        ra_count(pod, verdict == RA_MALFORMED ? RA_DROP_MALFORMED : RA_DROP_PROTOCOL);
    }
    return verdict;
}

/* Outbound: every app TCP packet leaving the pod (not the proxy's, not to the probe IP) is turned
 * back into the interface's ingress with the capture mark, where tc_pod_ingress gives it to the
 * proxy's socket. The destination MAC becomes our own so the stack accepts it as for us. */
static __always_inline int ra_pod_egress(struct __sk_buff *skb, struct ra_flow *f)
{
    struct ra_config *cfg = ra_get_config();
    if (!cfg)
        return TC_ACT_SHOT; /* no config: the agent has not set the node up; nothing leaves uncaptured */
    int verdict = ra_parse_pod(skb, f, 0);
    if (verdict == RA_PASS)
        return ra_dns_uncaptured(skb, cfg, f) ? TC_ACT_SHOT : TC_ACT_OK;
    if (verdict != RA_TCP)
        return TC_ACT_SHOT;
    if (ra_is_proxy(skb, cfg, f)) {
        if (ra_is_new_connection(f))
            ra_count(ra_pod_index(f->family, &f->src), RA_PROXY_PASS);
        return TC_ACT_OK;
    }
    if (ra_is_probe_flow(cfg, f, 0))
        return TC_ACT_OK; /* replies to kubelet probes, as Istio's `-d <probe> -j ACCEPT` */
    /* Neither a kept nor an accepted connection opens anything: a SYN is always captured. */
    if (!ra_is_new_connection(f)) {
        struct ra_node *node = ra_get_node();
        if (ra_is_kept(skb, node)) {
            ra_count(ra_pod_index(f->family, &f->src), RA_KEPT_PASS);
            return TC_ACT_OK;
        }
        if (ra_is_bypass_reply(skb, f, node))
            return TC_ACT_OK;
    }
    if (f->fragment) {
        ra_count(ra_pod_index(f->family, &f->src), RA_DROP_FRAGMENT);
        return TC_ACT_SHOT;
    }
    __u8 mac[ETH_ALEN];
    if (bpf_skb_load_bytes(skb, offsetof(struct ethhdr, h_source), mac, ETH_ALEN) < 0 ||
        bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_dest), mac, ETH_ALEN, 0) < 0)
        return TC_ACT_SHOT;
    skb->mark = (skb->mark & ~cfg->mark_mask) | (cfg->capture_mark & cfg->mark_mask);
    return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
}

SEC("tc")
int tc_pod_egress(struct __sk_buff *skb)
{
    struct ra_flow f = {};
    int began = ra_monitor_begin();
    int verdict = ra_pod_egress(skb, &f);
    ra_monitor_end(began, skb, &f, RA_HOOK_TC_EGRESS);
    return verdict;
}

/* Gives a packet to `sk` and releases it; counts `ok` (RA_DECISION_COUNT: nothing) or the failure. */
static __always_inline int ra_assign(struct __sk_buff *skb, struct bpf_sock *sk, __u32 pod, enum ra_decision ok)
{
    long err = bpf_sk_assign(skb, sk, 0);
    bpf_sk_release(sk);
    if (err) {
        ra_count(pod, RA_DROP_ASSIGN_FAILED);
        return TC_ACT_SHOT;
    }
    if (ok != RA_DECISION_COUNT)
        ra_count(pod, ok);
    return TC_ACT_OK;
}

/* ra_assign, only if `sk` is the proxy's: in the proxy's cgroup when one is configured (read
 * through the packet once assigned: bpf_skb_cgroup_id answers for a request socket with its
 * listener), else by Istio's mark rule. Anything else is dropped, so no app socket that owns the
 * tuple, or that bound the proxy's port and set the mark, ever receives captured traffic. */
static __always_inline int ra_assign_proxy(struct __sk_buff *skb, struct bpf_sock *sk, const struct ra_config *cfg,
                                           __u32 pod, enum ra_decision ok)
{
    if (!cfg->proxy_cgroup && !ra_sk_marked_proxy(sk, cfg)) {
        bpf_sk_release(sk);
        ra_count(pod, RA_DROP_NOT_PROXY);
        return TC_ACT_SHOT;
    }
    if (ra_assign(skb, sk, pod, RA_DECISION_COUNT) != TC_ACT_OK)
        return TC_ACT_SHOT;
    if (cfg->proxy_cgroup && !ra_is_proxy_cgroup(cfg, bpf_skb_cgroup_id(skb))) {
        ra_count(pod, RA_DROP_NOT_PROXY);
        return TC_ACT_SHOT;
    }
    if (ok != RA_DECISION_COUNT)
        ra_count(pod, ok);
    return TC_ACT_OK;
}

/* An inbound packet for `sk`, an established socket that owns its tuple: the proxy's, or one
 * kept from before enrolment (read once assigned: a socket's cookie can only be read through the
 * packet), else dropped. */
static __always_inline int ra_assign_owner(struct __sk_buff *skb, struct bpf_sock *sk, const struct ra_config *cfg,
                                           __u32 pod, const struct ra_flow *f, int bypass)
{
    int marked = cfg->proxy_cgroup || ra_sk_marked_proxy(sk, cfg);
    if (ra_assign(skb, sk, pod, RA_DECISION_COUNT) != TC_ACT_OK)
        return TC_ACT_SHOT;
    if (marked && (!cfg->proxy_cgroup || ra_is_proxy_cgroup(cfg, bpf_skb_cgroup_id(skb))))
        return TC_ACT_OK; /* every packet of every flow: not counted */
    if (!ra_is_new_connection(f)) {
        if (bypass && ra_socket_in(skb, &ra_bypass_flows))
            return TC_ACT_OK; /* a connection a pod that bypasses inbound capture accepted */
        if (ra_is_kept(skb, ra_get_node())) {
            ra_count(pod, RA_KEPT_PASS);
            return TC_ACT_OK;
        }
    }
    ra_count(pod, RA_DROP_NOT_PROXY);
    return TC_ACT_SHOT;
}

/* Records the proxy's listener for the TIME_WAIT hand-off, once its identity has been checked:
 * sk_lookup programs cannot look sockets up themselves, and a stock ztunnel registers nothing.
 * Only a missing entry is written (one map lookup per new connection); the kernel removes an
 * entry when its socket closes, so a restarted proxy's listener is recorded on its first SYN. */
static __always_inline void ra_record_listener(struct bpf_sock *listener, __u32 family, const struct ra_addr *pod,
                                               __u16 port)
{
    struct ra_listener_key k = {};
    k.family = family;
    k.addr = *pod;
    k.port = port;
    struct bpf_sock *known = bpf_map_lookup_elem(&ra_proxy_listeners, &k);
    if (known) {
        bpf_sk_release(known);
        return;
    }
    bpf_map_update_elem(&ra_proxy_listeners, &k, listener, BPF_NOEXIST);
}

/* A non-SYN packet that no socket owns goes to the proxy's listener on `port`, never to the stack
 * (which could find an app listener): the listener completes a handshake whose SYN-ACK was a SYN
 * cookie, or answers with a reset. A listener that passes the identity check is recorded for
 * the pod address `pod`. */
static __always_inline int ra_to_listener(struct __sk_buff *skb, const struct ra_flow *f, __u16 port,
                                          const struct ra_config *cfg, const struct ra_addr *pod_addr,
                                          enum ra_decision ok)
{
    __u32 pod = ra_pod_index(f->family, pod_addr);
    struct bpf_sock *listener = ra_proxy_listener(skb, f, port, cfg);
    if (!listener) {
        ra_count(pod, RA_DROP_NO_LISTENER);
        return TC_ACT_SHOT;
    }
    if (bpf_sk_assign(skb, listener, 0)) {
        bpf_sk_release(listener);
        ra_count(pod, RA_DROP_ASSIGN_FAILED);
        return TC_ACT_SHOT;
    }
    /* ra_proxy_listener checked the mark; the cgroup can only be read once assigned. */
    if (cfg->proxy_cgroup && !ra_is_proxy_cgroup(cfg, bpf_skb_cgroup_id(skb))) {
        bpf_sk_release(listener);
        ra_count(pod, RA_DROP_NOT_PROXY);
        return TC_ACT_SHOT;
    }
    /* Only under an address of this namespace (one published for the interface the packet is on):
     * a forged source must not file this pod's listener under another pod's address. */
    struct ra_iface_key own = { .family = f->family, .addr = *pod_addr, .ifindex = skb->ifindex };
    if (bpf_map_lookup_elem(&ra_ifaces, &own))
        ra_record_listener(listener, f->family, pod_addr, port);
    bpf_sk_release(listener);
    ra_count(pod, ra_is_new_connection(f) ? ok : RA_ORPHAN_TO_PROXY);
    return TC_ACT_OK;
}

/* A packet the egress program turned around: steer it to the proxy socket that owns the flow,
 * or to the proxy's outbound listener. Nothing here may reach an app socket: a socket that owns
 * the tuple but is not the proxy's is refused. */
static __always_inline int ra_outbound(struct __sk_buff *skb, const struct ra_flow *f, const struct ra_config *cfg)
{
    __u32 pod = ra_pod_index(f->family, &f->src);
    struct bpf_sock *sk = ra_flow_socket(skb, f);
    if (sk) {
        if (sk->state == RA_TCP_STATE_TIME_WAIT) {
            if (!ra_is_new_connection(f))
                return ra_assign(skb, sk, pod, RA_ESTABLISHED);
            bpf_sk_release(sk);
            ra_time_wait_handoff(f, &f->src, cfg->outbound_port);
            ra_count(pod, RA_TIME_WAIT_HANDOFF);
            return TC_ACT_OK;
        }
        return ra_assign_proxy(skb, sk, cfg, pod, ra_is_new_connection(f) ? RA_OUTBOUND_CAPTURED : RA_ESTABLISHED);
    }
    return ra_to_listener(skb, f, cfg->outbound_port, cfg, &f->src, RA_OUTBOUND_CAPTURED);
}

/* Inbound for a pod that opted out of inbound capture (`ambient.istio.io/bypass-inbound-capture`):
 * new connections go to the stack and its listeners, as without us. A packet for an established
 * socket still reaches only the proxy's, one the pod accepted, or one kept from before enrolment:
 * the pod's own outbound connections, which the proxy carries, stay closed to injected segments. */
static __always_inline int ra_inbound_bypassed(struct __sk_buff *skb, const struct ra_flow *f, const struct ra_config *cfg,
                                               __u32 pod)
{
    struct bpf_sock *sk = ra_flow_socket(skb, f);
    if (!sk)
        return TC_ACT_OK;
    if (sk->state == RA_TCP_STATE_TIME_WAIT || sk->state == RA_TCP_STATE_NEW_SYN_RECV) {
        bpf_sk_release(sk);
        return TC_ACT_OK;
    }
    return ra_assign_owner(skb, sk, cfg, pod, f, 1);
}

/* A packet from outside the pod. It reaches a socket of the proxy, a kubelet probe flow this
 * node SNATed, or nothing: an app socket that owns its tuple (the proxy's connection to the app,
 * whose 4-tuple an attacker can guess or sniff) never receives it. */
static __always_inline int ra_inbound(struct __sk_buff *skb, const struct ra_flow *f, const struct ra_config *cfg)
{
    struct ra_pod_info *info = ra_pod_lookup(f->family, &f->dst);
    __u32 pod = info ? info->pod_index : 0;
    if (info && (info->flags & RA_POD_BYPASS_INBOUND))
        return ra_inbound_bypassed(skb, f, cfg, pod);
    if (ra_is_probe_ip(cfg, f->family, &f->src)) {
        if (ra_is_probe_flow(cfg, f, 1)) {
            if (ra_is_new_connection(f))
                ra_count(pod, RA_PROBE_PASS);
            return TC_ACT_OK;
        }
        if (ra_is_new_connection(f))
            ra_count(pod, RA_SPOOFED_PROBE);
    }
    int tunnel = f->dport == bpf_htons(cfg->tunnel_port);
    struct bpf_sock *sk = ra_flow_socket(skb, f);
    if (sk) {
        if (sk->state == RA_TCP_STATE_TIME_WAIT) {
            bpf_sk_release(sk);
            /* A non-SYN: the stack answers from the TIME_WAIT socket; no data reaches an app. A SYN
             * goes through the hand-off (to 15008 too: sk_lookup passes no lookup from outside). */
            if (!ra_is_new_connection(f))
                return TC_ACT_OK;
            ra_time_wait_handoff(f, &f->dst, tunnel ? cfg->tunnel_port : cfg->inbound_port);
            ra_count(pod, RA_TIME_WAIT_HANDOFF);
            return TC_ACT_OK;
        }
        return ra_assign_owner(skb, sk, cfg, pod, f, 0);
    }
    /* HBONE reaches the proxy's 15008 listener directly, never an app that bound 15008. */
    return ra_to_listener(skb, f, tunnel ? cfg->tunnel_port : cfg->inbound_port, cfg, &f->dst,
                          tunnel ? RA_HBONE_PASS : RA_INBOUND_CAPTURED);
}

/* What both ingress programs do first: no config or a packet the parser refused is dropped,
 * non-TCP passes, fragmented TCP is dropped and counted (on the pod the packet is for when
 * `inbound`, else on its sender). RA_CONTINUE: a TCP packet to decide on. */
#define RA_CONTINUE -1
static __always_inline int ra_ingress_start(struct __sk_buff *skb, struct ra_config **cfg, struct ra_flow *f, int inbound)
{
    *cfg = ra_get_config();
    if (!*cfg)
        return TC_ACT_SHOT;
    int verdict = ra_parse_pod(skb, f, inbound);
    if (verdict == RA_PASS)
        return TC_ACT_OK;
    if (verdict != RA_TCP)
        return TC_ACT_SHOT;
    if (f->fragment) {
        ra_count(ra_pod_index(f->family, inbound ? &f->dst : &f->src), RA_DROP_FRAGMENT);
        return TC_ACT_SHOT;
    }
    return RA_CONTINUE;
}

static __always_inline int ra_pod_ingress(struct __sk_buff *skb, struct ra_flow *f)
{
    struct ra_config *cfg;
    int start = ra_ingress_start(skb, &cfg, f, 1);
    if (start != RA_CONTINUE)
        return start;
    /* The mark is cleared when a packet enters the pod from the veth, so only our egress
     * program can have set it. */
    if (ra_is_captured(skb, cfg))
        return ra_outbound(skb, f, cfg);
    return ra_inbound(skb, f, cfg);
}

SEC("tc")
int tc_pod_ingress(struct __sk_buff *skb)
{
    struct ra_flow f = {};
    int began = ra_monitor_begin();
    int verdict = ra_pod_ingress(skb, &f);
    ra_monitor_end(began, skb, &f, RA_HOOK_TC_INGRESS);
    return verdict;
}

/* Ingress of a virtual interface listed in the pod's `istio.io/reroute-virtual-interfaces` (a
 * KubeVirt VM's tap device): what arrives there is the VM's outbound traffic, so it is captured
 * as the pod's own outbound is, to the proxy's 15001 (Istio: `-i <iface> -p tcp -j REDIRECT
 * --to-ports 15001`). The capture mark makes policy routing deliver it locally. */
static __always_inline int ra_pod_ingress_reroute(struct __sk_buff *skb, struct ra_flow *f)
{
    struct ra_config *cfg;
    int start = ra_ingress_start(skb, &cfg, f, 0);
    if (start != RA_CONTINUE)
        return start;
    if (!ra_is_new_connection(f)) {
        /* Not a SYN and no socket owns it: the VM's side of a connection into the VM, which the
         * pod forwards (and its conntrack translates); iptables' REDIRECT, too, acts on a
         * connection's first packet only. A socket that owns the tuple still gets the packet
         * only if it is the proxy's (ra_outbound). */
        struct bpf_sock *sk = ra_flow_socket(skb, f);
        if (!sk)
            return TC_ACT_OK;
        bpf_sk_release(sk);
    }
    skb->mark = (skb->mark & ~cfg->mark_mask) | (cfg->capture_mark & cfg->mark_mask);
    return ra_outbound(skb, f, cfg);
}

SEC("tc")
int tc_pod_ingress_reroute(struct __sk_buff *skb)
{
    struct ra_flow f = {};
    int began = ra_monitor_begin();
    int verdict = ra_pod_ingress_reroute(skb, &f);
    ra_monitor_end(began, skb, &f, RA_HOOK_TC_INGRESS);
    return verdict;
}

/* Whether a loopback packet may be for the DNS port `port` (network order), read without pulling
 * the packet: TCP and UDP whose port is at a fixed place are answered here; anything else IP that
 * could hide a transport (IPv4 fragments, IPv6 extension headers) is left to the full parser. Most
 * of a pod's loopback traffic is the proxy's delivery to its app, which this keeps cheap. */
static __always_inline int ra_lo_maybe_dns(struct __sk_buff *skb, __u16 port)
{
    __u16 proto, dport, frag;
    __u8 b[2];
    __u32 l4;
    if (bpf_skb_load_bytes(skb, 12, &proto, sizeof(proto)) < 0)
        return 1;
    if (proto == bpf_htons(ETH_P_IP)) {
        if (bpf_skb_load_bytes(skb, ETH_HLEN, b, 1) < 0 || bpf_skb_load_bytes(skb, ETH_HLEN + 9, b + 1, 1) < 0 ||
            bpf_skb_load_bytes(skb, ETH_HLEN + 6, &frag, sizeof(frag)) < 0)
            return 1;
        if (frag & bpf_htons(0x3fff))
            return 1; /* a fragment: the parser decides */
        l4 = ETH_HLEN + (b[0] & 0xf) * 4;
    } else if (proto == bpf_htons(ETH_P_IPV6)) {
        if (bpf_skb_load_bytes(skb, ETH_HLEN + 6, b + 1, 1) < 0)
            return 1;
        if (ra_is_ipv6_ext(b[1]))
            return 1;
        l4 = ETH_HLEN + 40;
    } else {
        return 0;
    }
    if (b[1] != IPPROTO_TCP && b[1] != IPPROTO_UDP)
        return 0;
    if (bpf_skb_load_bytes(skb, l4 + 2, &dport, sizeof(dport)) < 0)
        return 1;
    return dport == port;
}

/* The socket a loopback query goes to: UDP's, or for TCP the listener a SYN meets. A SYN that
 * meets a TIME_WAIT socket is dropped: the kernel's fresh listener lookup that would follow is
 * not ours to check. *drop is set for that case. */
static __always_inline struct bpf_sock *ra_lo_receiver(struct __sk_buff *skb, const struct ra_flow *f, int udp, int *drop)
{
    struct bpf_sock_tuple t = {};
    __u32 len = ra_tuple(f, &t, f->dport);
    if (udp)
        return bpf_sk_lookup_udp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
    ra_tc_lookup_set(1);
    struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
    ra_tc_lookup_set(0);
    if (sk && sk->state != RA_TCP_STATE_LISTEN) {
        *drop = sk->state == RA_TCP_STATE_TIME_WAIT;
        bpf_sk_release(sk);
        return 0; /* not TIME_WAIT: a SYN on a live tuple, which the stack answers itself */
    }
    return sk;
}

/* The pod's loopback, where the socket hooks send captured queries (127.0.0.1 or ::1 on the proxy's
 * DNS port): a query, UDP or a TCP SYN, reaches only the proxy's DNS socket (its mark, and its
 * cgroup when configured), else it is dropped. The bind hook refuses the port to apps from
 * enrolment on; this also covers a socket that held it before, or that the kernel bound to it by
 * itself (autobind), as iptables mode's ISTIO_INPUT does at delivery. Attached only to pods with
 * DNS capture; everything else on loopback passes: no other capture is decided here. Counted on
 * index 0: loopback addresses name no pod. */
static __always_inline int ra_pod_loopback(struct __sk_buff *skb, struct ra_flow *f, const struct ra_config *cfg)
{
    int verdict = ra_parse(skb, f);
    int udp = verdict == RA_PASS && f->proto == IPPROTO_UDP;
    if (udp && f->udp_unread) {
        ra_count(0, RA_DROP_MALFORMED); /* its port cannot be read: it may be a query */
        return TC_ACT_SHOT;
    }
    if (f->dport != bpf_htons(cfg->dns_port) || !(udp || (verdict == RA_TCP && ra_is_new_connection(f))))
        return TC_ACT_OK;
    if (f->fragment || (udp && bpf_skb_load_bytes(skb, f->l4_off, &f->sport, sizeof(f->sport)) < 0)) {
        ra_count(0, RA_DROP_FRAGMENT);
        return TC_ACT_SHOT;
    }
    int drop = 0;
    struct bpf_sock *sk = ra_lo_receiver(skb, f, udp, &drop);
    if (!sk) {
        if (drop)
            ra_count(0, RA_DROP_NOT_PROXY);
        return drop ? TC_ACT_SHOT : TC_ACT_OK; /* nobody holds the port: the stack answers (unreachable, reset) */
    }
    struct bpf_sock *full = bpf_sk_fullsock(sk);
    if (!full || (full->mark & cfg->mark_mask) != (cfg->proxy_mark & cfg->mark_mask)) {
        bpf_sk_release(sk);
        ra_count(0, RA_DROP_NOT_PROXY);
        return TC_ACT_SHOT;
    }
    if (ra_assign(skb, sk, 0, RA_DECISION_COUNT) != TC_ACT_OK)
        return TC_ACT_SHOT;
    if (cfg->proxy_cgroup && !ra_is_proxy_cgroup(cfg, bpf_skb_cgroup_id(skb))) {
        ra_count(0, RA_DROP_NOT_PROXY);
        return TC_ACT_SHOT;
    }
    return TC_ACT_OK;
}

SEC("tc")
int tc_pod_loopback(struct __sk_buff *skb)
{
    struct ra_config *cfg = ra_get_config();
    if (!cfg || !cfg->dns_port || !ra_lo_maybe_dns(skb, bpf_htons(cfg->dns_port)))
        return TC_ACT_OK;
    struct ra_flow f = {};
    int began = ra_monitor_begin();
    int verdict = ra_pod_loopback(skb, &f, cfg);
    ra_monitor_end(began, skb, &f, RA_HOOK_TC_INGRESS);
    return verdict;
}

/* Every listener lookup of TCP in the pod's namespace runs here, whatever the interface: the
 * capture that does not depend on tc programs being attached. A SYN our tc programs captured was
 * assigned a socket and never gets here; what does is
 *   - a SYN that met a TIME_WAIT socket: the proxy listener recorded by tc_pod_ingress is chosen;
 *   - a lookup on an interface that carries our tc programs (ra_ifaces): a flow tc let through
 *     (a probe), or one from inside the pod (the proxy's delivery to an app: the kernel reports
 *     local traffic on the device of the destination address), or over loopback: left alone;
 *   - anything else came in through an interface no tc program watches (added to the pod after
 *     enrolment, not attached yet): dropped and counted, never given to an app's listener. */
SEC("sk_lookup")
int sk_lookup_pod(struct bpf_sk_lookup *ctx)
{
    if (ctx->protocol != IPPROTO_TCP || ra_in_tc_lookup())
        return SK_PASS; /* not TCP, or bpf_sk_lookup_tcp from tc_pod_*: its answer is checked there */
    struct ra_tuple_key k = {};
    k.family = ctx->family;
    k.local_port = ctx->local_port;
    k.remote_port = bpf_ntohs(ctx->remote_port);
    if (ctx->family == RA_FAMILY_INET) {
        k.local.words[0] = ctx->local_ip4;
        k.remote.words[0] = ctx->remote_ip4;
    } else {
        k.local.words[0] = ctx->local_ip6[0]; k.local.words[1] = ctx->local_ip6[1];
        k.local.words[2] = ctx->local_ip6[2]; k.local.words[3] = ctx->local_ip6[3];
        k.remote.words[0] = ctx->remote_ip6[0]; k.remote.words[1] = ctx->remote_ip6[1];
        k.remote.words[2] = ctx->remote_ip6[2]; k.remote.words[3] = ctx->remote_ip6[3];
    }
    struct ra_listener_key *target = bpf_map_lookup_elem(&ra_tw_handoff, &k);
    if (!target) {
        if (ctx->ingress_ifindex == RA_LOOPBACK_IFINDEX)
            return SK_PASS;
        struct ra_iface_key ik = { .family = k.family, .addr = k.local, .ifindex = ctx->ingress_ifindex };
        __u32 *pod = bpf_map_lookup_elem(&ra_ifaces, &ik);
        if (pod)
            return SK_PASS;
        ra_count(ra_pod_index(k.family, &k.local), RA_DROP_UNWATCHED);
        return SK_DROP;
    }
    struct ra_listener_key want = *target;
    bpf_map_delete_elem(&ra_tw_handoff, &k);
    struct bpf_sock *sk = bpf_map_lookup_elem(&ra_proxy_listeners, &want);
    if (!sk) {
        ra_count(ra_pod_index(want.family, &want.addr), RA_DROP_NO_LISTENER);
        return SK_DROP; /* never fall through to the app's listener */
    }
    long err = bpf_sk_assign(ctx, sk, 0);
    bpf_sk_release(sk);
    return err ? SK_DROP : SK_PASS;
}

/* Node side: a kubelet connect() to an in-mesh pod is bound to the probe IP. The node holds the
 * probe IP as a local address (on loopback), so the pod's replies come back to
 * the kubelet's socket with no rewriting and no conntrack. Never refuses a connect(). */
SEC("cgroup/connect4")
int cg_node_connect4(struct bpf_sock_addr *ctx)
{
    struct ra_config *cfg = ra_get_config();
    struct ra_addr dst = { .words = { ctx->user_ip4 } };
    __u32 pod = cfg ? ra_node_connect_pod(ctx, RA_FAMILY_INET, &dst) : 0;
    if (!pod || !ra_node_is_kubelet(cfg, pod))
        return 1;
    struct sockaddr_in sa = { .sin_family = RA_FAMILY_INET, .sin_addr.s_addr = cfg->probe_ipv4 };
    if (bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa)) == 0)
        ra_node_mark_probe_socket(ctx, pod);
    else
        ra_count(pod, RA_HOST_CAPTURED);
    return 1;
}

/* The same for IPv6, and for a v4-mapped destination on an IPv6 socket (bound to the mapped
 * IPv4 probe IP). */
SEC("cgroup/connect6")
int cg_node_connect6(struct bpf_sock_addr *ctx)
{
    struct ra_config *cfg = ra_get_config();
    if (!cfg)
        return 1;
    struct ra_addr dst = { .words = { ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3] } };
    int mapped = dst.words[0] == 0 && dst.words[1] == 0 && dst.words[2] == bpf_htonl(0xffff);
    struct ra_addr pod_addr = { .words = { dst.words[3] } };
    __u32 pod = mapped ? ra_node_connect_pod(ctx, RA_FAMILY_INET, &pod_addr) : ra_node_connect_pod(ctx, RA_FAMILY_INET6, &dst);
    if (!pod || !ra_node_is_kubelet(cfg, pod))
        return 1;
    struct sockaddr_in6 sa = { .sin6_family = RA_FAMILY_INET6 };
    if (mapped) {
        sa.sin6_addr.in6_u.u6_addr32[2] = bpf_htonl(0xffff);
        sa.sin6_addr.in6_u.u6_addr32[3] = cfg->probe_ipv4;
    } else {
        __builtin_memcpy(sa.sin6_addr.in6_u.u6_addr32, cfg->probe_ipv6, 16);
    }
    if (bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa)) == 0)
        ra_node_mark_probe_socket(ctx, pod);
    else
        ra_count(pod, RA_HOST_CAPTURED);
    return 1;
}

/* Node side: as a socket the connect hook bound starts its handshake (the source port is known
 * now), its flow is recorded for the pod programs; when the socket closes, the flow is marked
 * closed. Every other socket op and socket: nothing. */
SEC("sockops")
int sockops_node(struct bpf_sock_ops *ctx)
{
    __u32 op = ctx->op;
    if (op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) {
        ra_node_record_bypass_flow(ctx);
        return 1;
    }
    if (op != BPF_SOCK_OPS_TCP_CONNECT_CB && op != BPF_SOCK_OPS_STATE_CB)
        return 1;
    /* A socket that connects (again: a kept or accepted socket can disconnect and connect
     * elsewhere) or closes is no longer the connection it was kept or accepted as. */
    ra_node_forget_socket(ctx, op);
    struct bpf_sock *sk = ctx->sk;
    if (!sk || !bpf_sk_storage_get(&ra_probe_sockets, sk, 0, 0))
        return 1;
    struct ra_flow_key k = {};
    if (!ra_node_flow_key(ctx, &k))
        return 1;
    if (op == BPF_SOCK_OPS_STATE_CB) {
        if (ctx->args[1] == BPF_TCP_CLOSE)
            ra_node_close_flow(&k);
        return 1;
    }
    __u32 pod = ra_pod_index(k.family, &k.pod);
    if (!pod)
        return 1;
    struct ra_flow_value v = { .original_source = k.probe };
    bpf_map_update_elem(&ra_probe_flows, &k, &v, BPF_ANY);
    bpf_sock_ops_cb_flags_set(ctx, BPF_SOCK_OPS_STATE_CB_FLAG); /* to hear when it closes */
    ra_count(pod, RA_PROBE_SNAT);
    return 1;
}

/* DNS capture (dns.h): the pods' socket hooks, on the node's cgroup root beside the node's own
 * programs. Each acts only for sockets in the namespace of a pod with DNS capture (or, for the
 * answers, sockets whose query it redirected); only bind ever refuses a call. */
SEC("cgroup/connect4")
int cg_pod_connect4(struct bpf_sock_addr *ctx)
{
    ra_dns_redirect4(ctx);
    return 1;
}

SEC("cgroup/connect6")
int cg_pod_connect6(struct bpf_sock_addr *ctx)
{
    ra_dns_redirect6(ctx);
    return 1;
}

SEC("cgroup/sendmsg4")
int cg_pod_sendmsg4(struct bpf_sock_addr *ctx)
{
    ra_dns_redirect4(ctx);
    return 1;
}

SEC("cgroup/sendmsg6")
int cg_pod_sendmsg6(struct bpf_sock_addr *ctx)
{
    ra_dns_redirect6(ctx);
    return 1;
}

SEC("cgroup/bind4")
int cg_pod_bind4(struct bpf_sock_addr *ctx)
{
    return ra_dns_bind_allowed(ctx);
}

SEC("cgroup/bind6")
int cg_pod_bind6(struct bpf_sock_addr *ctx)
{
    return ra_dns_bind_allowed(ctx);
}

SEC("cgroup/recvmsg4")
int cg_pod_recvmsg4(struct bpf_sock_addr *ctx)
{
    ra_dns_restore4(ctx);
    return 1;
}

SEC("cgroup/recvmsg6")
int cg_pod_recvmsg6(struct bpf_sock_addr *ctx)
{
    ra_dns_restore6(ctx);
    return 1;
}

SEC("cgroup/getpeername4")
int cg_pod_getpeername4(struct bpf_sock_addr *ctx)
{
    ra_dns_restore4(ctx);
    return 1;
}

SEC("cgroup/getpeername6")
int cg_pod_getpeername6(struct bpf_sock_addr *ctx)
{
    ra_dns_restore6(ctx);
    return 1;
}

/* nf_pod_egress: namespace-wide, every packet the pod sends or forwards, after routing. The tc
 * programs capture per interface, so an interface that appears after enrolment carries none until
 * the agent's watcher attaches them (milliseconds); this closes that window. A packet may leave
 * only over loopback or an interface published in ra_egress_ifaces for this namespace (the agent
 * publishes an interface after its tc programs are attached, and withdraws it before they go);
 * anything else is dropped and counted, whatever its protocol. */
SEC("netfilter")
int nf_pod_egress(struct bpf_nf_ctx *ctx)
{
    const struct nf_hook_state *state = ctx->state;
    struct net_device *out = state->out;
    if (!out || (out->flags & RA_IFF_LOOPBACK))
        return RA_NF_ACCEPT;
    struct ra_netns_iface k = { .netns = state->net->ns.inum, .ifindex = out->ifindex };
    if (bpf_map_lookup_elem(&ra_egress_ifaces, &k))
        return RA_NF_ACCEPT;
    k.ifindex = 0;
    __u32 *pod = bpf_map_lookup_elem(&ra_egress_ifaces, &k);
    ra_count(pod ? *pod : 0, RA_DROP_UNWATCHED);
    return RA_NF_DROP;
}

/* Two kinds of socket send frames that no tc program sees (they call the driver directly,
 * __dev_direct_xmit): AF_PACKET with PACKET_QDISC_BYPASS, and AF_XDP. A process in a meshed pod
 * (CAP_NET_RAW, a default capability, is enough for both) could speak TCP through them with no
 * capture at all, as AF_PACKET always can under iptables rules. These hooks refuse both in the
 * namespaces of meshed pods (EPERM, counted); elsewhere they change nothing. Reading frames
 * (tcpdump) and AF_PACKET sends through the qdisc, which tc_pod_egress sees, stay allowed.
 * Node-wide, like every LSM hook: each call costs a few comparisons before the family test fails. */
SEC("lsm/socket_create")
int lsm_pod_socket_create(unsigned long long *ctx)
{
    int family = (int)ctx[0], protocol = (int)ctx[2], kern = (int)ctx[3], ret = (int)ctx[4];
    if (ret || kern || family != RA_AF_XDP)
        return ret;
    if (protocol == RA_LSM_PROBE_PROTOCOL)
        return -RA_LSM_PROBE_ERRNO; /* the agent checking that this hook runs */
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    __u32 *pod = ra_meshed_netns(BPF_CORE_READ(task, nsproxy, net_ns, ns.inum));
    if (!pod)
        return 0;
    ra_count(*pod, RA_REFUSED_TC_BYPASS);
    return -RA_EPERM;
}

/* The socket's own namespace decides (the one it sends in), not the caller's. */
SEC("lsm/socket_setsockopt")
int lsm_pod_setsockopt(unsigned long long *ctx)
{
    struct socket *sock = (struct socket *)ctx[0];
    int level = (int)ctx[1], optname = (int)ctx[2], ret = (int)ctx[3];
    if (ret || level != RA_SOL_PACKET || optname != RA_PACKET_QDISC_BYPASS)
        return ret;
    __u32 *pod = ra_meshed_netns(BPF_CORE_READ(sock, sk, __sk_common.skc_net.net, ns.inum));
    if (!pod)
        return 0;
    ra_count(*pod, RA_REFUSED_TC_BYPASS);
    return -RA_EPERM;
}
