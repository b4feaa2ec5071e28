import Dataplane
import Foundation
import SystemCalls
import Testing

/// The exact iptables-restore input for each configuration, against files checked in under
/// Golden/. Regenerate after an intended change with `UPDATE_GOLDEN=1 swift test --filter Golden`:
/// that run writes the files and fails, so an update can never pass as a test run; review the diff,
/// then run again without it. Istio's own rulesets are compared in ``IstioEquivalenceTests``.
@Suite("iptables rules: golden files")
struct IptablesGoldenTests {
    static func config(_ edit: (inout CaptureConfig) throws -> Void = { _ in }) -> CaptureConfig {
        var c = CaptureConfig()
        do { try edit(&c) } catch { Issue.record("configuration edit failed: \(error)") }
        return c
    }

    static let cases: [(String, String)] = [
        ("pod_default_v4", IptablesRules(config: config()).pod(ipv6: false)),
        ("pod_default_v6", IptablesRules(config: config()).pod(ipv6: true)),
        ("pod_dns_v4", IptablesRules(config: config { $0.dnsCapture = true }).pod(ipv6: false)),
        ("pod_dns_v6", IptablesRules(config: config { $0.dnsCapture = true }).pod(ipv6: true)),
        ("pod_hostprobe_v4", IptablesRules(config: config { try $0.setProbeIPs(v4: "172.30.0.1", v6: nil) }).pod(ipv6: false)),
        ("pod_proxycgroup_v4", IptablesRules(config: config { $0.proxyCgroup = Cgroup(path: "/kubepods/ztunnel", id: 7) }).pod(ipv6: false)),
        ("pod_proxycgroup_dns_v6", IptablesRules(config: config { $0.proxyCgroup = Cgroup(path: "/kubepods/ztunnel", id: 7); $0.dnsCapture = true }).pod(ipv6: true)),
        ("pod_reroute_v4", IptablesRules(config: config(), reroute: ["tap0", "net1"]).pod(ipv6: false)),
        ("node_kubeletcgroup_v4", IptablesRules(config: config { $0.kubeletCgroup = Cgroup(path: "/system.slice/kubelet.service", id: 9) }).node(ipv6: false, jumpPresent: false, jumpIsFirst: false)),
        ("node_default_v4", IptablesRules(config: config()).node(ipv6: false, jumpPresent: false, jumpIsFirst: false)),
        ("node_default_v6", IptablesRules(config: config()).node(ipv6: true, jumpPresent: false, jumpIsFirst: false)),
        ("node_hostprobe_v4", IptablesRules(config: config { try $0.setProbeIPs(v4: "172.30.0.1", v6: nil) }).node(ipv6: false, jumpPresent: false, jumpIsFirst: false)),
    ]

    @Test("restore input matches the golden file", arguments: cases.map(\.0))
    func golden(_ name: String) throws {
        let rendered = try #require(Self.cases.first { $0.0 == name }).1
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Golden/\(name).golden").path
        if ProcessInfo.processInfo.environment["UPDATE_GOLDEN"] != nil {
            try rendered.write(toFile: path, atomically: true, encoding: .utf8)
            Issue.record("\(name).golden rewritten (UPDATE_GOLDEN is set): review the diff, then run without UPDATE_GOLDEN")
            return
        }
        let expected = try String(contentsOfFile: path, encoding: .utf8)
        #expect(rendered == expected, "\(name) differs from its golden file")
    }

    @Test("a second apply adds no duplicate jump; only the missing one is added")
    func idempotentJumps() {
        let r = IptablesRules(config: CaptureConfig())
        let all = Set(r.podJumps(ipv6: false))
        let again = r.pod(ipv6: false, present: all)
        #expect(!again.contains("-A PREROUTING") && !again.contains("-A OUTPUT"))
        var some = all
        some.remove(IptablesRules.Jump("nat", "OUTPUT", "ISTIO_OUTPUT"))
        let repair = r.pod(ipv6: false, present: some)
        #expect(repair.components(separatedBy: "-A OUTPUT -j ISTIO_OUTPUT").count == 2)
    }

    @Test("the node jump is re-inserted first when another rule slipped in front of it")
    func nodeJumpFirst() {
        let r = IptablesRules(config: CaptureConfig())
        #expect(!r.node(ipv6: false, jumpPresent: true, jumpIsFirst: true).contains("POSTROUTING -j"))
        let fixed = r.node(ipv6: false, jumpPresent: true, jumpIsFirst: false)
        #expect(fixed.contains("-D POSTROUTING -j ISTIO_POSTRT\n-I POSTROUTING 1 -j ISTIO_POSTRT"))
    }

    @Test("iptables-save output is parsed for our chains, jumps and counts")
    func parseSave() {
        let save = """
        *nat
        :PREROUTING ACCEPT [0:0]
        :POSTROUTING ACCEPT [0:0]
        :ISTIO_POSTRT - [0:0]
        -A POSTROUTING -j ISTIO_POSTRT
        -A POSTROUTING -s 10.0.0.0/8 -j MASQUERADE
        -A ISTIO_POSTRT -m owner --socket-exists -p tcp -j SNAT --to-source 169.254.7.127
        COMMIT
        """
        let have = IptablesRules(config: CaptureConfig()).installed(in: save)
        #expect(have.jumps == [IptablesRules.Jump("nat", "POSTROUTING", "ISTIO_POSTRT")])
        #expect(have.chains == ["nat ISTIO_POSTRT"])
        #expect(have.ruleCounts["nat ISTIO_POSTRT"] == 1)
        #expect(have.firstTargets["nat POSTROUTING"] == "ISTIO_POSTRT")
    }

    @Test("removal deletes only what is installed")
    func removal() {
        let r = IptablesRules(config: CaptureConfig())
        #expect(r.podRemoval(present: [], chains: []).isEmpty)
        let out = r.podRemoval(present: [IptablesRules.Jump("nat", "OUTPUT", "ISTIO_OUTPUT")], chains: ["nat ISTIO_OUTPUT"])
        #expect(out == "*nat\n:ISTIO_OUTPUT - [0:0]\n-D OUTPUT -j ISTIO_OUTPUT\n-X ISTIO_OUTPUT\nCOMMIT\n")
    }

    @Test("invalid probe IPs are rejected with a clear error and change nothing",
          arguments: [("not-an-ip", nil), ("fd00::1", nil), ("127.0.0.1", nil), ("0.0.0.0", nil), (nil, "169.254.7.127"), (nil, "ff02::1")] as [(String?, String?)])
    func invalidProbeIP(_ v4: String?, _ v6: String?) {
        var c = CaptureConfig()
        #expect(throws: ConfigError.self) { try c.setProbeIPs(v4: v4, v6: v6) }
        #expect(c == CaptureConfig())
    }
}
