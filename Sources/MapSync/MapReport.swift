import CShim
import Foundation
import SystemCalls

/// Everything the pinned maps hold, decoded: what `redirect-agent maps` prints (as text, or as
/// this structure in JSON). Read from the kernel, not from the agent.
public struct MapReport: Codable, Sendable {
    /// ra_config: node-wide capture settings.
    public struct Config: Codable, Sendable {
        /// The probe source IPs.
        public var probeIPv4, probeIPv6: String
        /// The proxy's ports (host order).
        public var outboundPort, inboundPort, tunnelPort, dnsPort: UInt16
        /// Marks, as `0x…`.
        public var proxyMark, markMask, captureMark: String
        /// The proxy's and the kubelet's cgroup ids (0: not used; 2^64-1: the proxy is not known yet).
        public var proxyCgroup, kubeletCgroup: UInt64
        /// Replaced proxies still draining (ra_proxy_cgroups), by cgroup id.
        public var drainingProxyCgroups: [UInt64]
    }

    /// ra_node: the node's own entry.
    public struct Node: Codable, Sendable {
        /// The node's network namespace cookie.
        public var netnsCookie: UInt64
        /// Whether the programs look up kept connections and bypassing pods' accepted ones.
        public var keptLookup, bypassLookup: Bool
    }

    /// One in-mesh pod (its entries in every map, by counter index).
    public struct Pod: Codable, Sendable {
        /// The counter index.
        public var index: UInt32
        /// namespace/name, from the agent when it answers.
        public var name: String?
        /// Its addresses (ra_pods keys).
        public var addresses: [String]
        /// Its primary interface in its namespace.
        public var podIfindex: UInt32
        /// An earlier agent's host-veth attachment (0: none).
        public var hostIfindex: UInt32
        /// The flags, by name.
        public var flags: [String]
        /// ra_ifaces: "address%ifindex" pairs sk_lookup passes.
        public var lookupInterfaces: [String]
        /// ra_egress_ifaces: "netns-inode/ifindex" pairs the egress guard lets out (ifindex 0: the namespace marker).
        public var egressInterfaces: [String]
        /// ra_dns_netns: its namespace cookie, when its DNS is captured.
        public var dnsNetnsCookie: UInt64?
        /// ra_kept: connections kept from before enrolment.
        public var keptConnections: Int
        /// ra_counters, by decision name.
        public var counters: [String: UInt64]
    }

    /// One kubelet probe flow (ra_probe_flows).
    public struct ProbeFlow: Codable, Sendable {
        /// `pod address:port`.
        public var pod: String
        /// `probe address:port`.
        public var probe: String
        /// Open (the kubelet's socket is open), or closed and letting only its last segments through.
        public var open: Bool
    }

    /// The config (nil: the agent has not written it).
    public var config: Config?
    /// The node entry.
    public var node: Node?
    /// Pods, by index.
    public var pods: [Pod]
    /// Counters on index 0: decisions about traffic no pod entry matched.
    public var unattributed: [String: UInt64]
    /// Kubelet probe flows.
    public var probeFlows: [ProbeFlow]
    /// Entries of the maps that are counted, not listed: accepted connections of pods that bypass
    /// inbound capture (ra_bypass_flows), SYNs awaiting the TIME_WAIT hand-off (ra_tw_handoff), the
    /// proxy listeners recorded (ra_proxy_listeners).
    public var bypassFlows, timeWaitHandoffs, proxyListeners: Int
    /// Whether a monitor holds the event lease (ra_monitor) now.
    public var monitorListening: Bool

    /// Reads every map of `maps`; `names` maps addresses to pod names where known.
    public static func read(_ maps: MapSync, names: [IPAddress: String] = [:]) throws -> MapReport {
        let all = try maps.allPods()
        let dns = Dictionary(try maps.dnsCaptures().map { ($0.pod, $0.netnsCookie) }, uniquingKeysWith: { a, _ in a })
        let kept = Dictionary(grouping: try maps.keptConnections(), by: \.pod).mapValues(\.count)
        var pods: [Pod] = []
        for (index, entries) in Dictionary(grouping: all, by: { $0.1.pod_index }).sorted(by: { $0.key < $1.key }) {
            let info = entries[0].1, ips = entries.map(\.0).sorted { $0.description < $1.description }
            pods.append(Pod(index: index, name: ips.lazy.compactMap { names[$0] }.first, addresses: ips.map(\.description),
                            podIfindex: info.pod_ifindex, hostIfindex: info.host_ifindex, flags: flagNames(info.flags),
                            lookupInterfaces: try maps.interfaces(podIndex: index).map { "\($0.0)%\($0.1)" }.sorted(),
                            egressInterfaces: try maps.egressInterfaces(podIndex: index).map { "\($0.netns)/\($0.ifindex)" }.sorted(),
                            dnsNetnsCookie: dns[index], keptConnections: kept[index] ?? 0,
                            counters: named(try maps.counters(podIndex: index))))
        }
        return MapReport(config: try readConfig(maps), node: try readNode(maps), pods: pods,
                         unattributed: named(try maps.counters(podIndex: 0)), probeFlows: try probeFlows(maps),
                         bypassFlows: try maps.bypassFlows.keys(UInt64.self).count, timeWaitHandoffs: try maps.timeWaitHandoffs.keys(ra_tuple_key.self).count,
                         proxyListeners: try maps.proxyListeners.keys(ra_listener_key.self).count,
                         monitorListening: try maps.monitorLease() > Monotonic.nanoseconds())
    }

