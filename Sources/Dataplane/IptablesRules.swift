import SystemCalls

/// Renders iptables-restore input (for `--noflush`) for Istio's in-pod capture and the node's
/// probe SNAT. Pure: what is already installed comes in as `present`, parsed from iptables-save,
/// so a second apply adds no duplicate jump and a removal deletes only what exists.
public struct IptablesRules: Sendable {
    /// The configuration rendered.
    public var config: CaptureConfig
    /// The pod's interfaces whose inbound TCP is treated as outbound (`istio.io/reroute-virtual-interfaces`).
    public var reroute: [String]
    /// No inbound capture for this pod (`ambient.istio.io/bypass-inbound-capture`): Istio leaves out
    /// its inbound REDIRECT, and so do we; everything else stays.
    public var bypassInbound: Bool
    /// Creates a renderer.
    public init(config: CaptureConfig, reroute: [String] = [], bypassInbound: Bool = false) {
        self.config = config; self.reroute = reroute; self.bypassInbound = bypassInbound
    }

    /// Our pre-routing chain.
    public var prerouting: String { "\(config.chainPrefix)_PRERT" }
    /// Our output chain.
    public var output: String { "\(config.chainPrefix)_OUTPUT" }
    /// Our input chain (mangle), which keeps the proxy's ports for the proxy's own listeners.
    public var input: String { "\(config.chainPrefix)_INPUT" }
    /// Our node post-routing chain.
    public var postrouting: String { "\(config.chainPrefix)_POSTRT" }
    /// Our node chain that drops packets from elsewhere claiming the probe IP (raw PREROUTING).
    public var probeGuard: String { "\(config.chainPrefix)_PROBE_GUARD" }

    /// A jump from a built-in chain into ours, as `table builtin target`.
    public struct Jump: Hashable, Sendable {
        /// Table.
        public var table: String
        /// Built-in chain.
        public var from: String
        /// Our chain.
        public var to: String
        /// Creates a jump.
        public init(_ table: String, _ from: String, _ to: String) { self.table = table; self.from = from; self.to = to }
    }

    // MARK: pod

    /// The rules of each table for a pod, keyed by table, chains in order of use.
    ///
    /// Istio's rules, hardened where they can be bypassed (docs/security.md):
    /// - packets from outside that belong to the proxy's loopback connections to the app (connmark
    ///   0x111), or that conntrack finds invalid, are dropped: spoofed segments never reach an app socket;
    /// - an app's new connection to the probe IP is captured like any other (Istio accepts it);
    /// - with a proxy cgroup, only the proxy's sockets skip capture, not any socket with the mark;
    /// - a connection to the proxy's ports (captured or direct) reaches only a listener with the
    ///   proxy's mark: an app that binds 15001, 15006 or 15008 first gets no SYN (Istio delivers
    ///   captured connections to whoever listens there).
    func podTables(ipv6: Bool) -> [(table: String, rules: [(chain: String, rule: String)])] {
        let c = config
        let mark = "0x\(hex(c.proxyMark))/0x\(hex(c.markMask))"
        let conn = "0x\(hex(c.connMark))/0x\(hex(c.markMask))"
        let lo = ipv6 ? "::1/128" : "127.0.0.1/32"
        let probe = "\(c.probeIP(ipv6: ipv6))/\(ipv6 ? 128 : 32)"
        // Who skips capture on the way out: with a cgroup, one ACCEPT for the proxy's sockets and no
        // mark test after it; without, Istio's `! --mark` on each rule.
        let proxies = c.proxyCgroups.map { "-m mark --mark \(mark) -m cgroup --path \($0.path)" }
        let notProxy = proxies.isEmpty && !c.proxyUnknown ? " -m mark ! --mark \(mark)" : ""
        let mangle: [(String, String)] = [
            (prerouting, "-m mark --mark \(mark) -j CONNMARK --set-xmark \(conn)"),
            (prerouting, "! -i lo -m connmark --mark \(conn) -j DROP"),
            (prerouting, "! -i lo -p tcp -m conntrack --ctstate INVALID -j DROP"),
            (output, "-m connmark --mark \(conn) -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff"),
        ] + listenerGuard(mark: mark) + hijackGuard()
        var nat: [(String, String)] = [(prerouting, "-s \(probe) -p tcp -m tcp -j ACCEPT")]
        // As Istio: TCP arriving on a virtual interface (a VM's tap) is the VM's outbound traffic.
        nat += reroute.map { (prerouting, "-i \($0) -p tcp -j REDIRECT --to-ports \(c.outboundPort)") }
        if !bypassInbound {
            nat.append((prerouting, "! -d \(lo) -p tcp -m tcp ! --dport \(c.tunnelPort) -m mark ! --mark \(mark) -j REDIRECT --to-ports \(c.inboundPort)"))
        }
        nat += proxies.map { (output, "\($0) -j ACCEPT") }
        if c.dnsCapture {
            nat += [
                (output, "! -o lo -p udp\(notProxy) -m udp --dport 53 -j REDIRECT --to-ports \(c.dnsPort)"),
                (output, "! -d \(lo) -p tcp -m tcp --dport 53\(notProxy) -j REDIRECT --to-ports \(c.dnsPort)"),
            ]
        }
        nat += [
            (output, "-p tcp -m mark --mark \(conn) -j ACCEPT"),
            (output, "! -d \(lo) -o lo -j ACCEPT"),
            (output, "! -d \(lo) -p tcp\(notProxy) -j REDIRECT --to-ports \(c.outboundPort)"),
        ]
        var tables: [(table: String, rules: [(chain: String, rule: String)])] = [("mangle", mangle), ("nat", nat)]
        if c.dnsCapture {
            // Separate conntrack zones keep the proxy's upstream DNS flows apart from the app's.
            tables.append(("raw", (proxies.isEmpty ? ["-m mark --mark \(mark)"] : proxies).map { (output, "-p udp \($0) -m udp --dport 53 -j CT --zone 1") }
                + [(prerouting, "-p udp -m mark ! --mark \(mark) -m udp --sport 53 -j CT --zone 1")]))
        }
        return tables
    }

