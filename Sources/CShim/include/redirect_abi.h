/* The layout of every BPF map key and value, shared by bpf/redirect.bpf.c and the Swift agent
 * (imported through CShim). Named fields so `bpftool map dump` prints readable structs.
 * Addresses and ports are in network byte order unless a name says otherwise. */
#ifndef REDIRECT_ABI_H
#define REDIRECT_ABI_H

#include <linux/types.h>

#define RA_MAX_PODS 16384
#define RA_MAX_PROBE_FLOWS 65536
#define RA_MAX_TW_HANDOFFS 4096
/* Local addresses x watched interfaces, over all pods. */
#define RA_MAX_IFACE_ENTRIES 65536
#define RA_FAMILY_INET 2
#define RA_FAMILY_INET6 10
/* IPv6 extension headers the parser walks before it gives up and drops the packet. */
#define RA_MAX_EXT_HEADERS 8

/* An IPv4 (in word 0) or IPv6 address. */
struct ra_addr {
    __u32 words[4];
};

/* In-mesh pods, keyed by each of their addresses. */
struct ra_pod_key {
    __u32 family;
    struct ra_addr addr;
};

/* Pod flags. */
enum ra_pod_flags {
    RA_POD_CREATED_CLSACT_POD = 1,  /* we created the clsact qdisc on the pod's interface */
    RA_POD_CREATED_CLSACT_HOST = 2, /* an earlier agent created the clsact qdisc on the host-side veth (it
                                       attached probe SNAT programs there; this one removes them) */
    RA_POD_SET_ACCEPT_LOCAL = 4,    /* we changed the pod interface's accept_local from 0 to 1 */
    RA_POD_BYPASS_INBOUND = 8,      /* inbound is not captured (ambient.istio.io/bypass-inbound-capture): the stack
                                       delivers it; outbound is captured as ever */
    RA_POD_DNS_CAPTURE = 16,        /* DNS is captured to the proxy's DNS port (struct ra_dns_pod): a UDP datagram to
                                       port 53 that leaves the pod from another socket than the proxy's is dropped */
    RA_POD_CREATED_CLSACT_LO = 32,  /* we created the clsact qdisc on the pod's loopback (tc_pod_loopback, with DNS
                                       capture in clsact mode) */
};

struct ra_pod_info {
    __u32 pod_index;     /* small id for counters, allocated by the agent */
    __u32 pod_ifindex;   /* the pod's interface, in the pod's namespace */
    __u32 host_ifindex;  /* the host side of its veth, in the node's namespace, where an earlier agent
                            attached programs; 0: nothing of ours there */
    __u32 flags;         /* enum ra_pod_flags */
};

/* Node-wide settings: one entry, key 0. Changing the probe IP is one write here. */
struct ra_config {
    __u32 probe_ipv4;
    __u32 probe_ipv6[4];
    __u16 outbound_port; /* host order */
    __u16 inbound_port;  /* host order */
    __u16 tunnel_port;   /* host order */
    __u16 dns_port;      /* host order: the proxy's DNS listener on the pod's loopback (15053); was reserved (0) */
    __u32 proxy_mark;    /* the proxy's SO_MARK: its traffic is never captured */
    __u32 mark_mask;
    __u32 capture_mark;  /* set on captured packets; policy routing delivers them locally */
    __u32 draining_proxies; /* how many replaced proxies' cgroups ra_proxy_cgroups holds (a ztunnel rolling
                               upgrade): their sockets are the proxy's too; 0: the map is never read. Was reserved */
    /* The proxy's cgroup v2 id: only its sockets are the proxy (a mark alone can be forged by any
     * process with CAP_NET_RAW). 0: identity by mark only, as Istio. */
    __u64 proxy_cgroup;
    /* The kubelet's cgroup v2 id: only its connections get the probe IP as their source. 0: any
     * local socket of the node, as Istio. */
    __u64 kubelet_cgroup;
};

/* The node: one entry, key 0, written by the agent before it links the node's socket programs
 * (a separate map, so ra_config keeps its layout for maps pinned by an earlier agent). */
struct ra_node {
    __u64 netns_cookie; /* the node's network namespace: only connect() calls made there are the node's */
    __u64 kept_connections; /* nonzero while ra_kept holds a connection: the pod programs look there only then */
    __u64 bypass_pods;      /* nonzero while a pod has inbound capture bypassed: the programs look up their
                               accepted connections (ra_bypass_flows) only then */
    __u64 reserved[1];
};

/* Connections a pod with inbound capture bypassed accepted itself, by socket cookie (recorded by
 * sockops_node as each one is established): only their packets, and the handshake's answers, leave
 * such a pod uncaptured. LRU: a connection whose entry is evicted fails closed (captured). */
