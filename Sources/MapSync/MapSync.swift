import BPFLoader
import CShim
import Foundation
import SystemCalls

/// The node-wide values the programs read from `ra_config`.
public struct KernelConfig: Sendable, Equatable {
    /// IPv4 probe source.
    public var probeIPv4: IPAddress
    /// IPv6 probe source.
    public var probeIPv6: IPAddress
    /// Outbound listener port.
    public var outboundPort: UInt16
    /// Inbound listener port.
    public var inboundPort: UInt16
    /// Tunnel port.
    public var tunnelPort: UInt16
    /// The proxy's DNS port on the pods' loopback; 0: DNS capture off on the node.
    public var dnsPort: UInt16
    /// How many draining proxies' cgroups ra_proxy_cgroups holds (0: the programs never look there).
    public var drainingProxies: UInt32
    /// Proxy mark.
    public var proxyMark: UInt32
    /// Mark mask.
    public var markMask: UInt32
    /// Capture mark (policy-routed locally).
    public var captureMark: UInt32
    /// The proxy's cgroup id; 0: the mark alone identifies the proxy.
    public var proxyCgroup: UInt64
    /// The kubelet's cgroup id; 0: every local socket's connection gets the probe IP.
    public var kubeletCgroup: UInt64

    /// Creates a config.
    public init(probeIPv4: IPAddress, probeIPv6: IPAddress, outboundPort: UInt16, inboundPort: UInt16, tunnelPort: UInt16,
                dnsPort: UInt16 = 0, drainingProxies: UInt32 = 0, proxyMark: UInt32, markMask: UInt32, captureMark: UInt32,
                proxyCgroup: UInt64 = 0, kubeletCgroup: UInt64 = 0) {
        self.probeIPv4 = probeIPv4; self.probeIPv6 = probeIPv6; self.outboundPort = outboundPort; self.inboundPort = inboundPort
        self.tunnelPort = tunnelPort; self.dnsPort = dnsPort; self.drainingProxies = drainingProxies; self.proxyMark = proxyMark; self.markMask = markMask; self.captureMark = captureMark
        self.proxyCgroup = proxyCgroup; self.kubeletCgroup = kubeletCgroup
    }
}

/// One in-mesh pod as the maps hold it.
public struct PodEntry: Sendable, Equatable {
    /// Its addresses (one map entry each).
    public var ips: [IPAddress]
    /// Its counter index.
    public var index: UInt32
    /// Its interface in its namespace.
    public var podIfindex: UInt32
    /// The host side of its veth.
    public var hostIfindex: UInt32
    /// ra_pod_flags.
    public var flags: UInt32
    /// Creates an entry.
    public init(ips: [IPAddress], index: UInt32, podIfindex: UInt32, hostIfindex: UInt32, flags: UInt32) {
        self.ips = ips; self.index = index; self.podIfindex = podIfindex; self.hostIfindex = hostIfindex; self.flags = flags
    }
}

/// Owns the mapping from desired state (pods, config) to the kernel maps. Every write is
/// idempotent; ``reconcile(_:)`` brings the maps to exactly the desired pods.
public final class MapSync: Sendable {
    /// ra_pods.
    public let pods: BPFMap
    /// ra_config.
    public let config: BPFMap
    /// ra_counters.
    public let counters: BPFMap
    /// ra_probe_flows.
    public let probeFlows: BPFMap
    /// ra_proxy_listeners.
    public let proxyListeners: BPFMap
    /// ra_tw_handoff.
    public let timeWaitHandoffs: BPFMap
    /// ra_ifaces.
    public let interfaces: BPFMap
    /// ra_egress_ifaces.
    public let egressInterfaces: BPFMap
    /// ra_node.
    public let node: BPFMap
    /// ra_kept.
    public let kept: BPFMap
    /// ra_bypass_flows.
    public let bypassFlows: BPFMap
    /// ra_dns_netns.
    public let dnsNamespaces: BPFMap
    /// ra_proxy_cgroups.
    public let proxyCgroups: BPFMap
    /// ra_events (the monitor's ring buffer).
    public let events: BPFMap
    /// ra_monitor (the monitor's lease).
    public let monitor: BPFMap

    /// Uses the maps of a loaded object.
    public convenience init(object: BPFObject) throws {
        try self.init { try object.map($0) }
    }