    /// SYNs (and DNS datagrams, with DNS capture) to the proxy's ports: the kernel's socket lookup
    /// copies the receiving socket's mark onto the packet, and without the proxy's mark it is dropped.
    /// After nat, so a captured connection is checked on the port it was redirected to.
    ///
    /// A SYN that meets a TIME_WAIT socket (a client reusing its 4-tuple) has no socket mark to copy:
    /// a sentinel mark set first survives the lookup, and such SYNs (and SYNs no socket takes, which
    /// the kernel resets) pass with their mark cleared.
    func listenerGuard(mark: String) -> [(String, String)] {
        let c = config
        let tcp = [c.outboundPort, c.inboundPort, c.tunnelPort] + (c.dnsCapture ? [c.dnsPort] : [])
        let syn = "-p tcp -m tcp --syn -m multiport --dports \(tcp.map(String.init).joined(separator: ","))"
        let mask = "0x\(hex(c.markMask))"
        let sentinel = "0x\(hex(c.guardSentinelMark))/\(mask)"
        var rules: [(String, String)] = [
            (input, "\(syn) -j MARK --set-xmark \(sentinel)"),
            (input, "\(syn) -m socket --nowildcard --restore-skmark"),
            (input, "\(syn) -m mark ! --mark \(mark) -m mark ! --mark \(sentinel) -j DROP"),
            (input, "\(syn) -m mark --mark \(sentinel) -j MARK --set-xmark 0x0/\(mask)"),
        ]
        if c.dnsCapture {
            rules += [
                (input, "-p udp -m udp --dport \(c.dnsPort) -m socket --nowildcard --restore-skmark"),
                (input, "-p udp -m udp --dport \(c.dnsPort) -m mark ! --mark \(mark) -j DROP"),
            ]
        }
        return rules
    }

    /// With the proxy's cgroup known, the bytes of a connection to the proxy's ports flow only to and
    /// from the proxy's sockets. The SYN guard above goes by the listener's mark, which a process with
    /// CAP_NET_RAW (Linux 5.17+) can set on its own listener; xtables cannot ask a listener's cgroup,
    /// so such a listener still completes handshakes (the kernel answers for it). But once the
    /// connection is established every packet carries its socket: arriving ones through early demux
    /// (on by default, and switching it off needs CAP_NET_ADMIN, which could delete these rules
    /// anyway), leaving ones as their sender. Data to or from a socket outside the proxy's cgroup on
    /// those ports is dropped, so a hijacked connection carries nothing either way. Packets the
    /// kernel sends for a connection (TIME_WAIT ACKs, resets) come from sockets without a file and
    /// are spared by the owner match.
    /// With DNS capture, answers from 15053 (UDP and TCP) must come from the proxy too: an app
    /// holding that port with the forged mark would otherwise answer the pod's queries. (An
    /// unconnected UDP socket gets no early demux, so such an app still reads the queries.)
    func hijackGuard() -> [(String, String)] {
        let c = config
        guard c.proxyCgroup != nil || c.proxyUnknown else { return [] }
        // No proxy known yet: no socket is the proxy's, so the cgroup test is left out.
        let notProxy = c.proxyCgroups.map { " -m cgroup ! --path \($0.path)" }.joined()
        let ports = ([c.outboundPort, c.inboundPort, c.tunnelPort] + (c.dnsCapture ? [c.dnsPort] : [])).map(String.init).joined(separator: ",")
        let sender = "-m owner --uid-owner 0-4294967294\(notProxy) -j DROP"
        var rules = [
            (input, "-p tcp -m multiport --dports \(ports) -m conntrack --ctdir ORIGINAL\(notProxy) -j DROP"),
            (output, "-p tcp -m multiport --sports \(ports) -m conntrack --ctdir REPLY \(sender)"),
        ]
        if c.dnsCapture { rules.append((output, "-p udp -m udp --sport \(c.dnsPort) -m conntrack --ctdir REPLY \(sender)")) }
        return rules
    }

