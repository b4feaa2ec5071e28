import SystemCalls

/// Renders `nft -f` input for Istio's in-pod capture and the node's probe SNAT with native
/// nftables, in Istio 1.28's layout (inet tables `istio-ambient-nat`, `-mangle`, `-raw`, base
/// chains that jump to `istio-prerouting`/`istio-output`), hardened as ``IptablesRules`` is. Pure:
/// one call renders one transaction, which `nft -f` applies atomically.
///
/// Where nftables can do more than xtables it does: the listener guard asks the cgroup of the
/// socket a packet reaches (`socket cgroupv2`), not the mark its owner may have forged.
public struct NftablesRules: Sendable {
    /// The configuration rendered.
    public var config: CaptureConfig
    /// The pod's interfaces whose inbound TCP is treated as outbound (`istio.io/reroute-virtual-interfaces`).
    public var reroute: [String]
    /// No inbound capture for this pod (`ambient.istio.io/bypass-inbound-capture`).
    public var bypassInbound: Bool
    /// nft looks a `socket cgroupv2` path up under /sys/fs/cgroup; where the cgroup2 hierarchy is
    /// mounted below it (a hybrid node: `unified`), paths carry that folder first.
    public var cgroupPrefix: String

    /// Creates a renderer.
    public init(config: CaptureConfig, reroute: [String] = [], bypassInbound: Bool = false, cgroupPrefix: String = "") {
        self.config = config; self.reroute = reroute; self.bypassInbound = bypassInbound; self.cgroupPrefix = cgroupPrefix
    }

    /// The pod's nat table.
    public static let natTable = "istio-ambient-nat"
    /// The pod's mangle table (connection marks and the socket guards).
    public static let mangleTable = "istio-ambient-mangle"
    /// The pod's raw table (DNS conntrack zones).
    public static let rawTable = "istio-ambient-raw"
    /// Every pod table.
    public static let podTableNames = [natTable, mangleTable, rawTable]
    /// The node's table: the probe SNAT, the probe guard and the sets of in-mesh pod IPs (Istio
    /// keeps its sets in a table of this name too).
    public static let nodeTable = "istio-ambient-nat"
    /// The chain every socket guard jumps to: returns for the proxy's sockets, drops for any other.
    public static let proxySocketChain = "istio-proxy-socket"

    /// A chain: a base chain when `hook` is set (`type nat hook prerouting priority -100`).
    public struct Chain: Sendable, Equatable {
        /// Name.
        public var name: String
        /// `type ... hook ... priority ...`, nil for a regular chain.
        public var hook: String?
        /// Rules, in order.
        public var rules: [String]
    }

    /// A table and its chains.
    public struct Table: Sendable, Equatable {
        /// Name (family inet).
        public var name: String
        /// Chains, in the order they are created.
        public var chains: [Chain]
    }

    // MARK: pod

    /// The pod's tables for the families it has (`ipv4`, `ipv6`). The raw table only with DNS capture.
    public func podTables(ipv4: Bool, ipv6: Bool) -> [Table] {
        let families = (ipv4 ? [false] : []) + (ipv6 ? [true] : [])
        var tables = [natTable(families), mangleTable()]
        if config.dnsCapture { tables.append(rawTable()) }
        return tables
    }

    /// Transaction that (re)writes the pod's tables whole, as istio-cni does: each one added and
    /// flushed, its chains added (kept when there: their hooks stay registered, which is what makes a
    /// rewrite cheap) and filled again; every chain a table can have is in each rendering, so none
    /// of an earlier version stays. A table no longer needed (raw, once DNS capture is off) is
    /// deleted. All in one `nft -f`: the kernel swaps the rules in at once.
    public func pod(ipv4: Bool, ipv6: Bool) -> String {
        var tables = podTables(ipv4: ipv4, ipv6: ipv6)
        // The digest of everything rendered rides on the nat table's first rule, so `verify` tells
        // rules that differ only in a value (another proxy's cgroup) from the ones wanted.
        tables[0].chains[0].rules[0] += " comment \"\(podDigest(ipv4: ipv4, ipv6: ipv6))\""
        var out = ""
        for name in Self.podTableNames where !tables.contains(where: { $0.name == name }) {
            out += "add table inet \(name)\ndelete table inet \(name)\n"
        }
        for t in tables {
            out += "add table inet \(t.name)\nflush table inet \(t.name)\n"
            out += render(t)
        }
        return out
    }

