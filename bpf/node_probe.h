/* The node side of kubelet probes: the kubelet's connections to in-mesh pods get the probe IP as
 * their source when they are made (bpf_bind in the connect hook), and are recorded as probe flows
 * as they start (sockops), so the pod programs let exactly them through. Nothing runs on the host
 * side of the pod's veth, where the primary CNI's own programs may run first and end the chain. */
#pragma once
#include <linux/in.h>
#include <linux/in6.h>
#include "maps.h"
#include "counters.h"

static __always_inline struct ra_node *ra_get_node(void)
{
    __u32 zero = 0;
    return bpf_map_lookup_elem(&ra_node, &zero);
}

/* The in-mesh pod a connect() of the node goes to, or 0: only TCP, only from the node's own
 * namespace (every pod's processes are in the cgroups below the root as well). */
static __always_inline __u32 ra_node_connect_pod(struct bpf_sock_addr *ctx, __u32 family, const struct ra_addr *dst)
{
    struct ra_node *node = ra_get_node();
    if (!node || !node->netns_cookie || ctx->protocol != IPPROTO_TCP)
        return 0;
    if (bpf_get_netns_cookie(ctx) != node->netns_cookie)
        return 0;
    return ra_pod_index(family, dst);
}

/* Whether the connecting process is the kubelet (any host process when no kubelet cgroup is
 * configured, as Istio). Counts the others, whose connections keep their source and are captured. */
static __always_inline int ra_node_is_kubelet(const struct ra_config *cfg, __u32 pod)
{
    if (!cfg->kubelet_cgroup || bpf_get_current_cgroup_id() == cfg->kubelet_cgroup)
        return 1;
    ra_count(pod, RA_HOST_CAPTURED);
    return 0;
}

/* After a successful bind to the probe IP: marks the socket so sockops records its flow. */
static __always_inline void ra_node_mark_probe_socket(struct bpf_sock_addr *ctx, __u32 pod)
{
    struct bpf_sock *sk = ctx->sk;
    if (!sk || !bpf_sk_storage_get(&ra_probe_sockets, sk, 0, BPF_SK_STORAGE_GET_F_CREATE))
        ra_count(pod, RA_HOST_CAPTURED); /* bound but never recorded: the pod captures it */
}

/* The flow of a marked socket as the pod will see it, from sockops' view of the connection.
 * A v4-mapped IPv6 connection is IPv4 on the wire and is keyed so. Returns 0 when unusable. */
static __always_inline int ra_node_flow_key(const struct bpf_sock_ops *ctx, struct ra_flow_key *k)
{
    /* Every field is read up front, at its constant offset: the verifier refuses a context
     * access through a pointer the compiler computed by choosing between two field offsets. */
    __u32 family = ctx->family, remote4 = ctx->remote_ip4, local4 = ctx->local_ip4;
    __u32 r0 = ctx->remote_ip6[0], r1 = ctx->remote_ip6[1], r2 = ctx->remote_ip6[2], r3 = ctx->remote_ip6[3];
    __u32 l0 = ctx->local_ip6[0], l1 = ctx->local_ip6[1], l2 = ctx->local_ip6[2], l3 = ctx->local_ip6[3];
    __u32 remote_port = ctx->remote_port, local_port = ctx->local_port;
    if (family == RA_FAMILY_INET) {
        k->family = RA_FAMILY_INET;
        k->pod.words[0] = remote4;
        k->probe.words[0] = local4;
    } else if (family == RA_FAMILY_INET6 && r0 == 0 && r1 == 0 && r2 == bpf_htonl(0xffff)) {
        k->family = RA_FAMILY_INET;
        k->pod.words[0] = r3;
        k->probe.words[0] = l3;
    } else if (family == RA_FAMILY_INET6) {
        k->family = RA_FAMILY_INET6;
        k->pod.words[0] = r0; k->pod.words[1] = r1; k->pod.words[2] = r2; k->pod.words[3] = r3;
        k->probe.words[0] = l0; k->probe.words[1] = l1; k->probe.words[2] = l2; k->probe.words[3] = l3;
    } else {
        return 0;
    }
    /* sockops: remote_port is the network-order port in the upper half, local_port host order. */
    k->pod_port = bpf_htons((__u16)bpf_ntohl(remote_port));
    k->probe_port = bpf_htons((__u16)local_port);
    return 1;
}