    /// Opens the maps pinned in `directory` (the agent's `<pin root>/maps`), loading nothing: for
    /// readers such as `redirect-agent maps`, which must work beside a running agent or without one.
    public convenience init(pinDirectory directory: String) throws {
        try self.init { try BPFMap.pinned("\(directory)/\($0)") }
    }

    private init(_ open: (String) throws -> BPFMap) throws {
        pods = try open("ra_pods")
        config = try open("ra_config")
        counters = try open("ra_counters")
        probeFlows = try open("ra_probe_flows")
        proxyListeners = try open("ra_proxy_listeners")
        timeWaitHandoffs = try open("ra_tw_handoff")
        interfaces = try open("ra_ifaces")
        egressInterfaces = try open("ra_egress_ifaces")
        node = try open("ra_node")
        kept = try open("ra_kept")
        bypassFlows = try open("ra_bypass_flows")
        dnsNamespaces = try open("ra_dns_netns")
        proxyCgroups = try open("ra_proxy_cgroups")
        events = try open("ra_events")
        monitor = try open("ra_monitor")
    }

    // MARK: monitor

    /// The monitor's lease: CLOCK_MONOTONIC ns until which the programs write events (0: none).
    public func monitorLease() throws -> UInt64 { try monitor.lookup(UInt32(0), as: UInt64.self) ?? 0 }

    /// Sets the lease (0 ends it).
    public func setMonitorLease(until nanoseconds: UInt64) throws { try monitor.update(UInt32(0), nanoseconds) }

    /// Clears a lease that has run out (its monitor is gone), so the programs go back to reading one
    /// zero. True when one was cleared.
    @discardableResult
    public func clearExpiredMonitorLease(now: UInt64) throws -> Bool {
        let lease = try monitorLease()
        guard lease != 0, lease < now else { return false }
        try setMonitorLease(until: 0)
        return true
    }

    // MARK: draining proxies

    /// Adds draining proxies' cgroup ids to ra_proxy_cgroups.
    public func addProxyCgroups(_ ids: [UInt64]) throws {
        for id in ids { try proxyCgroups.update(id, UInt32(1)) }
    }

    /// Removes every cgroup id from ra_proxy_cgroups but `ids`.
    public func removeProxyCgroups(keeping ids: [UInt64]) throws {
        for id in try proxyCgroups.keys(UInt64.self) where !ids.contains(id) { try proxyCgroups.delete(id) }
    }

    /// The draining proxies' cgroup ids.
    public func drainingProxyCgroups() throws -> [UInt64] { try proxyCgroups.keys(UInt64.self).sorted() }

    // MARK: DNS capture

    /// Captures the DNS of pod `index`, whose namespace has cookie `netnsCookie`.
    public func setDNSCapture(netnsCookie: UInt64, podIndex index: UInt32) throws {
        try dnsNamespaces.update(netnsCookie, ra_dns_pod(pod_index: index, reserved: 0))
    }

    /// Namespaces with DNS capture: cookie and pod index.
    public func dnsCaptures() throws -> [(netnsCookie: UInt64, pod: UInt32)] {
        try dnsNamespaces.keys(UInt64.self).compactMap { c in try dnsNamespaces.lookup(c, as: ra_dns_pod.self).map { (c, $0.pod_index) } }
    }

    /// Stops capturing DNS of the pods `drop` selects (by pod index).
    public func removeDNSCapture(where drop: (UInt32) -> Bool) throws {
        for (cookie, pod) in try dnsCaptures() where drop(pod) { _ = try dnsNamespaces.delete(cookie) }
    }

    /// Writes the node's namespace cookie: the node's socket programs act on connect() calls
    /// made there only (0: on none).
    public func writeNode(netnsCookie: UInt64) throws {
        var v = try node.lookup(UInt32(0), as: ra_node.self) ?? ra_node()
        v.netns_cookie = netnsCookie
        try node.update(UInt32(0), v)
    }

    // MARK: kept connections

    /// Records connections of pod `index` (by socket cookie) that stay uncaptured, and turns the
    /// programs' lookup on. A full map keeps no more (those connections are cut off, as without
    /// keeping: closed, never bypassed); returns how many were kept.
    @discardableResult
    public func keep(cookies: [UInt64], podIndex index: UInt32) throws -> Int {
        var count = 0
        for c in cookies {
            do { try kept.update(c, index) } catch let e as BPFError where e.code == E2BIG { break }
            count += 1
        }
        if count > 0 { try setKeptLookup(true) }
        return count
    }