    /// A digest of the pod's rules (FNV-1a 64 of their rendering), as `ra:<hex>`.
    public func podDigest(ipv4: Bool, ipv6: Bool) -> String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in podTables(ipv4: ipv4, ipv6: ipv6).map(render).joined().utf8 { h = (h ^ UInt64(byte)) &* 0x100_0000_01b3 }
        return "ra:" + String(h, radix: 16)
    }

    /// Transaction that removes the pod's tables (each added first, so a missing one is no error).
    public func podRemoval() -> String {
        Self.podTableNames.map { "add table inet \($0)\ndelete table inet \($0)\n" }.joined()
    }

    /// The rules each chain of the pod should hold, as `table chain` -> count.
    public func expectedPodRuleCounts(ipv4: Bool, ipv6: Bool) -> [String: Int] {
        var counts: [String: Int] = [:]
        for t in podTables(ipv4: ipv4, ipv6: ipv6) { for c in t.chains { counts["\(t.name) \(c.name)"] = c.rules.count } }
        return counts
    }

    private var mark: String { "meta mark & \(hex(config.markMask)) == \(hex(config.proxyMark))" }
    private var notMark: String { "meta mark & \(hex(config.markMask)) != \(hex(config.proxyMark))" }

    /// `socket cgroupv2` for one cgroup: its depth is the level its ancestry is compared at.
    func cgroupMatch(_ g: Cgroup) -> String {
        let parts = g.path.split(separator: "/")
        let path = ((cgroupPrefix.isEmpty ? [] : [Substring(cgroupPrefix)]) + parts).joined(separator: "/")
        return "socket cgroupv2 level \(parts.count) \"\(path)\""
    }

    /// Whether the proxy is told by cgroup (known, or still to be learned), not by its mark alone.
    private var byCgroup: Bool { config.proxyCgroup != nil || config.proxyUnknown }
    /// Appended to each capture rule when the mark alone tells the proxy (Istio's rule).
    private var notProxy: String { byCgroup ? "" : " \(notMark)" }

    private func loopback(_ v6: Bool) -> String { v6 ? "ip6 daddr != ::1" : "ip daddr != 127.0.0.1" }
    private func family(_ v6: Bool) -> String { v6 ? "ip6" : "ip" }

    private func natTable(_ families: [Bool]) -> Table {
        let c = config
        var pre = families.map { "meta l4proto tcp \(family($0)) saddr \(c.probeIP(ipv6: $0)) accept" }
        // As Istio: TCP arriving on a virtual interface (a VM's tap) is the VM's outbound traffic.
        pre += reroute.map { "iifname \"\($0)\" meta l4proto tcp redirect to :\(c.outboundPort)" }
        if !bypassInbound {
            pre += families.map { "\(loopback($0)) tcp dport != \(c.tunnelPort) \(notMark) redirect to :\(c.inboundPort)" }
        }
        // The proxy's sockets skip capture: with a cgroup, one ACCEPT and no mark test after it.
        var out = c.proxyCgroups.map { "\(mark) \(cgroupMatch($0)) accept" }
        if c.dnsCapture {
            out.append("oifname != \"lo\"\(notProxy) udp dport 53 redirect to :\(c.dnsPort)")
            out += families.map { "\(loopback($0)) tcp dport 53\(notProxy) redirect to :\(c.dnsPort)" }
        }
        out.append("meta l4proto tcp meta mark & \(hex(c.markMask)) == \(hex(c.connMark)) accept")
        out += families.map { "oifname \"lo\" \(loopback($0)) accept" }
        out += families.map { "meta l4proto tcp \(loopback($0))\(notProxy) redirect to :\(c.outboundPort)" }
        return Table(name: Self.natTable, chains: [
            Chain(name: "prerouting", hook: "type nat hook prerouting priority -100", rules: ["jump istio-prerouting"]),
            Chain(name: "output", hook: "type nat hook output priority -100", rules: ["jump istio-output"]),
            Chain(name: "istio-prerouting", rules: pre),
            Chain(name: "istio-output", rules: out),
        ])
    }

    /// Connection marks as Istio sets them, plus the guards iptables mode has (docs/security.md):
    /// spoofed segments of the proxy's loopback connections and invalid TCP are dropped; packets to
    /// the proxy's ports reach only the proxy's sockets, and answers from them leave only from it.
    private func mangleTable() -> Table {
        let c = config
        let connmark = "ct mark & \(hex(c.markMask)) == \(hex(c.connMark))"
        let pre = [
            "\(mark) ct mark set ct mark & \(hex(~c.markMask)) | \(hex(c.connMark))",
            "iifname != \"lo\" \(connmark) drop",
            "iifname != \"lo\" meta l4proto tcp ct state invalid drop",
        ]
        var out = ["\(connmark) meta mark set ct mark"]
        let ports = "{ " + proxyPorts.map(String.init).joined(separator: ", ") + " }"
        var input: [String]
        if byCgroup {
            // Every packet of a connection to the proxy's ports (the SYN meets the listener, the rest
            // their connection's socket) reaches only the proxy's sockets; answers leave only from them.
            input = ["meta l4proto tcp tcp dport \(ports) ct direction original jump \(Self.proxySocketChain)"]
            out.append("meta l4proto tcp tcp sport \(ports) ct direction reply meta skuid 0-4294967294 jump \(Self.proxySocketChain)")
            if c.dnsCapture { out.append("udp sport \(c.dnsPort) ct direction reply meta skuid 0-4294967294 jump \(Self.proxySocketChain)") }
        } else {
            // Mark only: a SYN reaches only a listener with the proxy's mark.
            input = ["tcp flags & (fin | syn | rst | ack) == syn tcp dport \(ports) jump \(Self.proxySocketChain)"]
        }
        if c.dnsCapture { input.append("udp dport \(c.dnsPort) jump \(Self.proxySocketChain)") }
        return Table(name: Self.mangleTable, chains: [
            Chain(name: "prerouting", hook: "type filter hook prerouting priority -150", rules: ["jump istio-prerouting"]),
            Chain(name: "output", hook: "type route hook output priority -150", rules: ["jump istio-output"]),
            Chain(name: "input", hook: "type filter hook input priority -150", rules: ["jump istio-input"]),
            Chain(name: "istio-prerouting", rules: pre),
            Chain(name: "istio-output", rules: out),
            Chain(name: "istio-input", rules: input),
            Chain(name: Self.proxySocketChain, rules: proxySocketRules),
        ])
    }

    /// The proxy's ports: captured, tunnel, and DNS with DNS capture.
    private var proxyPorts: [UInt16] {
        [config.outboundPort, config.inboundPort, config.tunnelPort] + (config.dnsCapture ? [config.dnsPort] : [])
    }

    /// Returns for a socket of the proxy (by cgroup, or by mark when only the mark is known); drops
    /// for any other full socket. No full socket (none, TIME_WAIT, a handshake in progress) makes
    /// `socket mark` match nothing, and the packet goes on: the kernel answers it itself. A socket
    /// in a cgroup shallower than a proxy's level matches no `return` either: it is dropped.
    private var proxySocketRules: [String] {
        let c = config
        var rules: [String]
        if byCgroup {
            rules = c.proxyCgroups.map { "\(cgroupMatch($0)) return" }
        } else {
            rules = ["socket mark & \(hex(c.markMask)) == \(hex(c.proxyMark)) return"]
        }
        return rules + ["socket mark 0x0 counter drop", "socket mark != 0x0 counter drop"]
    }

    /// Separate conntrack zones keep the proxy's upstream DNS flows apart from the app's.
    private func rawTable() -> Table {
        let c = config
        let proxies = c.proxyCgroups.isEmpty ? [mark] : c.proxyCgroups.map { "\(mark) \(cgroupMatch($0))" }
        return Table(name: Self.rawTable, chains: [
            Chain(name: "prerouting", hook: "type filter hook prerouting priority -300", rules: ["jump istio-prerouting"]),
            Chain(name: "output", hook: "type filter hook output priority -300", rules: ["jump istio-output"]),
            Chain(name: "istio-prerouting", rules: ["udp sport 53 \(notMark) ct zone set 1"]),
            Chain(name: "istio-output", rules: proxies.map { "udp dport 53 \($0) ct zone set 1" }),
        ])
    }

    // MARK: node

    /// The node's set of in-mesh pod IPs of one family.
    public func setName(ipv6: Bool) -> String { config.ipsetName(ipv6: ipv6) }

    /// The node's chains: the probe SNAT (before any other source NAT), the probe guard, and with a
    /// kubelet cgroup the chain that marks the kubelet's new connections to in-mesh pods. nft cannot
    /// ask a socket's cgroup after routing, so that test is made in output and carried to the SNAT
    /// on the connection's conntrack mark (``CaptureConfig/probeSNATMark``).
    public var nodeChains: [Chain] {
        let c = config
        let bit = hex(c.probeSNATMark)
        var chains: [Chain] = []
        var snat: [String] = []
        var guardRules: [String] = []
        var kubelet: [String] = []
        for v6 in [false, true] {
            let f = family(v6), set = "@\(setName(ipv6: v6))", probe = c.probeIP(ipv6: v6)
            if let k = c.kubeletCgroup {
                // A conntrack mark, not the packet's: a process can set its socket's mark (SO_MARK,
                // CAP_NET_RAW since Linux 5.17), never its connection's. Forwarded packets have no
                // socket, and the SNAT wants one.
                kubelet.append("meta l4proto tcp ct state new \(f) daddr \(set) \(cgroupMatch(k)) ct mark set ct mark | \(bit)")
                snat.append("meta l4proto tcp meta skuid 0-4294967294 ct mark & \(bit) == \(bit) \(f) daddr \(set) snat \(f) to \(probe)")
            } else {
                snat.append("meta l4proto tcp meta skuid 0-4294967294 \(f) daddr \(set) snat \(f) to \(probe)")
            }
            guardRules.append("\(f) saddr \(probe) \(f) daddr \(set) counter drop")
        }
        chains.append(Chain(name: "probe-snat", hook: "type nat hook postrouting priority 99", rules: snat))
        chains.append(Chain(name: "probe-guard", hook: "type filter hook prerouting priority -300", rules: guardRules))
        if !kubelet.isEmpty { chains.append(Chain(name: "probe-kubelet", hook: "type filter hook output priority 300", rules: kubelet)) }
        return chains
    }

    /// Transaction for the node: the table and sets added (kept with their elements when there),
    /// our chains deleted and made again; a kubelet chain no longer wanted goes, and so does a
    /// `postrouting` chain another installation left there.
    public func node() -> String {
        let t = Self.nodeTable
        var out = "add table inet \(t)\n"
        for v6 in [false, true] {
            out += "add set inet \(t) \(setName(ipv6: v6)) { type \(v6 ? "ipv6_addr" : "ipv4_addr") ; comment \"UIDs of the pods in the mesh\" ; }\n"
        }
        let chains = nodeChains
        // Ours, and `postrouting`: the SNAT chain istio-cni's nftables backend keeps in a table of this
        // name (by the kubelet's uid); left behind by an earlier install it would SNAT beside ours.
        for name in ["probe-snat", "probe-guard", "probe-kubelet", "postrouting"] {
            out += "add chain inet \(t) \(name)\ndelete chain inet \(t) \(name)\n"
        }
        return out + render(Table(name: t, chains: chains))
    }

    /// Transaction that removes the node's table (with its sets).
    public func nodeRemoval() -> String { "add table inet \(Self.nodeTable)\ndelete table inet \(Self.nodeTable)\n" }

    /// Transaction that puts `ip` in its family's set, tagged with `uid` (replacing a tag it had).
    public func addElement(_ ip: IPAddress, uid: String) -> String {
        let e = "add element inet \(Self.nodeTable) \(setName(ipv6: ip.isIPv6)) { \(ip) }\n"
        return e + "delete element inet \(Self.nodeTable) \(setName(ipv6: ip.isIPv6)) { \(ip) }\n"
            + "add element inet \(Self.nodeTable) \(setName(ipv6: ip.isIPv6)) { \(ip) comment \"\(uid)\" }\n"
    }

    /// Transaction that takes `ip` out of its family's set.
    public func deleteElement(_ ip: IPAddress) -> String {
        "delete element inet \(Self.nodeTable) \(setName(ipv6: ip.isIPv6)) { \(ip) }\n"
    }

    // MARK: rendering

    private func render(_ t: Table) -> String {
        var out = ""
        for c in t.chains {
            out += "add chain inet \(t.name) \(c.name)" + (c.hook.map { " { \($0) ; }" } ?? "") + "\n"
        }
        for c in t.chains { for r in c.rules { out += "add rule inet \(t.name) \(c.name) \(r)\n" } }
        return out
    }

    private func hex(_ v: UInt32) -> String { "0x" + String(v, radix: 16) }
}
