@testable import Dataplane
import Foundation
import SystemCalls
import Testing

/// The exact `nft -f` input for each configuration, against files under Golden/ (regenerate with
/// `UPDATE_GOLDEN=1 swift test --filter Golden`, which fails so it can never pass as a run), and
/// each one loaded by the real kernel in a namespace of its own.
@Suite("nftables rules: golden files and the kernel", .serialized)
struct NftablesGoldenTests {
    static func config(_ edit: (inout CaptureConfig) throws -> Void = { _ in }) -> CaptureConfig {
        var c = CaptureConfig()
        do { try edit(&c) } catch { Issue.record("configuration edit failed: \(error)") }
        return c
    }

    /// One rendered transaction: a renderer and what it renders.
    struct Case {
        enum Kind { case pod(v4: Bool, v6: Bool), podRemoval, node }
        var rules: NftablesRules
        var kind: Kind
        var text: String {
            switch kind {
            case .pod(let v4, let v6): rules.pod(ipv4: v4, ipv6: v6)
            case .podRemoval: rules.podRemoval()
            case .node: rules.node()
            }
        }
        /// The digest a pod case carries (nil for other kinds).
        var digest: String? {
            guard case .pod(let v4, let v6) = kind else { return nil }
            return rules.podDigest(ipv4: v4, ipv6: v6)
        }
        /// The rule count per chain a pod case should list (nil for other kinds).
        var podCounts: [String: Int]? {
            guard case .pod(let v4, let v6) = kind else { return nil }
            return rules.expectedPodRuleCounts(ipv4: v4, ipv6: v6)
        }
    }

    /// Every case, with cgroups named `proxy`, `old` and `kubelet` under `base`.
    static func cases(base: String = "/kubepods", prefix: String = "") -> [(String, Case)] {
        func g(_ name: String, _ id: UInt64) -> Cgroup { Cgroup(path: "\(base)/\(name)", id: id) }
        func pod(_ c: CaptureConfig, v4: Bool = true, v6: Bool = false, reroute: [String] = [], bypass: Bool = false) -> Case {
            Case(rules: NftablesRules(config: c, reroute: reroute, bypassInbound: bypass, cgroupPrefix: prefix), kind: .pod(v4: v4, v6: v6))
        }
        func node(_ c: CaptureConfig) -> Case { Case(rules: NftablesRules(config: c, cgroupPrefix: prefix), kind: .node) }
        return [
            ("nft_pod_default_v4", pod(config())),
            ("nft_pod_default_dual", pod(config(), v6: true)),
            ("nft_pod_default_v6only", pod(config(), v4: false, v6: true)),
            ("nft_pod_nodns_v4", pod(config { $0.dnsCapture = false })),
            ("nft_pod_hostprobe_v4", pod(config { try $0.setProbeIPs(v4: "172.30.0.1", v6: nil) })),
            ("nft_pod_proxycgroup_dual", pod(config { $0.proxyCgroup = g("proxy", 7) }, v6: true)),
            ("nft_pod_proxydraining_v4", pod(config { $0.proxyCgroup = g("proxy", 7); $0.drainingProxyCgroups = [g("old", 8)] })),
            ("nft_pod_proxyunknown_v4", pod(config { $0.proxyUnknown = true })),
            ("nft_pod_reroute_v4", pod(config(), reroute: ["tap0", "net1"])),
            ("nft_pod_bypassinbound_v4", pod(config(), bypass: true)),
            ("nft_pod_removal", Case(rules: NftablesRules(config: config()), kind: .podRemoval)),
            ("nft_node_default", node(config())),
            ("nft_node_kubeletcgroup", node(config { $0.kubeletCgroup = g("kubelet", 9) })),
            ("nft_node_hostprobe", node(config { try $0.setProbeIPs(v4: "172.30.0.1", v6: "fd00::7") })),
        ]
    }

    @Test("nft input matches the golden file", arguments: cases().map(\.0))
    func golden(_ name: String) throws {
        let rendered = try #require(Self.cases().first { $0.0 == name }).1.text
        try expectGolden(name, rendered)
    }