#define RA_MAX_BYPASS_FLOWS 65536

/* A connection that existed when its pod was enrolled and keeps going uncaptured until it closes
 * (as conntrack keeps it under iptables rules), keyed by its socket's cookie: cookies are never
 * reused, so nothing opened later can join. Value: the pod index. Written by the agent before it
 * attaches the pod's programs; the agent deletes entries whose socket is gone. */
#define RA_MAX_KEPT_CONNECTIONS 65536

/* What the programs decided, counted per pod and per CPU. */
enum ra_decision {
    RA_OUTBOUND_CAPTURED = 0,     /* app SYN handed to the proxy's 15001 */
    RA_INBOUND_CAPTURED = 1,      /* inbound SYN handed to the proxy's 15006 */
    RA_HBONE_PASS = 2,            /* inbound to 15008, reaches the proxy directly */
    RA_PROBE_PASS = 3,            /* a probe SNATed by this node's program: not captured */
    RA_PROXY_PASS = 4,            /* the proxy's own traffic (mark 0x539) */
    RA_ESTABLISHED = 5,           /* packet of a captured flow steered to its socket */
    RA_SPOOFED_PROBE = 6,         /* source is the probe IP but no SNAT record: captured */
    RA_TIME_WAIT_HANDOFF = 7,     /* SYN over a TIME_WAIT tuple handed to sk_lookup */
    RA_PROBE_SNAT = 8,            /* node: a kubelet connection to the pod given the probe IP as its source */
    RA_DROP_NO_LISTENER = 9,      /* capture wanted, the proxy is not listening: dropped, never bypassed */
    RA_DROP_ASSIGN_FAILED = 10,   /* bpf_sk_assign refused */
    RA_KEPT_PASS = 11,            /* a packet of a connection that existed before enrolment (ra_kept): not captured
                                     (slot 11 was RA_DROP_NO_SOCKET, never emitted since such packets went to the proxy) */
    RA_DROP_FRAGMENT = 12,        /* fragmented TCP cannot be classified safely */
    RA_DROP_MALFORMED = 13,       /* the transport header cannot be located: truncated, bad lengths, an IPv6
                                     extension chain past the bound, a non-first fragment, a VLAN tag */
    RA_DROP_PROTOCOL = 14,        /* a transport the programs do not know (not TCP, UDP or ICMP) */
    RA_DROP_NOT_PROXY = 15,       /* a packet from outside for a socket that is not the proxy's (an injection
                                     into an app's connection): dropped */
    RA_FORGED_MARK = 16,          /* the proxy mark on a socket outside the proxy's cgroup: captured like any app */
    RA_ORPHAN_TO_PROXY = 17,      /* a non-SYN packet with no socket, given to the proxy's listener (which
                                     completes a SYN cookie or resets), never to the app's */
    RA_HOST_CAPTURED = 18,        /* node: a local connection not from the kubelet (or one the probe IP could
                                     not be bound for): keeps its source, so captured */
    RA_DROP_UNWATCHED = 19,       /* traffic through an interface our tc programs do not watch (added after
                                     enrolment, not attached yet): a SYN that reached the pod's listener lookup,
                                     or a packet leaving the pod (netfilter guard, Linux 6.4+): dropped */
    RA_REFUSED_TC_BYPASS = 20,    /* node (BPF LSM): a process in a meshed pod asked for a socket that sends past the
                                     tc programs (PACKET_QDISC_BYPASS, AF_XDP): refused with EPERM */
    RA_DNS_CAPTURED = 21,         /* a DNS query (UDP or TCP to port 53) sent to the proxy's DNS port instead */
    RA_DROP_DNS_UNCAPTURED = 22,  /* a UDP datagram to port 53 left a pod with DNS capture from a socket the socket hooks
                                     did not redirect (a raw socket, an unknown path): dropped, never passed */
    RA_REFUSED_DNS_BIND = 23,     /* node: a socket other than the proxy's in a pod with DNS capture asked for the proxy's DNS
                                     port, where redirected queries arrive: refused with EPERM */
    RA_DECISION_COUNT = 24,
};

/* Room in ra_counters per pod. It stays at the 20 decisions the map was first sized for, so a
 * map pinned by an older agent is reused: a pod meets only a few decisions, and a counter that
 * finds the map full is lost, never the packet it counts. */
#define RA_COUNTER_SLOTS_PER_POD 20

/* The agent's check that the LSM programs run (the kernel may load them without calling them:
 * BPF LSM off in its lsm= list): socket(AF_XDP, SOCK_RAW, RA_LSM_PROBE_PROTOCOL), which AF_XDP
 * itself refuses with EPROTONOSUPPORT, fails with RA_LSM_PROBE_ERRNO (EBADSLT, which socket()
 * never returns) when lsm_pod_socket_create saw it. */