    /// The built-in chain each of our pod chains hangs from.
    private var podHooks: [(from: String, to: String)] { [("PREROUTING", prerouting), ("OUTPUT", output), ("INPUT", input)] }

    /// Our chains a table uses: pre-routing and output always (as Istio declares them), input where it has rules.
    private func podChains(_ t: (table: String, rules: [(chain: String, rule: String)])) -> [(from: String, to: String)] {
        podHooks.filter { $0.to != input || t.rules.contains { $0.chain == input } }
    }

    /// The jumps a pod needs.
    public func podJumps(ipv6: Bool) -> [Jump] {
        podTables(ipv6: ipv6).flatMap { t in podChains(t).map { Jump(t.table, $0.from, $0.to) } }
    }

    /// Restore input that (re)writes our pod chains and adds the jumps not in `present`.
    public func pod(ipv6: Bool, present: Set<Jump> = []) -> String {
        var out = ""
        for t in podTables(ipv6: ipv6) {
            let chains = podChains(t)
            out += "*\(t.table)\n" + chains.map { ":\($0.to) - [0:0]\n" }.joined()
            for j in chains.map({ Jump(t.table, $0.from, $0.to) }) where !present.contains(j) {
                out += "-A \(j.from) -j \(j.to)\n"
            }
            for r in t.rules { out += "-A \(r.chain) \(r.rule)\n" }
            out += "COMMIT\n"
        }
        // DNS capture turned off for a running pod: its raw chains (conntrack zones) are emptied.
        let raw = present.filter { $0.table == "raw" }.map(\.to)
        if !config.dnsCapture, !raw.isEmpty {
            out += "*raw\n" + Set(raw).sorted().map { ":\($0) - [0:0]\n" }.joined() + "COMMIT\n"
        }
        return out
    }

    /// Restore input that removes our pod chains and the jumps in `present`; empty when nothing is there.
    public func podRemoval(present: Set<Jump>, chains: Set<String>) -> String {
        removal(tables: ["mangle", "nat", "raw"], ours: [prerouting, output, input], present: present, chains: chains)
    }

    // MARK: node

    /// The node's probe SNAT rule.
    func nodeRule(ipv6: Bool) -> String {
        let kubelet = config.kubeletCgroup.map { " -m cgroup --path \($0.path)" } ?? ""
        return "-m owner --socket-exists\(kubelet) -p tcp -m set --match-set \(config.ipsetName(ipv6: ipv6)) dst -j SNAT --to-source \(config.probeIP(ipv6: ipv6))"
    }

    /// The node's guard: a packet that reaches the node from elsewhere (another pod, another node)
    /// with the probe IP as its source, for an in-mesh pod, is dropped. Only this node's own SNAT
    /// may produce such packets, and those leave through OUTPUT, never PREROUTING. Istio has no
    /// such rule, so there any pod can send from the probe IP and skip the pod's inbound capture.
    func probeGuardRule(ipv6: Bool) -> String {
        "-s \(config.probeIP(ipv6: ipv6)) -m set --match-set \(config.ipsetName(ipv6: ipv6)) dst -j DROP"
    }

    /// The node's jumps.
    public var nodeJump: Jump { Jump("nat", "POSTROUTING", postrouting) }
    /// The guard's jump.
    public var guardJump: Jump { Jump("raw", "PREROUTING", probeGuard) }

    /// Restore input for the node: our chains rewritten; each jump inserted at position 1 unless it
    /// already is first (`jumpIsFirst`, `guardIsFirst`); a jump that slipped down is deleted and re-inserted.
    public func node(ipv6: Bool, jumpPresent: Bool, jumpIsFirst: Bool, guardPresent: Bool = false, guardIsFirst: Bool = false) -> String {
        var out = "*nat\n:\(postrouting) - [0:0]\n"
        out += firstJump("POSTROUTING", postrouting, present: jumpPresent, first: jumpIsFirst)
        out += "-A \(postrouting) \(nodeRule(ipv6: ipv6))\nCOMMIT\n"
        out += "*raw\n:\(probeGuard) - [0:0]\n"
        out += firstJump("PREROUTING", probeGuard, present: guardPresent, first: guardIsFirst)
        out += "-A \(probeGuard) \(probeGuardRule(ipv6: ipv6))\nCOMMIT\n"
        return out
    }

