import Dataplane
import Foundation
import SystemCalls
import Testing

/// Our rendered iptables rules against Istio's own rulesets (IstioReference/, copied from istio/istio's
/// testdata): after normalizing the two spellings, the same rules in the same order per chain, except
/// the deliberate differences listed here with their reasons. A difference not listed fails, and so
/// does a listed one that no longer exists.
@Suite("iptables rules: equivalent to Istio's in-pod and host rulesets")
struct IstioEquivalenceTests {
    /// One difference we mean: a rule only we have (`ours`) or only Istio has (`!ours`); an empty
    /// rule stands for the chain itself.
    struct Deliberate: Hashable, CustomStringConvertible {
        var table: String
        var chain: String
        var rule: String
        var ours: Bool
        var reason: String
        var description: String { "\(ours ? "+" : "-") \(table) \(chain) \(rule) (\(reason))" }
    }

    /// The in-pod differences, for `probe` (one family).
    static func podDifferences(probe: String) -> [Deliberate] {
        [
            Deliberate(table: "mangle", chain: "ISTIO_PRERT", rule: "! -i lo -m connmark --mark 0x111/0xfff -j DROP", ours: true,
                       reason: "a packet from outside that claims the proxy's loopback connection to the app is spoofed"),
            Deliberate(table: "mangle", chain: "ISTIO_PRERT", rule: "! -i lo -p tcp -m conntrack --ctstate INVALID -j DROP", ours: true,
                       reason: "segments conntrack cannot place would reach app sockets without passing NAT"),
            Deliberate(table: "nat", chain: "ISTIO_OUTPUT", rule: "-d \(probe) -p tcp -j ACCEPT", ours: false,
                       reason: "any process in the pod could open uncaptured connections to the probe IP"),
        ] + listenerGuard
    }

    /// The listener guard (DNS capture on, as in Istio's files): the proxy's ports reach only marked listeners.
    static var listenerGuard: [Deliberate] {
        let why = "an app that binds the proxy's port first would receive captured connections"
        let syn = "-p tcp --syn -m multiport --dports 15001,15006,15008,15053"
        let tw = "a SYN meeting TIME_WAIT has no socket mark: a sentinel tells it apart"
        return [
            Deliberate(table: "mangle", chain: "INPUT", rule: "-j ISTIO_INPUT", ours: true, reason: why),
            Deliberate(table: "mangle", chain: "ISTIO_INPUT", rule: "\(syn) -j MARK --set-xmark 0xac6/0xfff", ours: true, reason: tw),
            Deliberate(table: "mangle", chain: "ISTIO_INPUT", rule: "\(syn) -m socket --nowildcard --restore-skmark", ours: true, reason: why),
            Deliberate(table: "mangle", chain: "ISTIO_INPUT", rule: "\(syn) -m mark ! --mark 0x539/0xfff -m mark ! --mark 0xac6/0xfff -j DROP", ours: true, reason: why),
            Deliberate(table: "mangle", chain: "ISTIO_INPUT", rule: "\(syn) -m mark --mark 0xac6/0xfff -j MARK --set-xmark 0x0/0xfff", ours: true, reason: tw),
            Deliberate(table: "mangle", chain: "ISTIO_INPUT", rule: "-p udp --dport 15053 -m socket --nowildcard --restore-skmark", ours: true, reason: why),
            Deliberate(table: "mangle", chain: "ISTIO_INPUT", rule: "-p udp --dport 15053 -m mark ! --mark 0x539/0xfff -j DROP", ours: true, reason: why),
            Deliberate(table: "mangle", chain: "ISTIO_INPUT", rule: "", ours: true, reason: "the guard's chain"),
        ]
    }

    /// The node differences, for `probe` and its ipset (one family).
    static func nodeDifferences(probe: String, ipset: String) -> [Deliberate] {
        [
            Deliberate(table: "raw", chain: "PREROUTING", rule: "-j ISTIO_PROBE_GUARD", ours: true,
                       reason: "the guard runs before anything else sees the packet"),
            Deliberate(table: "raw", chain: "ISTIO_PROBE_GUARD", rule: "-s \(probe) -m set --match-set \(ipset) dst -j DROP", ours: true,
                       reason: "a packet arriving from outside with the probe IP as source would pass the pod's probe exemption"),
            Deliberate(table: "raw", chain: "ISTIO_PROBE_GUARD", rule: "", ours: true, reason: "the guard's chain"),
        ]
    }

    static func reference(_ name: String) throws -> String {
        let url = try #require(Bundle.module.url(forResource: "IstioReference/\(name)", withExtension: "golden"))
        return try String(contentsOf: url, encoding: .utf8)
    }