    /// Every kept connection: socket cookie and pod index.
    public func keptConnections() throws -> [(cookie: UInt64, pod: UInt32)] {
        try kept.keys(UInt64.self).compactMap { c in try kept.lookup(c, as: UInt32.self).map { (c, $0) } }
    }

    /// Forgets kept connections; the programs stop looking once none is left.
    public func forget(cookies: [UInt64]) throws {
        for c in cookies { _ = try kept.delete(c) }
        if try kept.keys(UInt64.self).isEmpty { try setKeptLookup(false) }
    }

    /// Whether the programs look kept connections up (ra_node.kept_connections).
    public func keptLookup() throws -> Bool { (try node.lookup(UInt32(0), as: ra_node.self)?.kept_connections ?? 0) != 0 }

    private func setKeptLookup(_ on: Bool) throws {
        var v = try node.lookup(UInt32(0), as: ra_node.self) ?? ra_node()
        guard (v.kept_connections != 0) != on else { return }
        v.kept_connections = on ? 1 : 0
        try node.update(UInt32(0), v)
    }

    /// Turns the programs' handling of pods with inbound capture bypassed on or off
    /// (ra_node.bypass_pods): on before such a pod's entry says so, off once none does.
    public func setBypassLookup(_ on: Bool) throws {
        var v = try node.lookup(UInt32(0), as: ra_node.self) ?? ra_node()
        guard (v.bypass_pods != 0) != on else { return }
        v.bypass_pods = on ? 1 : 0
        try node.update(UInt32(0), v)
    }

    /// Whether that handling is on.
    public func bypassLookup() throws -> Bool { (try node.lookup(UInt32(0), as: ra_node.self)?.bypass_pods ?? 0) != 0 }

    /// The node's namespace cookie as the programs see it.
    public func nodeNetnsCookie() throws -> UInt64 {
        try node.lookup(UInt32(0), as: ra_node.self)?.netns_cookie ?? 0
    }

    // MARK: config

    /// Writes the config: one map write, so a probe IP change reaches every pod at once.
    public func write(_ c: KernelConfig) throws {
        var v = ra_config()
        v.probe_ipv4 = MapSync.addr(c.probeIPv4).words.0
        let a6 = MapSync.addr(c.probeIPv6).words
        v.probe_ipv6 = (a6.0, a6.1, a6.2, a6.3)
        v.outbound_port = c.outboundPort
        v.inbound_port = c.inboundPort
        v.tunnel_port = c.tunnelPort
        v.dns_port = c.dnsPort
        v.draining_proxies = c.drainingProxies
        v.proxy_mark = c.proxyMark
        v.mark_mask = c.markMask
        v.capture_mark = c.captureMark
        v.proxy_cgroup = c.proxyCgroup
        v.kubelet_cgroup = c.kubeletCgroup
        try config.update(UInt32(0), v)
    }

    /// Reads the config back from the kernel.
    public func readConfig() throws -> KernelConfig? {
        guard let v = try config.lookup(UInt32(0), as: ra_config.self), v.outbound_port != 0 else { return nil }
        let v6 = v.probe_ipv6
        return KernelConfig(probeIPv4: MapSync.ip(family: 2, ra_addr(words: (v.probe_ipv4, 0, 0, 0))),
                            probeIPv6: MapSync.ip(family: 10, ra_addr(words: (v6.0, v6.1, v6.2, v6.3))),
                            outboundPort: v.outbound_port, inboundPort: v.inbound_port, tunnelPort: v.tunnel_port,
                            dnsPort: v.dns_port, drainingProxies: v.draining_proxies, proxyMark: v.proxy_mark, markMask: v.mark_mask, captureMark: v.capture_mark,
                            proxyCgroup: v.proxy_cgroup, kubeletCgroup: v.kubelet_cgroup)
    }

    // MARK: pods

    /// Adds or updates the pod's entries.
    public func upsert(_ pod: PodEntry) throws {
        var info = ra_pod_info()
        info.pod_index = pod.index
        info.pod_ifindex = pod.podIfindex
        info.host_ifindex = pod.hostIfindex
        info.flags = pod.flags
        for ip in pod.ips { try pods.update(MapSync.podKey(ip), info) }
    }