    @Test("a socket cgroupv2 match names the group's depth and its path under /sys/fs/cgroup")
    func cgroupMatch() throws {
        let g = Cgroup(path: "/a/b/c", id: 1)
        #expect(NftablesRules(config: CaptureConfig()).cgroupMatch(g) == "socket cgroupv2 level 3 \"a/b/c\"")
        #expect(NftablesRules(config: CaptureConfig(), cgroupPrefix: "unified").cgroupMatch(g) == "socket cgroupv2 level 3 \"unified/a/b/c\"")
        #expect(try NftablesDataplane.cgroupPrefix(mountPoint: "/sys/fs/cgroup") == "")
        #expect(try NftablesDataplane.cgroupPrefix(mountPoint: "/sys/fs/cgroup/unified") == "unified")
        #expect(throws: DataplaneError.self) { try NftablesDataplane.cgroupPrefix(mountPoint: "/host/cgroup") }
    }

    @Test("set listings are read with their comments")
    func setElements() throws {
        let json = #"{"nftables": [{"metainfo": {}}, {"set": {"family": "inet", "name": "s", "table": "t", "type": "ipv4_addr", "elem": ["10.0.0.9", {"elem": {"val": "10.0.0.1", "comment": "uid-1"}}]}}]}"#
        let e = try NftJSON.setElements(json)
        #expect(e == [IPAddress("10.0.0.9")!: "", IPAddress("10.0.0.1")!: "uid-1"])
    }

    /// Every rendered transaction, with real cgroups, loaded by the kernel in a fresh namespace:
    /// each chain then holds the rules the renderer counts, and the removal leaves no table.
    @Test("the kernel loads every rendered ruleset; the listing matches the rendered rule counts; removal leaves nothing")
    func kernelLoads() throws {
        if getuid() != 0 { Issue.record("cannot run: needs root (namespaces, nftables)"); return }
        guard (try? Command.resolve("nft")) != nil else { Issue.record("cannot run: no nft program (apt-get install nftables)"); return }
        let mount = try Cgroup.mountPoint()
        let prefix = try NftablesDataplane.cgroupPrefix(mountPoint: mount)
        let base = "/ra-test-nft-\(UInt32.random(in: 0..<UInt32.max))"
        let groups = try [base] + ["proxy", "old", "kubelet"].map { try Cgroup.create(path: "\(base)/\($0)") }.map(\.path)
        defer { for p in groups.reversed() { try? Cgroup(path: p).remove() } }
        let netns = "ra-test-nft-\(UInt32.random(in: 0..<UInt32.max))"
        try Command.run("ip", ["netns", "add", netns])
        defer { _ = try? Command.run("ip", ["netns", "del", netns]) }
        let runner = ProcessRunner(defaultNetns: "/run/netns/\(netns)")

        for (name, c) in Self.cases(base: base, prefix: prefix) {
            let r = try runner.run("nft", ["-f", "-"], netns: nil, input: c.text, environment: [:])
            #expect(r.status == 0, "\(name): \(r.stderr)")
            guard r.status == 0, let expected = c.podCounts else { continue }
            let json = try runner.checked("nft", ["-j", "list", "ruleset", "inet"])
            let listed = try NftJSON.ruleCounts(json, tables: Set(NftablesRules.podTableNames))
            #expect(listed.values.reduce(0, +) > 0, "\(name): the presence: the listing shows the loaded rules")
            #expect(listed == expected, "\(name): listed \(listed), rendered \(expected)")
            // verify's digest: the one loaded is this case's, and no other case's (each differs in some value).
            let found = try NftJSON.comments(json, table: NftablesRules.natTable, chain: "prerouting")
            #expect(found == [c.digest], "\(name): \(found)")
            let others = Self.cases(base: base, prefix: prefix).filter { $0.0 != name }.compactMap(\.1.digest)
            #expect(!others.contains(found.first ?? ""), "\(name): its digest is another case's")
        }
        try runner.checked("nft", ["-f", "-"], input: NftablesRules(config: CaptureConfig()).podRemoval() + NftablesRules(config: CaptureConfig()).nodeRemoval())
        let left = try runner.checked("nft", ["list", "ruleset"])
        #expect(left.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "left behind: \(left)")
    }

}
