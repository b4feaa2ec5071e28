import Dataplane
import Foundation
import SystemCalls
import Testing

/// Our nftables pod ruleset against Istio 1.28's native nftables one, compared in the kernel's own
/// words: ours is loaded into a fresh namespace and listed by `nft list ruleset`, which prints every
/// rule in one canonical spelling; Istio's is written below as that listing shows it (its default
/// configuration: IPv4, DNS capture on, the proxy told by its mark). The same rules in the same order
/// per chain, except the deliberate differences listed with their reasons; a difference not listed
/// fails, and so does a listed one that no longer exists.
@Suite("nftables rules: equivalent to Istio's native nftables ruleset", .serialized)
struct IstioNftEquivalenceTests {
    /// Istio's in-pod ruleset (istio-cni's nftables backend, `cni/pkg/nftables`), chain by chain,
    /// each chain's base-chain line first.
    static let istio: [String: [String]] = [
        "istio-ambient-nat prerouting": ["type nat hook prerouting priority dstnat; policy accept;", "jump istio-prerouting"],
        "istio-ambient-nat output": ["type nat hook output priority -100; policy accept;", "jump istio-output"],
        "istio-ambient-nat istio-prerouting": [
            "meta l4proto tcp ip saddr 169.254.7.127 accept",
            "ip daddr != 127.0.0.1 tcp dport != 15008 meta mark & 0x00000fff != 0x00000539 redirect to :15006",
        ],
        "istio-ambient-nat istio-output": [
            "meta l4proto tcp ip daddr 169.254.7.127 accept",
            "oifname != \"lo\" meta mark & 0x00000fff != 0x00000539 udp dport 53 redirect to :15053",
            "ip daddr != 127.0.0.1 tcp dport 53 meta mark & 0x00000fff != 0x00000539 redirect to :15053",
            "meta l4proto tcp meta mark & 0x00000fff == 0x00000111 accept",
            "oifname \"lo\" ip daddr != 127.0.0.1 accept",
            "meta l4proto tcp ip daddr != 127.0.0.1 meta mark & 0x00000fff != 0x00000539 redirect to :15001",
        ],
        "istio-ambient-mangle prerouting": ["type filter hook prerouting priority mangle; policy accept;", "jump istio-prerouting"],
        "istio-ambient-mangle output": ["type route hook output priority mangle; policy accept;", "jump istio-output"],
        "istio-ambient-mangle istio-prerouting": ["meta mark & 0x00000fff == 0x00000539 ct mark set ct mark & 0xfffff111 | 0x00000111"],
        "istio-ambient-mangle istio-output": ["ct mark & 0x00000fff == 0x00000111 meta mark set ct mark"],
        "istio-ambient-raw prerouting": ["type filter hook prerouting priority raw; policy accept;", "jump istio-prerouting"],
        "istio-ambient-raw output": ["type filter hook output priority raw; policy accept;", "jump istio-output"],
        "istio-ambient-raw istio-prerouting": ["udp sport 53 meta mark & 0x00000fff != 0x00000539 ct zone set 1"],
        "istio-ambient-raw istio-output": ["udp dport 53 meta mark & 0x00000fff == 0x00000539 ct zone set 1"],
    ]

    /// A rule only we have (`ours`) or only Istio has; `rule` nil: the whole chain is ours.
    struct Deliberate: CustomStringConvertible {
        var chain: String
        var rule: String?
        var ours: Bool
        var reason: String
        var description: String { "\(ours ? "+" : "-") \(chain) \(rule ?? "(chain)") (\(reason))" }
    }

    static let differences: [Deliberate] = [
        Deliberate(chain: "istio-ambient-mangle istio-prerouting", rule: "iifname != \"lo\" ct mark & 0x00000fff == 0x00000111 drop", ours: true,
                   reason: "a packet from outside that claims the proxy's loopback connection to the app is spoofed"),
        Deliberate(chain: "istio-ambient-mangle istio-prerouting", rule: "iifname != \"lo\" meta l4proto tcp ct state invalid drop", ours: true,
                   reason: "segments conntrack cannot place would reach app sockets without passing NAT"),
        Deliberate(chain: "istio-ambient-nat istio-output", rule: "meta l4proto tcp ip daddr 169.254.7.127 accept", ours: false,
                   reason: "any process in the pod could open uncaptured connections to the probe IP"),
        Deliberate(chain: "istio-ambient-mangle input", rule: nil, ours: true, reason: "the listener guard hangs from input (after nat)"),
        Deliberate(chain: "istio-ambient-mangle istio-input", rule: nil, ours: true,
                   reason: "SYNs and DNS datagrams to the proxy's ports reach only the proxy's sockets: an app that binds them first gets nothing"),
        Deliberate(chain: "istio-ambient-mangle istio-proxy-socket", rule: nil, ours: true, reason: "the guard's test: the proxy's socket returns, any other is dropped"),
    ]

    /// `nft list ruleset` as chain -> lines (counters and comments removed: ours carries a digest).
    static func chains(_ listing: String) -> [String: [String]] {
        var out: [String: [String]] = [:]
        var table = "", chain = ""
        for raw in listing.split(separator: "\n") {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("table ") { table = String(line.split(separator: " ")[2]); continue }
            if line.hasPrefix("chain ") { chain = "\(table) \(line.split(separator: " ")[1])"; out[chain] = []; continue }
            if line.isEmpty || line == "}" { continue }
            out[chain, default: []].append(line.replacingOccurrences(of: #"counter packets \d+ bytes \d+ ?"#, with: "", options: .regularExpression)
                .replacingOccurrences(of: #" comment "[^"]*""#, with: "", options: .regularExpression))
        }
        return out
    }

    @Test("our pod ruleset, as the kernel lists it, is Istio's plus or minus exactly the listed differences")
    func equivalent() throws {
        if getuid() != 0 { Issue.record("cannot run: needs root (a namespace, nftables)"); return }
        guard (try? Command.resolve("nft")) != nil else { Issue.record("cannot run: no nft program (apt-get install nftables)"); return }
        let netns = "ra-test-nfteq-\(UInt32.random(in: 0..<UInt32.max))"
        try Command.run("ip", ["netns", "add", netns])
        defer { _ = try? Command.run("ip", ["netns", "del", netns]) }
        let runner = ProcessRunner(defaultNetns: "/run/netns/\(netns)")
        try runner.checked("nft", ["-f", "-"], input: NftablesRules(config: CaptureConfig()).pod(ipv4: true, ipv6: false))
        let ours = Self.chains(try runner.checked("nft", ["list", "ruleset"]))
        #expect(ours.count >= Self.istio.count, "the presence: the listing shows our chains: \(ours.keys.sorted())")

        for d in Self.differences {
            let have = d.ours ? ours[d.chain] : Self.istio[d.chain]
            let there = d.rule.map { have?.contains($0) == true } ?? (have != nil)
            #expect(there, "a listed difference no longer exists: \(d)")
        }
        let ourChains = Set(Self.differences.filter { $0.ours && $0.rule == nil }.map(\.chain))
        for chain in Set(ours.keys).union(Self.istio.keys).sorted() where !ourChains.contains(chain) {
            let mine = (ours[chain] ?? []).filter { r in !Self.differences.contains { $0.ours && $0.chain == chain && $0.rule == r } }
            let theirs = (Self.istio[chain] ?? []).filter { r in !Self.differences.contains { !$0.ours && $0.chain == chain && $0.rule == r } }
            #expect(mine == theirs, "\(chain): ours \(mine), Istio's \(theirs)")
        }
    }
}