    /// Removes the pod's entries and its counters.
    public func remove(ips: [IPAddress]) throws {
        var indexes = Set<UInt32>()
        for ip in ips {
            if let info = try pods.lookup(MapSync.podKey(ip), as: ra_pod_info.self) { indexes.insert(info.pod_index) }
            try pods.delete(MapSync.podKey(ip))
        }
        for index in indexes { try clearCounters(index) }
        if !indexes.isEmpty {
            for k in try interfaces.keys(ra_iface_key.self) {
                if let owner = try interfaces.lookup(k, as: UInt32.self), indexes.contains(owner) { _ = try interfaces.delete(k) }
            }
            for k in try egressInterfaces.keys(ra_netns_iface.self) {
                if let owner = try egressInterfaces.lookup(k, as: UInt32.self), indexes.contains(owner) { _ = try egressInterfaces.delete(k) }
            }
        }
    }

    /// Makes ra_egress_ifaces hold exactly `ifindexes` of namespace `netns` for pod `index`, with
    /// the namespace's own marker (ifindex 0). Additions go first: an interface still carrying the
    /// programs is never briefly missing.
    public func setEgressInterfaces(netns: UInt32, podIndex index: UInt32, ifindexes: [Int32]) throws {
        let want = Set([0] + ifindexes.map { UInt32(bitPattern: $0) })
        for i in want { try egressInterfaces.update(ra_netns_iface(netns: netns, ifindex: i), index) }
        for k in try egressInterfaces.keys(ra_netns_iface.self) where !(k.netns == netns && want.contains(k.ifindex)) {
            if try egressInterfaces.lookup(k, as: UInt32.self) == index { _ = try egressInterfaces.delete(k) }
        }
    }

    /// The ra_egress_ifaces entries of pod `index`, as (namespace inode, ifindex); ifindex 0 is the
    /// namespace's marker.
    public func egressInterfaces(podIndex index: UInt32) throws -> [(netns: UInt32, ifindex: Int32)] {
        try egressInterfaces.keys(ra_netns_iface.self).compactMap { k in
            guard try egressInterfaces.lookup(k, as: UInt32.self) == index else { return nil }
            return (k.netns, Int32(bitPattern: k.ifindex))
        }
    }

    /// Makes ra_ifaces hold exactly `addresses` x `ifindexes` for pod `index`: every local address
    /// of the pod's namespace on each interface that carries the pod programs.
    public func setInterfaces(podIndex index: UInt32, addresses: [IPAddress], ifindexes: [Int32]) throws {
        var want = Set<[UInt32]>()
        for ip in addresses {
            for i in ifindexes {
                let k = ra_iface_key(family: ip.isIPv6 ? 10 : 2, addr: MapSync.addr(ip), ifindex: UInt32(bitPattern: i))
                try interfaces.update(k, index)
                want.insert(Self.words(k))
            }
        }
        for k in try interfaces.keys(ra_iface_key.self) where !want.contains(Self.words(k)) {
            if try interfaces.lookup(k, as: UInt32.self) == index { _ = try interfaces.delete(k) }
        }
    }

    /// Deletes the ra_ifaces and ra_egress_ifaces entries of pods whose index is not in `keep`.
    public func removeInterfaces(keepingIndexes keep: Set<UInt32>) throws {
        for k in try interfaces.keys(ra_iface_key.self) {
            if let owner = try interfaces.lookup(k, as: UInt32.self), !keep.contains(owner) { _ = try interfaces.delete(k) }
        }
        for k in try egressInterfaces.keys(ra_netns_iface.self) {
            if let owner = try egressInterfaces.lookup(k, as: UInt32.self), !keep.contains(owner) { _ = try egressInterfaces.delete(k) }
        }
    }

    /// The ra_ifaces entries of pod `index`, as (address, ifindex).
    public func interfaces(podIndex index: UInt32) throws -> [(IPAddress, Int32)] {
        try interfaces.keys(ra_iface_key.self).compactMap { k in
            guard try interfaces.lookup(k, as: UInt32.self) == index else { return nil }
            return (MapSync.ip(family: k.family, k.addr), Int32(bitPattern: k.ifindex))
        }
    }

    private static func words(_ k: ra_iface_key) -> [UInt32] {
        [k.family, k.addr.words.0, k.addr.words.1, k.addr.words.2, k.addr.words.3, k.ifindex]
    }

    /// The entry for `ip`, if in the mesh.
    public func pod(_ ip: IPAddress) throws -> ra_pod_info? { try pods.lookup(MapSync.podKey(ip), as: ra_pod_info.self) }

    /// Every pod address in the map with its info.
    public func allPods() throws -> [(IPAddress, ra_pod_info)] {
        try pods.keys(ra_pod_key.self).compactMap { k in
            guard let info = try pods.lookup(k, as: ra_pod_info.self) else { return nil }
            return (MapSync.ip(family: k.family, k.addr), info)
        }
    }

