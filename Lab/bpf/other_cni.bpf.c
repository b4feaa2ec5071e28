/* Lab only: stand-ins for the programs another CNI puts on the node side of each pod's veth and on
 * the node's uplink (Cilium, Calico in eBPF mode). The coexistence tests attach them beside our
 * dataplane to show that capture and kubelet probes do not depend on what runs there.
 *
 *   other_pass         returns TC_ACT_OK: ends the clsact chain (or the tcx chain: TCX_PASS)
 *   other_continue     returns TC_ACT_UNSPEC: the next filter runs
 *   other_host_routing forwards with a FIB lookup and bpf_redirect_neigh, past the node's
 *                      netfilter and bridge, as Cilium's BPF host routing does; local traffic passes
 *   other_to_endpoint  on the uplink: IPv4 packets for a pod listed in other_cni_endpoints go
 *                      straight into the pod with bpf_redirect_peer, past the node's stack
 *
 * Each counts what it saw in other_cni_seen, so a test can prove the program ran. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

enum other_seen {
    OTHER_PASS = 0,
    OTHER_CONTINUE = 1,
    OTHER_ROUTING_SEEN = 2,
    OTHER_ROUTING_REDIRECTED = 3,
    OTHER_ENDPOINT_SEEN = 4,
    OTHER_ENDPOINT_REDIRECTED = 5,
    OTHER_SEEN_MAX = 8,
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, OTHER_SEEN_MAX);
    __type(key, __u32);
    __type(value, __u64);
} other_cni_seen SEC(".maps");

/* A local pod as the uplink program delivers to it: the node side of its veth, its MAC and the
 * node side's MAC. Keyed by the pod's IPv4 address (network order). */
struct other_endpoint {
    __u32 host_ifindex;
    __u8 pod_mac[ETH_ALEN];
    __u8 host_mac[ETH_ALEN];
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, struct other_endpoint);
} other_cni_endpoints SEC(".maps");

static __always_inline void seen(__u32 what)
{
    __u64 *n = bpf_map_lookup_elem(&other_cni_seen, &what);
    if (n)
        __sync_fetch_and_add(n, 1);
}

SEC("tc")
int other_pass(struct __sk_buff *skb)
{
    seen(OTHER_PASS);
    return TC_ACT_OK;
}

SEC("tc")
int other_continue(struct __sk_buff *skb)
{
    seen(OTHER_CONTINUE);
    return TC_ACT_UNSPEC;
}

SEC("tc")
int other_host_routing(struct __sk_buff *skb)
{
    seen(OTHER_ROUTING_SEEN);
    void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return TC_ACT_OK;
    struct bpf_fib_lookup p = { .ifindex = skb->ingress_ifindex };
    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > end)
            return TC_ACT_OK;
        p.family = 2; /* AF_INET */
        p.tos = ip->tos;
        p.l4_protocol = ip->protocol;
        p.tot_len = bpf_ntohs(ip->tot_len);
        p.ipv4_src = ip->saddr;
        p.ipv4_dst = ip->daddr;
    } else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) > end)
            return TC_ACT_OK;
        p.family = 10; /* AF_INET6 */
        p.l4_protocol = ip6->nexthdr;
        p.tot_len = bpf_ntohs(ip6->payload_len);
        __builtin_memcpy(p.ipv6_src, &ip6->saddr, 16);
        __builtin_memcpy(p.ipv6_dst, &ip6->daddr, 16);
    } else {
        return TC_ACT_OK;
    }
    long rc = bpf_fib_lookup(skb, &p, sizeof(p), 0);
    if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
        return TC_ACT_OK; /* local, unreachable or not forwarded: the node's stack takes it */
    seen(OTHER_ROUTING_REDIRECTED);
    return bpf_redirect_neigh(p.ifindex, 0, 0, 0);
}

SEC("tc")
int other_to_endpoint(struct __sk_buff *skb)
{
    seen(OTHER_ENDPOINT_SEEN);
    void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
        return TC_ACT_OK;
    __u32 dst = ip->daddr;
    struct other_endpoint *ep = bpf_map_lookup_elem(&other_cni_endpoints, &dst);
    if (!ep)
        return TC_ACT_OK;
    struct other_endpoint e = *ep;
    if (bpf_skb_store_bytes(skb, 0, e.pod_mac, ETH_ALEN, 0) < 0 ||
        bpf_skb_store_bytes(skb, ETH_ALEN, e.host_mac, ETH_ALEN, 0) < 0)
        return TC_ACT_SHOT;
    seen(OTHER_ENDPOINT_REDIRECTED);
    return bpf_redirect_peer(e.host_ifindex, 0);
}