    static func config(dns: Bool, probeV6: String? = nil) throws -> CaptureConfig {
        var c = CaptureConfig()
        c.dnsCapture = dns
        if let probeV6 { c.probeIPv6 = try #require(IPAddress(probeV6)) }
        return c
    }

    @Test("in-pod rules, IPv4, DNS capture on (default.golden)")
    func podV4() throws {
        let istio = try Ruleset.parse(Self.reference("default"))
        #expect(istio.count == 1)
        let ours = try Ruleset.parse(IptablesRules(config: Self.config(dns: true)).pod(ipv6: false))
        try Self.compare(ours: ours[0], istio: istio[0], deliberate: Self.podDifferences(probe: "169.254.7.127/32"))
    }

    @Test("in-pod rules, both families (default_ipv6.golden, whose IPv6 probe IP is a test address)")
    func podBoth() throws {
        let istio = try Ruleset.parse(Self.reference("default_ipv6"))
        #expect(istio.count == 2)
        let probe6 = "e9ac:1e77:90ca:399f:4d6d:ece2:2f9b:3164"
        let rules = IptablesRules(config: try Self.config(dns: true, probeV6: probe6))
        try Self.compare(ours: Ruleset.parse(rules.pod(ipv6: false))[0], istio: istio[0],
                         deliberate: Self.podDifferences(probe: "169.254.7.127/32"))
        try Self.compare(ours: Ruleset.parse(rules.pod(ipv6: true))[0], istio: istio[1],
                         deliberate: Self.podDifferences(probe: "\(probe6)/128"))
    }

    @Test("host probe SNAT, both families (hostprobe.golden, hostprobe_ipv6.golden)")
    func host() throws {
        let v4 = try Ruleset.parse(Self.reference("hostprobe")), both = try Ruleset.parse(Self.reference("hostprobe_ipv6"))
        #expect(v4.count == 1 && both.count == 2)
        #expect(v4[0] == both[0], "the two reference files agree on IPv4")
        let rules = IptablesRules(config: CaptureConfig())
        let node = { (ipv6: Bool) in try Ruleset.parse(rules.node(ipv6: ipv6, jumpPresent: false, jumpIsFirst: false))[0] }
        try Self.compare(ours: node(false), istio: both[0],
                         deliberate: Self.nodeDifferences(probe: "169.254.7.127/32", ipset: "istio-inpod-probes-v4"))
        try Self.compare(ours: node(true), istio: both[1],
                         deliberate: Self.nodeDifferences(probe: "fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128", ipset: "istio-inpod-probes-v6"))
    }

    @Test("the normalizer sees through spelling only: implicit -m tcp, host prefixes, --to-port, -N versus :chain")
    func normalizer() throws {
        #expect(Ruleset.normalize("-s 10.0.0.1 -p tcp -m tcp ! --dport 15008 -j REDIRECT --to-port 15006")
                == "-s 10.0.0.1/32 -p tcp ! --dport 15008 -j REDIRECT --to-ports 15006")
        #expect(Ruleset.normalize("! -d ::1 -p udp -m udp --dport 53") == "! -d ::1/128 -p udp --dport 53")
        // A match module that is not implied by -p stays.
        #expect(Ruleset.normalize("-p tcp -m mark --mark 0x1/0xfff") == "-p tcp -m mark --mark 0x1/0xfff")
        let a = try Ruleset.parse("* nat\n-N X\n-A X -p tcp -m tcp -j ACCEPT\nCOMMIT\n")
        let b = try Ruleset.parse("*nat\n:X - [0:0]\n-A X -p tcp -j ACCEPT\nCOMMIT\n")
        #expect(a == b)
        // A real difference stays visible: a different port, or a rule in another order.
        #expect(try Ruleset.parse("*nat\n-A X -p tcp --dport 1 -j ACCEPT\nCOMMIT\n") != Ruleset.parse("*nat\n-A X -p tcp --dport 2 -j ACCEPT\nCOMMIT\n"))
        #expect(try Ruleset.parse("*nat\n-A X -j A\n-A X -j B\nCOMMIT\n") != Ruleset.parse("*nat\n-A X -j B\n-A X -j A\nCOMMIT\n"))
        #expect(throws: RulesetError.self) { try Ruleset.parse("-A X -j ACCEPT\n") }
    }