    private static func readConfig(_ maps: MapSync) throws -> Config? {
        guard let c = try maps.readConfig() else { return nil }
        func hex(_ v: UInt32) -> String { "0x" + String(v, radix: 16) }
        return Config(probeIPv4: c.probeIPv4.description, probeIPv6: c.probeIPv6.description, outboundPort: c.outboundPort,
                      inboundPort: c.inboundPort, tunnelPort: c.tunnelPort, dnsPort: c.dnsPort, proxyMark: hex(c.proxyMark),
                      markMask: hex(c.markMask), captureMark: hex(c.captureMark), proxyCgroup: c.proxyCgroup, kubeletCgroup: c.kubeletCgroup,
                      drainingProxyCgroups: try maps.drainingProxyCgroups())
    }

    private static func readNode(_ maps: MapSync) throws -> Node? {
        guard let n = try maps.node.lookup(UInt32(0), as: ra_node.self) else { return nil }
        return Node(netnsCookie: n.netns_cookie, keptLookup: n.kept_connections != 0, bypassLookup: n.bypass_pods != 0)
    }

    private static func probeFlows(_ maps: MapSync) throws -> [ProbeFlow] {
        try maps.probeFlows.keys(ra_flow_key.self).compactMap { k in
            guard let v = try maps.probeFlows.lookup(k, as: ra_flow_value.self) else { return nil }
            return ProbeFlow(pod: SocketAddress(MapSync.ip(family: k.family, k.pod), UInt16(bigEndian: k.pod_port)).description,
                             probe: SocketAddress(MapSync.ip(family: k.family, k.probe), UInt16(bigEndian: k.probe_port)).description,
                             open: v.closed_ns == 0)
        }.sorted { $0.pod < $1.pod }
    }

    /// The names of the flags set in `flags` (enum ra_pod_flags).
    static func flagNames(_ flags: UInt32) -> [String] {
        let names: [(ra_pod_flags, String)] = [
            (RA_POD_CREATED_CLSACT_POD, "created_clsact"), (RA_POD_CREATED_CLSACT_HOST, "created_clsact_host"),
            (RA_POD_SET_ACCEPT_LOCAL, "set_accept_local"), (RA_POD_BYPASS_INBOUND, "bypass_inbound"), (RA_POD_DNS_CAPTURE, "dns_capture"), (RA_POD_CREATED_CLSACT_LO, "created_clsact_lo"),
        ]
        return names.filter { flags & UInt32($0.0.rawValue) != 0 }.map(\.1)
    }

    private static func named(_ counters: [Decision: UInt64]) -> [String: UInt64] {
        Dictionary(uniqueKeysWithValues: counters.map { ($0.key.description, $0.value) })
    }

    /// The report as text: one block per map, addresses and ports as people write them.
    public var text: String {
        var out: [String] = []
        if let c = config {
            out.append("ra_config:  probe IPs \(c.probeIPv4) \(c.probeIPv6); ports outbound \(c.outboundPort) inbound \(c.inboundPort) tunnel \(c.tunnelPort) dns \(c.dnsPort)")
            if !c.drainingProxyCgroups.isEmpty { out.append("            draining proxies' cgroups (ra_proxy_cgroups): " + c.drainingProxyCgroups.map(String.init).joined(separator: " ")) }
            out.append("            proxy mark \(c.proxyMark)/\(c.markMask), capture mark \(c.captureMark); proxy cgroup \(c.proxyCgroup == UInt64.max ? "not known yet (no socket is the proxy's)" : c.proxyCgroup == 0 ? "none (mark only)" : "\(c.proxyCgroup)"); kubelet cgroup \(c.kubeletCgroup == 0 ? "none (any host process)" : "\(c.kubeletCgroup)")")
        } else {
            out.append("ra_config:  empty (no agent has prepared this node)")
        }
        if let n = node { out.append("ra_node:    netns cookie \(n.netnsCookie); kept-connection lookup \(n.keptLookup ? "on" : "off"); bypass lookup \(n.bypassLookup ? "on" : "off")") }
        out.append("ra_pods:    \(pods.count) pods")
        for p in pods {
            out.append("  [\(p.index)] \(p.name ?? "?")  \(p.addresses.joined(separator: " "))  ifindex \(p.podIfindex)\(p.hostIfindex != 0 ? " host \(p.hostIfindex)" : "")  flags \(p.flags.isEmpty ? "-" : p.flags.joined(separator: ","))")
            out.append("      ra_ifaces \(p.lookupInterfaces.joined(separator: " "))")
            out.append("      ra_egress_ifaces \(p.egressInterfaces.joined(separator: " "))")
            out.append("      ra_dns_netns \(p.dnsNetnsCookie.map { "cookie \($0)" } ?? "-")   ra_kept \(p.keptConnections)")
            out.append("      counters " + (p.counters.isEmpty ? "-" : p.counters.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")))
        }
        if !unattributed.isEmpty {
            out.append("unattributed (no pod entry): " + unattributed.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))
        }
        out.append("ra_probe_flows: \(probeFlows.count)")
        for f in probeFlows { out.append("  \(f.probe) -> \(f.pod)  \(f.open ? "open" : "closed (tail only)")") }
        out.append("ra_bypass_flows: \(bypassFlows)   ra_tw_handoff: \(timeWaitHandoffs)   ra_proxy_listeners: \(proxyListeners)   monitor: \(monitorListening ? "listening" : "none")")
        return out.joined(separator: "\n")
    }
}