#define RA_LSM_PROBE_PROTOCOL 0x7261
#define RA_LSM_PROBE_ERRNO 57

struct ra_counter_key {
    __u32 pod_index;
    enum ra_decision decision;
};

/* Kubelet probe flows: one entry per kubelet connection to a pod, recorded by the node's sockops
 * program as the connection starts, keyed as the pod sees it. */
struct ra_flow_key {
    __u32 family;
    struct ra_addr pod;
    struct ra_addr probe;
    __u16 pod_port;
    __u16 probe_port;
};

struct ra_flow_value {
    struct ra_addr original_source; /* the probe IP itself: the socket was bound to it, nothing is rewritten */
    __u64 closed_ns; /* 0 while the kubelet's socket is open; when it closed (bpf_ktime_get_ns): from then
                        on only the closing connection's last segments pass, for RA_PROBE_TAIL_NS, never a
                        new SYN (a host process that binds the probe IP and the same port later is captured) */
};

/* How long a closed probe flow still lets its last segments through (FIN retransmissions, the final ACK). */
#define RA_PROBE_TAIL_NS (60ULL * 1000 * 1000 * 1000)

/* A proxy listener, by pod address and port (host order). */
struct ra_listener_key {
    __u32 family;
    struct ra_addr addr;
    __u32 port;
};

/* A SYN over a TIME_WAIT socket that the tc program handed to sk_lookup. Ports host order. */
struct ra_tuple_key {
    __u32 family;
    struct ra_addr local;
    struct ra_addr remote;
    __u16 local_port;
    __u16 remote_port;
};

/* An interface of an enrolled pod that carries our tc programs, keyed by each local address of
 * the pod's namespace (addresses are unique per namespace where ifindexes are not): the
 * sk_lookup program passes a listener lookup only for interfaces found here. Value: the pod
 * index. */
struct ra_iface_key {
    __u32 family;
    struct ra_addr addr;
    __u32 ifindex;
};

/* An interface of an enrolled pod's namespace that carries our tc programs, keyed by the
 * namespace's inode number (ifindexes repeat across namespaces): the netfilter guard lets a packet
 * leave the namespace only through one found here. Ifindex 0 marks the namespace itself. Value:
 * the pod index. */
struct ra_netns_iface {
    __u32 netns;
    __u32 ifindex;
};

/* DNS capture: a pod's namespace, by the cookie bpf_get_netns_cookie returns there, whose DNS
 * goes to the proxy's DNS port. The node's socket hooks rewrite a query's destination to the
 * proxy's listener on the pod's loopback as the socket sends it (connect, sendmsg) and give the
 * answers the original server's address back (recvmsg, getpeername), as Istio's REDIRECT to
 * 15053 and its conntrack do. Value: the pod index. */
struct ra_dns_pod {
    __u32 pod_index;
    __u32 reserved;
};

/* What a socket's query was sent to before it was redirected (socket storage, freed with the
 * socket): the address its answers must appear to come from. A v4-mapped destination of an IPv6
 * socket is kept as the IPv4 address. */
struct ra_dns_origin {
    __u32 family;
    struct ra_addr addr;
    __u16 port;          /* network order */
    __u16 reserved;
};

/* One capture decision, as `redirect-agent monitor` streams it (ra_events ring buffer). Written
 * only while a monitor holds the lease in ra_monitor (its end, CLOCK_MONOTONIC ns); otherwise the
 * programs do nothing more than read that one value. */
struct ra_event {
    __u64 time_ns;      /* bpf_ktime_get_ns: CLOCK_MONOTONIC */
    __u32 pod_index;
    __u32 decision;     /* enum ra_decision */
    __u32 family;
    __u8 hook;          /* enum ra_event_hook */
    __u8 protocol;      /* IPPROTO_* */
    __u16 reserved;
    struct ra_addr src;
    struct ra_addr dst;
    __u16 sport;        /* network order */
    __u16 dport;        /* network order */
    __u32 ifindex;
};

/* Where a decision was made. */
enum ra_event_hook {
    RA_HOOK_TC_EGRESS = 0,   /* tc_pod_egress: leaving the pod */
    RA_HOOK_TC_INGRESS = 1,  /* tc_pod_ingress (and _reroute): arriving, or turned around from egress */
    RA_HOOK_SOCKET = 2,      /* a socket hook (DNS capture): src is unknown, dst is where the query went */
};

/* How big ra_events is: room for bursts while the monitor reads. */
#define RA_EVENTS_BYTES (1 << 20)

#endif