/* The kubelet's socket closed: its flow keeps only its tail (see struct ra_flow_value). */
static __always_inline void ra_node_close_flow(const struct ra_flow_key *k)
{
    struct ra_flow_value *v = bpf_map_lookup_elem(&ra_probe_flows, k);
    if (v && !v->closed_ns)
        v->closed_ns = bpf_ktime_get_ns() | 1; /* never 0: 0 means open */
}

/* A connection a pod accepted, as it is established: recorded when the pod has inbound capture
 * bypassed, so its packets may leave the pod (see ra_is_bypass_reply). Runs for every passive
 * connection on the node; nothing more than a flag test while no pod bypasses. */
static __always_inline void ra_node_record_bypass_flow(struct bpf_sock_ops *ctx)
{
    struct ra_node *node = ra_get_node();
    if (!node || !node->bypass_pods)
        return;
    __u32 family = ctx->family, local4 = ctx->local_ip4;
    __u32 l0 = ctx->local_ip6[0], l1 = ctx->local_ip6[1], l2 = ctx->local_ip6[2], l3 = ctx->local_ip6[3];
    struct ra_addr a = {};
    __u32 fam = RA_FAMILY_INET;
    if (family == RA_FAMILY_INET) {
        a.words[0] = local4;
    } else if (family == RA_FAMILY_INET6 && l0 == 0 && l1 == 0 && l2 == bpf_htonl(0xffff)) {
        a.words[0] = l3;
    } else if (family == RA_FAMILY_INET6) {
        fam = RA_FAMILY_INET6;
        a.words[0] = l0; a.words[1] = l1; a.words[2] = l2; a.words[3] = l3;
    } else {
        return;
    }
    struct ra_pod_info *info = ra_pod_lookup(fam, &a);
    if (!info || !(info->flags & RA_POD_BYPASS_INBOUND))
        return;
    /* A socket that called connect() and completed by a simultaneous open (a SYN injected from
     * inside the pod) also reaches here: it is the pod's own outbound connection, never a reply. */
    struct bpf_sock *sk = ctx->sk;
    if (!sk || bpf_sk_storage_get(&ra_connecting_sockets, sk, 0, 0))
        return;
    __u64 cookie = bpf_get_socket_cookie(ctx);
    __u32 pod = info->pod_index;
    bpf_map_update_elem(&ra_bypass_flows, &cookie, &pod, BPF_ANY);
    bpf_sock_ops_cb_flags_set(ctx, BPF_SOCK_OPS_STATE_CB_FLAG); /* forgotten when it closes */
}

/* A socket that connects, or closes: whatever it was kept or accepted as, it is no longer. While
 * a pod bypasses inbound capture, connecting sockets are also marked, so a simultaneous open is
 * never taken for an accepted connection. A flag test and nothing more while nothing is kept or
 * bypassed. */
static __always_inline void ra_node_forget_socket(struct bpf_sock_ops *ctx, __u32 op)
{
    struct ra_node *node = ra_get_node();
    if (!node || !(node->kept_connections || node->bypass_pods))
        return;
    if (op == BPF_SOCK_OPS_STATE_CB && ctx->args[1] != BPF_TCP_CLOSE)
        return;
    __u64 cookie = bpf_get_socket_cookie(ctx);
    if (node->kept_connections)
        bpf_map_delete_elem(&ra_kept, &cookie);
    if (node->bypass_pods) {
        bpf_map_delete_elem(&ra_bypass_flows, &cookie);
        struct bpf_sock *sk = ctx->sk;
        if (op == BPF_SOCK_OPS_TCP_CONNECT_CB && sk)
            bpf_sk_storage_get(&ra_connecting_sockets, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    }
}
