/* The maps, pinned by name under the agent's bpffs directory. */
#pragma once
#include "redirect_abi.h"

/* What bpftool prints a map's entries with: its BTF types. The agent's code reads an address as four
 * words (struct ra_addr); these views of the same layouts give the maps that hold addresses bytes
 * instead, an IPv4 address in the first four, so `bpftool map dump` shows [10,244,1,2]. */
union ra_addr_bytes {
    __u8 ipv4[4];
    __u8 ipv6[16];
};
struct ra_pod_key_view {
    __u32 family;
    union ra_addr_bytes addr;
};
struct ra_iface_key_view {
    __u32 family;
    union ra_addr_bytes addr;
    __u32 ifindex;
};
struct ra_flow_key_view {
    __u32 family;
    union ra_addr_bytes pod;
    union ra_addr_bytes probe;
    __u16 pod_port;
    __u16 probe_port;
};
struct ra_listener_key_view {
    __u32 family;
    union ra_addr_bytes addr;
    __u32 port;
};
struct ra_tuple_key_view {
    __u32 family;
    union ra_addr_bytes local;
    union ra_addr_bytes remote;
    __u16 local_port;
    __u16 remote_port;
};
struct ra_config_view {
    __u8 probe_ipv4[4];
    __u8 probe_ipv6[16];
    __u16 outbound_port;
    __u16 inbound_port;
    __u16 tunnel_port;
    __u16 dns_port;
    __u32 proxy_mark;
    __u32 mark_mask;
    __u32 capture_mark;
    __u32 draining_proxies;
    __u64 proxy_cgroup;
    __u64 kubelet_cgroup;
};
struct ra_flow_value_view {
    union ra_addr_bytes original_source;
    __u64 closed_ns;
};
#define RA_SAME_LAYOUT(view, abi, a, b)                                                              \
    _Static_assert(sizeof(struct view) == sizeof(struct abi) &&                                      \
                       __builtin_offsetof(struct view, a) == __builtin_offsetof(struct abi, a) &&    \
                       __builtin_offsetof(struct view, b) == __builtin_offsetof(struct abi, b),      \
                   #view " must have " #abi "'s layout")
RA_SAME_LAYOUT(ra_pod_key_view, ra_pod_key, family, addr);
RA_SAME_LAYOUT(ra_iface_key_view, ra_iface_key, addr, ifindex);
RA_SAME_LAYOUT(ra_flow_key_view, ra_flow_key, probe, probe_port);
RA_SAME_LAYOUT(ra_listener_key_view, ra_listener_key, addr, port);
RA_SAME_LAYOUT(ra_tuple_key_view, ra_tuple_key, remote, remote_port);
RA_SAME_LAYOUT(ra_config_view, ra_config, dns_port, kubelet_cgroup);
RA_SAME_LAYOUT(ra_flow_value_view, ra_flow_value, original_source, closed_ns);

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, RA_MAX_PODS * 2);
    __type(key, struct ra_pod_key_view);
    __type(value, struct ra_pod_info);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} ra_pods SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct ra_config_view);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} ra_config SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, RA_MAX_PODS * RA_COUNTER_SLOTS_PER_POD);
    __type(key, struct ra_counter_key);
    __type(value, __u64);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} ra_counters SEC(".maps");

/* LRU: dead flows are evicted, so the map cannot fill up. */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, RA_MAX_PROBE_FLOWS);
    __type(key, struct ra_flow_key_view);
    __type(value, struct ra_flow_value_view);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} ra_probe_flows SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, RA_MAX_TW_HANDOFFS);
    __type(key, struct ra_tuple_key_view);
    __type(value, struct ra_listener_key_view);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} ra_tw_handoff SEC(".maps");

/* The proxy's listening sockets, recorded by tc_pod_ingress once their identity is checked; read by
 * sk_lookup for the TIME_WAIT hand-off. */
struct {
    __uint(type, BPF_MAP_TYPE_SOCKHASH);
    __uint(max_entries, RA_MAX_PODS * 6);
    __type(key, struct ra_listener_key);
    __type(value, __u64);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} ra_proxy_listeners SEC(".maps");

/* Which (local address, interface) pairs of enrolled pods carry our tc programs (struct
 * ra_iface_key); written by the agent as it attaches. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, RA_MAX_IFACE_ENTRIES);
    __type(key, struct ra_iface_key_view);
    __type(value, __u32);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} ra_ifaces SEC(".maps");

/* Which interfaces of which enrolled namespaces carry our tc programs (struct ra_netns_iface),
 * written by the agent as it attaches; read by the netfilter egress guard. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, RA_MAX_IFACE_ENTRIES);
    __type(key, struct ra_netns_iface);
    __type(value, __u32);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} ra_egress_ifaces SEC(".maps");

/* Set on this CPU while a tc program asks the kernel for a socket: the kernel's listener lookup
 * runs the namespace's sk_lookup program for those calls too, and it must tell them from the
 * stack's own lookups. Safe per CPU: tc programs and the lookups they make run with bottom
 * halves off, so nothing else runs on the CPU in between. */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u32);
    __uint(pinning, LIBBPF_PIN_BY_NAME); /* shared by every generation of the programs across an upgrade */
} ra_tc_lookup SEC(".maps");

/* The node's settings that are not capture config (struct ra_node), one entry. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct ra_node);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} ra_node SEC(".maps");

/* Sockets of the kubelet that cg_node_connect* bound to the probe IP: only these become probe
 * flows, not a host process that binds the probe IP itself. Freed with the socket. */
struct {
    __uint(type, BPF_MAP_TYPE_SK_STORAGE);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, int);
    __type(value, __u32);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} ra_probe_sockets SEC(".maps");

/* Connections kept from before their pod's enrolment, by socket cookie (see struct ra_node). */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, RA_MAX_KEPT_CONNECTIONS);
    __type(key, __u64);
    __type(value, __u32);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} ra_kept SEC(".maps");

/* Accepted connections of pods whose inbound capture is bypassed (see struct ra_node). */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, RA_MAX_BYPASS_FLOWS);
    __type(key, __u64);
    __type(value, __u32);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} ra_bypass_flows SEC(".maps");

/* Sockets that called connect() while a pod bypasses inbound capture: never recorded as accepted
 * connections (see ra_node_record_bypass_flow). Freed with the socket. */
struct {
    __uint(type, BPF_MAP_TYPE_SK_STORAGE);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, int);
    __type(value, __u32);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} ra_connecting_sockets SEC(".maps");

/* Pods' namespaces whose DNS is captured, by netns cookie (struct ra_dns_pod); written by the
 * agent as it enrols a pod, read by the node's socket hooks. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, RA_MAX_PODS);
    __type(key, __u64);
    __type(value, struct ra_dns_pod);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} ra_dns_netns SEC(".maps");

/* Where each redirected DNS socket's query really went (struct ra_dns_origin). Freed with the socket. */
struct {
    __uint(type, BPF_MAP_TYPE_SK_STORAGE);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, int);
    __type(value, struct ra_dns_origin);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} ra_dns_origins SEC(".maps");

/* Cgroup ids of proxies another proxy replaced that still run (a ztunnel rolling upgrade drains
 * its connections): their sockets are the proxy's too. Read only while ra_config.draining_proxies
 * is nonzero. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16);
    __type(key, __u64);
    __type(value, __u32);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} ra_proxy_cgroups SEC(".maps");