    /// Requires `ours` to equal `istio` once the deliberate differences are taken out of each, and
    /// every deliberate difference to be present.
    static func compare(ours: Ruleset, istio: Ruleset, deliberate: [Deliberate],
                        sourceLocation: SourceLocation = #_sourceLocation) throws {
        var mine = ours, theirs = istio
        for d in deliberate {
            let removed = d.ours ? mine.remove(d.table, d.chain, Ruleset.normalize(d.rule))
                                 : theirs.remove(d.table, d.chain, Ruleset.normalize(d.rule))
            #expect(removed, "listed difference not found, remove it from the list: \(d)", sourceLocation: sourceLocation)
        }
        #expect(mine.tables.keys.sorted() == theirs.tables.keys.sorted(), "tables", sourceLocation: sourceLocation)
        for table in Set(mine.tables.keys).union(theirs.tables.keys).sorted() {
            let a = mine.tables[table] ?? [:], b = theirs.tables[table] ?? [:]
            for chain in Set(a.keys).union(b.keys).sorted() {
                #expect(a[chain] ?? [] == b[chain] ?? [], "\(table) \(chain): ours \(a[chain] ?? []) vs Istio's \(b[chain] ?? [])",
                        sourceLocation: sourceLocation)
            }
        }
    }
}

/// A parse error in a ruleset.
struct RulesetError: Error { var line: String }

/// One family's iptables-restore input as tables of chains of normalized rules in order. Chains
/// declared without rules appear with an empty list; `-I CHAIN 1` rules are put first.
struct Ruleset: Equatable {
    var tables: [String: [String: [String]]] = [:]

    /// The rulesets of a restore input, one per family: a table seen again starts the next family.
    /// Lines that are not restore input (Istio's recorded `iptables-save` calls) are skipped.
    static func parse(_ text: String) throws -> [Ruleset] {
        var sets: [Ruleset] = [], current = Ruleset(), table: String?
        for raw in text.split(separator: "\n") {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("*") {
                let name = line.dropFirst().trimmingCharacters(in: .whitespaces)
                if current.tables[name] != nil { sets.append(current); current = Ruleset() }
                current.tables[name] = [:]
                table = name
            } else if line == "COMMIT" {
                table = nil
            } else if line.hasPrefix("-N ") || line.hasPrefix(":") {
                guard let table else { throw RulesetError(line: line) }
                let chain = line.hasPrefix(":") ? String(line.dropFirst().split(separator: " ")[0]) : String(line.dropFirst(3))
                current.tables[table]![chain, default: []] += []
            } else if line.hasPrefix("-A ") || line.hasPrefix("-I ") {
                guard let table else { throw RulesetError(line: line) }
                var words = line.split(separator: " ").map(String.init)
                let insert = words[0] == "-I", chain = words[1]
                words.removeFirst(2)
                if insert, let n = words.first, Int(n) != nil { words.removeFirst() }
                let rule = normalize(words.joined(separator: " "))
                if insert { current.tables[table]![chain, default: []].insert(rule, at: 0) } else { current.tables[table]![chain, default: []].append(rule) }
            } else if line.hasPrefix("-") {
                throw RulesetError(line: line)
            }
        }
        if !current.tables.isEmpty { sets.append(current) }
        return sets
    }

    /// One rule in a canonical spelling: `-m tcp`/`-m udp` implied by `-p` dropped, host addresses
    /// given their prefix length, `--to-port` spelled `--to-ports`.
    static func normalize(_ rule: String) -> String {
        var words = rule.split(separator: " ").map(String.init)
        let proto = words.firstIndex(of: "-p").flatMap { $0 + 1 < words.count ? words[$0 + 1] : nil }
        var out: [String] = []
        var i = 0
        while i < words.count {
            let w = words[i]
            if w == "-m", i + 1 < words.count, words[i + 1] == proto { i += 2; continue }
            if (w == "-s" || w == "-d"), i + 1 < words.count, !words[i + 1].contains("/") {
                words[i + 1] += words[i + 1].contains(":") ? "/128" : "/32"
            }
            out.append(w == "--to-port" ? "--to-ports" : w)
            i += 1
        }
        return out.joined(separator: " ")
    }

    /// The kernel's own chains: they exist without a declaration, so one left without rules is gone.
    static let builtin: Set<String> = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"]

    /// Removes the first `rule` from `table`'s `chain`, or with an empty `rule` the chain itself if
    /// it has no rules left; false if there is no such rule or chain. A table left with no chain goes.
    mutating func remove(_ table: String, _ chain: String, _ rule: String) -> Bool {
        guard var chains = tables[table], var rules = chains[chain] else { return false }
        if rule.isEmpty {
            guard rules.isEmpty else { return false }
            chains[chain] = nil
        } else {
            guard let i = rules.firstIndex(of: rule) else { return false }
            rules.remove(at: i)
            chains[chain] = rules.isEmpty && Self.builtin.contains(chain) ? nil : rules
        }
        tables[table] = chains.isEmpty ? nil : chains
        return true
    }
}
