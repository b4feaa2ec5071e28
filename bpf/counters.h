/* Per-pod, per-decision counters in a per-CPU hash; each counted decision is also an event while
 * a monitor listens (monitor.h). */
#pragma once
#include "maps.h"
#include "monitor.h"

static __always_inline struct ra_pod_info *ra_pod_lookup(__u32 family, const struct ra_addr *addr)
{
    struct ra_pod_key k = {};
    k.family = family;
    k.addr = *addr;
    return bpf_map_lookup_elem(&ra_pods, &k);
}

static __always_inline __u32 ra_pod_index(__u32 family, const struct ra_addr *addr)
{
    struct ra_pod_info *p = ra_pod_lookup(family, addr);
    return p ? p->pod_index : 0;
}

static __always_inline void ra_count(__u32 pod_index, enum ra_decision d)
{
    ra_monitor_note(pod_index, d);
    struct ra_counter_key k = { .pod_index = pod_index, .decision = d };
    __u64 *v = bpf_map_lookup_elem(&ra_counters, &k);
    if (v) {
        *v += 1; /* per-CPU value: no atomic needed */
        return;
    }
    __u64 one = 1;
    bpf_map_update_elem(&ra_counters, &k, &one, BPF_NOEXIST);
}

static __always_inline struct ra_config *ra_get_config(void)
{
    __u32 zero = 0;
    return bpf_map_lookup_elem(&ra_config, &zero);
}

static __always_inline int ra_is_probe_ip(const struct ra_config *cfg, __u32 family, const struct ra_addr *a)
{
    if (family == RA_FAMILY_INET)
        return a->words[0] == cfg->probe_ipv4;
    return a->words[0] == cfg->probe_ipv6[0] && a->words[1] == cfg->probe_ipv6[1] &&
           a->words[2] == cfg->probe_ipv6[2] && a->words[3] == cfg->probe_ipv6[3];
}

static __always_inline void ra_probe_addr(const struct ra_config *cfg, __u32 family, struct ra_addr *out)
{
    __builtin_memset(out, 0, sizeof(*out));
    if (family == RA_FAMILY_INET)
        out->words[0] = cfg->probe_ipv4;
    else
        __builtin_memcpy(out->words, cfg->probe_ipv6, 16);
}

/* Whether cgroup `id` is the proxy's: the current proxy's, or a draining one's (looked up only
 * while there are any, and only for what the current proxy's id did not match). */
static __always_inline int ra_is_proxy_cgroup(const struct ra_config *cfg, __u64 id)
{
    if (id == cfg->proxy_cgroup)
        return 1;
    return cfg->draining_proxies && id && bpf_map_lookup_elem(&ra_proxy_cgroups, &id);
}