    /// The smallest pod index not in use (indexes start at 1; 0 means "not in the mesh").
    public func freeIndex() throws -> UInt32 {
        let used = Set(try allPods().map { $0.1.pod_index })
        var i: UInt32 = 1
        while used.contains(i) { i += 1 }
        return i
    }

    /// Makes the pods map hold exactly `desired`: adds what is missing or different, removes what
    /// belongs to no desired pod. Returns the addresses added and removed.
    @discardableResult
    public func reconcile(_ desired: [PodEntry]) throws -> (added: [IPAddress], removed: [IPAddress]) {
        var want: [IPAddress: PodEntry] = [:]
        for p in desired { for ip in p.ips { want[ip] = p } }
        var added: [IPAddress] = [], removed: [IPAddress] = []
        for (ip, info) in try allPods() where want[ip] == nil {
            try pods.delete(MapSync.podKey(ip))
            try clearCounters(info.pod_index)
            removed.append(ip)
        }
        for (ip, p) in want {
            let have = try pod(ip)
            if have?.pod_index != p.index || have?.pod_ifindex != p.podIfindex || have?.host_ifindex != p.hostIfindex || have?.flags != p.flags {
                try upsert(PodEntry(ips: [ip], index: p.index, podIfindex: p.podIfindex, hostIfindex: p.hostIfindex, flags: p.flags))
                added.append(ip)
            }
        }
        return (added, removed)
    }

    // MARK: counters

    /// Per-decision totals (summed over CPUs) for one pod.
    public func counters(podIndex: UInt32) throws -> [Decision: UInt64] {
        var out: [Decision: UInt64] = [:]
        for d in Decision.allCases {
            let k = ra_counter_key(pod_index: podIndex, decision: ra_decision(rawValue: d.rawValue))
            if let v = try counters.lookupPerCPUSum(k), v > 0 { out[d] = v }
        }
        return out
    }

    private func clearCounters(_ index: UInt32) throws {
        for d in Decision.allCases {
            try counters.delete(ra_counter_key(pod_index: index, decision: ra_decision(rawValue: d.rawValue)))
        }
    }

    // MARK: conversions

    /// An address as the programs store it.
    public static func addr(_ ip: IPAddress) -> ra_addr {
        let b = ip.bytes + [UInt8](repeating: 0, count: 16 - ip.bytes.count)
        let w = stride(from: 0, to: 16, by: 4).map { i in b[i..<i + 4].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) } }
        return ra_addr(words: (w[0], w[1], w[2], w[3]))
    }

    /// The map key for one pod address.
    public static func podKey(_ ip: IPAddress) -> ra_pod_key {
        ra_pod_key(family: ip.isIPv6 ? 10 : 2, addr: addr(ip))
    }

    /// Back from the stored form.
    public static func ip(family: UInt32, _ a: ra_addr) -> IPAddress {
        let words = [a.words.0, a.words.1, a.words.2, a.words.3]
        if family == 2 { return .v4(words[0]) }
        return .v6(words.flatMap { w in withUnsafeBytes(of: w) { Array($0) } })
    }
}

/// The decisions counted by the programs (ra_decision).
public enum Decision: UInt32, CaseIterable, Sendable, Codable, CustomStringConvertible {
    case outboundCaptured = 0, inboundCaptured, hbonePass, probePass, proxyPass, established, spoofedProbe,
         timeWaitHandoff, probeSNAT, dropNoListener, dropAssignFailed, keptPass, dropFragment, dropMalformed, dropProtocol,
         dropNotProxy, forgedMark, orphanToProxy, hostCaptured, dropUnwatched, refusedTCBypass, dnsCaptured, dropDNSUncaptured,
         refusedDNSBind
    /// The name used in status output and metrics.
    public var description: String {
        ["outbound_captured", "inbound_captured", "hbone_pass", "probe_pass", "proxy_pass", "established", "spoofed_probe",
         "time_wait_handoff", "probe_snat", "drop_no_listener", "drop_assign_failed", "kept_pass", "drop_fragment",
         "drop_malformed", "drop_protocol", "drop_not_proxy", "forged_mark", "orphan_to_proxy", "host_captured",
         "drop_unwatched", "refused_tc_bypass", "dns_captured", "drop_dns_uncaptured", "refused_dns_bind"][Int(rawValue)]
    }
}