    private func firstJump(_ from: String, _ to: String, present: Bool, first: Bool) -> String {
        var out = ""
        if present && !first { out += "-D \(from) -j \(to)\n" }
        if !present || !first { out += "-I \(from) 1 -j \(to)\n" }
        return out
    }

    /// Restore input that removes the node's chains and jumps.
    public func nodeRemoval(present: Set<Jump>, chains: Set<String>) -> String {
        removal(tables: ["nat", "raw"], ours: [postrouting, probeGuard], present: present, chains: chains)
    }

    private func removal(tables: [String], ours: [String], present: Set<Jump>, chains: Set<String>) -> String {
        var out = ""
        for table in tables {
            let mine = ours.filter { chains.contains("\(table) \($0)") }
            if mine.isEmpty { continue }
            out += "*\(table)\n" + mine.map { ":\($0) - [0:0]\n" }.joined()
            for j in present.sorted(by: { $0.from < $1.from }) where j.table == table && mine.contains(j.to) {
                out += "-D \(j.from) -j \(j.to)\n"
            }
            out += mine.map { "-X \($0)\n" }.joined() + "COMMIT\n"
        }
        return out
    }

    // MARK: reading iptables-save

    /// Whether `nft list table` output holds nothing but base chains with policy accept: no rule,
    /// set, map, flowtable, object or comment.
    public static func onlyAcceptingBaseChains(nftTable text: String) -> Bool {
        for raw in text.split(separator: "\n") {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line == "}" { continue }
            if line.hasPrefix("table ") && line.hasSuffix("{") { continue }
            if line.hasPrefix("chain ") && line.hasSuffix("{") { continue }
            if line.hasPrefix("type ") && line.hasSuffix("policy accept;") { continue }
            return false
        }
        return true
    }

    /// Tables of an iptables-save dump that hold nothing: only built-in chains, each with policy
    /// ACCEPT, and no rule. Deleting one changes no packet's fate (iptables-nft creates it again when
    /// a rule needs it); it is what adding our rules to a fresh namespace left behind.
    public static func emptyTables(in save: String) -> [String] {
        let builtin: Set<String> = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"]
        var empty: [String] = []
        var table: String?, clean = true
        for raw in save.split(separator: "\n") {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("*") { table = String(line.dropFirst()); clean = true; continue }
            if line == "COMMIT" {
                if let table, clean { empty.append(table) }
                table = nil
                continue
            }
            if line.isEmpty || line.hasPrefix("#") { continue }
            let f = line.split(separator: " ")
            let accepting = line.hasPrefix(":") && f.count >= 2 && builtin.contains(String(f[0].dropFirst())) && f[1] == "ACCEPT"
            if !accepting { clean = false }
        }
        return empty
    }

    /// What of ours an iptables-save dump holds.
    public struct Installed: Sendable, Equatable {
        /// Jumps from built-in chains into ours, in any table.
        public var jumps: Set<Jump> = []
        /// Our chains, as `table chain`.
        public var chains: Set<String> = []
        /// Rules per `table chain` of ours.
        public var ruleCounts: [String: Int] = [:]
        /// The first rule of each built-in chain, as `table chain` -> target.
        public var firstTargets: [String: String] = [:]
    }

    /// Parses an iptables-save dump for our chains, jumps and rule counts.
    public func installed(in save: String) -> Installed {
        var result = Installed()
        let ours = Set([prerouting, output, input, postrouting, probeGuard])
        var table = ""
        for raw in save.split(separator: "\n") {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("*") { table = String(line.dropFirst()); continue }
            if line.hasPrefix(":") {
                let name = String(line.dropFirst().split(separator: " ").first ?? "")
                if ours.contains(name) { result.chains.insert("\(table) \(name)") }
                continue
            }
            guard line.hasPrefix("-A ") else { continue }
            let f = line.split(separator: " ").map(String.init)
            let chain = f[1]
            let target = f.firstIndex(of: "-j").flatMap { $0 + 1 < f.count ? f[$0 + 1] : nil } ?? ""
            if result.firstTargets["\(table) \(chain)"] == nil { result.firstTargets["\(table) \(chain)"] = target }
            if ours.contains(chain) { result.ruleCounts["\(table) \(chain)", default: 0] += 1 }
            if ours.contains(target) && !ours.contains(chain) && f.count == 4 { result.jumps.insert(Jump(table, chain, target)) }
        }
        return result
    }

    /// Rules per `table chain` that a pod should have.
    public func expectedPodRuleCounts(ipv6: Bool) -> [String: Int] {
        var counts: [String: Int] = [:]
        for t in podTables(ipv6: ipv6) { for r in t.rules { counts["\(t.table) \(r.chain)", default: 0] += 1 } }
        return counts
    }

    private func hex(_ v: UInt32) -> String { String(v, radix: 16) }
}
