/* Capture decisions as events for `redirect-agent monitor`. Nobody listening costs each tc run two
 * array lookups and compares (begin and end read the lease in ra_monitor, 0) and each counted
 * decision one more; a listener renews the
 * lease every second, so one that dies stops the stream within seconds (and the agent clears an
 * expired lease). The tc programs note what they count in a per-CPU slot while they run and emit it
 * with the packet's flow as they return; the socket hooks emit directly. */
#pragma once
#include "redirect_abi.h"
#include "packet.h"

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, RA_EVENTS_BYTES);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} ra_events SEC(".maps");

/* The monitor's lease: CLOCK_MONOTONIC ns until which events are written (0: nobody listens). */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} ra_monitor SEC(".maps");

/* Decisions a tc program counted for the packet it is handling (at most two: a spoofed probe that
 * is then captured). */
struct ra_monitor_slot {
    __u32 count;
    __u32 pod[2];
    __u32 decision[2];
};

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct ra_monitor_slot);
} ra_monitor_slots SEC(".maps");

/* Whether someone holds a lease (the cheap part: one value, nonzero). */
static __always_inline int ra_monitor_leased(void)
{
    __u32 zero = 0;
    __u64 *until = bpf_map_lookup_elem(&ra_monitor, &zero);
    return until && *until;
}

/* Whether the lease is current. */
static __always_inline int ra_monitoring(void)
{
    __u32 zero = 0;
    __u64 *until = bpf_map_lookup_elem(&ra_monitor, &zero);
    return until && *until && bpf_ktime_get_ns() < *until;
}

static __always_inline struct ra_monitor_slot *ra_monitor_slot(void)
{
    __u32 zero = 0;
    return bpf_map_lookup_elem(&ra_monitor_slots, &zero);
}

/* ra_count's part: remembers the decision for the tc program's return. */
static __always_inline void ra_monitor_note(__u32 pod, __u32 decision)
{
    if (!ra_monitor_leased())
        return;
    struct ra_monitor_slot *s = ra_monitor_slot();
    if (!s || s->count >= 2)
        return;
    __u32 i = s->count & 1;
    s->pod[i] = pod;
    s->decision[i] = decision;
    s->count = i + 1;
}

/* A tc program starts: nothing noted yet. Returns whether a lease was held then: only notes made
 * after this reset may go out with this packet (a socket hook's notes are never emitted). */
static __always_inline int ra_monitor_begin(void)
{
    if (!ra_monitor_leased())
        return 0;
    struct ra_monitor_slot *s = ra_monitor_slot();
    if (s)
        s->count = 0;
    return 1;
}

static __always_inline void ra_emit(__u32 pod, __u32 decision, __u8 hook, __u8 protocol, __u32 family, const struct ra_addr *src,
                                    const struct ra_addr *dst, __u16 sport, __u16 dport, __u32 ifindex)
{
    struct ra_event *e = bpf_ringbuf_reserve(&ra_events, sizeof(*e), 0);
    if (!e)
        return; /* full: the monitor reads too slowly; counters still count */
    e->time_ns = bpf_ktime_get_ns();
    e->pod_index = pod;
    e->decision = decision;
    e->family = family;
    e->hook = hook;
    e->protocol = protocol;
    e->reserved = 0;
    e->src = *src;
    e->dst = *dst;
    e->sport = sport;
    e->dport = dport;
    e->ifindex = ifindex;
    bpf_ringbuf_submit(e, 0);
}

/* A tc program returns: what it noted goes out with the packet's flow. */
static __always_inline void ra_monitor_end(int began, const struct __sk_buff *skb, const struct ra_flow *f, __u8 hook)
{
    if (!began || !ra_monitoring())
        return;
    struct ra_monitor_slot *s = ra_monitor_slot();
    if (!s)
        return;
    __u32 n = s->count;
    s->count = 0;
    for (__u32 i = 0; i < 2; i++) {
        if (i >= n)
            break;
        ra_emit(s->pod[i], s->decision[i], hook, f->proto, f->family, &f->src, &f->dst, f->sport, f->dport, skb->ifindex);
    }
}
