import Foundation
import NodeLab
import SystemCalls
import Testing

@Suite("Benchmark smoke run", .serialized)
struct BenchTests {
    @Test("redirect-lab bench --quick runs every mode and writes its JSON, summary, report and plots (timing is not checked)")
    func quickBench() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        let out = NSTemporaryDirectory() + "ra-bench-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: out) }
        let r = try Command.capture(try LabBinaries.path("redirect-lab"), ["bench", "--quick", "--out", out])
        #expect(r.status == 0, "\(r.stderr.suffix(2000))")
        let data = try Data(contentsOf: URL(fileURLWithPath: "\(out)/results.json"))
        let json = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let modes = try #require(json["modes"] as? [String])
        #expect(Set(["direct", "explicit", "iptables", "ebpf"]).isSubset(of: Set(modes)))
        let traffic = try #require(json["traffic"] as? [[String: Any]])
        #expect(traffic.count == modes.count * 2 * 4, "every mode x placement x kind measured once (short, long, bulk, short at fixed load)")
        let fixed = traffic.filter { $0["kind"] as? String == "short-fixed" }
        #expect(fixed.count == modes.count * 2 && fixed.allSatisfy { ($0["offeredRate"] as? Double ?? 0) > 0 }, "\(fixed)")
        #expect(traffic.allSatisfy { ($0["cpuMs"] as? Double ?? 0) > 0 }, "every run's CPU time recorded")
        #expect(fixed.allSatisfy { ($0["conntrackNew"] as? Int ?? -1) >= 0 }, "every fixed-load run's conntrack entries counted")
        #expect(traffic.allSatisfy { ($0["failed"] as? Int) == 0 && ($0["ok"] as? Int ?? 0) > 0 }, "no failed connection")
        // The bench's own capture check, read back: every proxied mode's runs were all recorded, direct's none.
        for t in traffic {
            let made = t["connections"] as? Int ?? 0, proxied = t["proxied"] as? Int ?? -1
            #expect(made > 0 && proxied == (t["mode"] as? String == "direct" ? 0 : made), "\(t)")
        }
        #expect((json["enrollment"] as? [[String: Any]])?.isEmpty == false)
        // summary.json: every metric with each mode side by side, null where a mode does not apply.
        let summaryData = try Data(contentsOf: URL(fileURLWithPath: "\(out)/summary.json"))
        let summary = try #require(try JSONSerialization.jsonObject(with: summaryData) as? [String: Any])
        #expect(summary["build"] as? String == "debug", "the test bundle's binaries are a debug build")
        let metrics = try #require(summary["metrics"] as? [String: [String: Any]])
        let conn = try #require(metrics["short_conn_per_s_same_node"])
        #expect(conn["unit"] as? String == "conn/s" && conn["better"] as? String == "higher")
        for mode in ["direct", "explicit", "iptables", "ebpf"] { #expect((conn[mode] as? Double ?? 0) > 0, "\(mode): \(conn)") }
        let enrol = try #require(metrics["enrol_ms_per_pod_10_pods"])
        #expect(enrol["direct"] is NSNull && (enrol["ebpf"] as? Double ?? 0) > 0, "\(enrol)")
        #expect(metrics.keys.contains { $0.hasPrefix("bpf_ns_per_run_tc_pod_ingress") })
        // Issue #14's names are there too, the agent's ADD latency among them.
        for name in ["short_conn_per_s", "long_req_per_s", "bulk_gbit_per_s", "bpf_ns_per_packet_ingress", "bpf_ns_per_packet_egress",
                     "enroll_ms_per_pod_10", "agent_add_ms_p50_10", "agent_add_ms_p99_10", "agent_rss_mib_10",
                     "p99_us_fixed_load", "cpu_ms_per_1000_conn", "conntrack_per_conn"] {
            #expect(metrics[name] != nil, "\(name) in \(metrics.keys.sorted())")
        }
        #expect((metrics["agent_add_ms_p99_10"]?["ebpf"] as? Double ?? 0) > 0)
        #expect((metrics["agent_add_ms_p99_concurrent10_10"]?["ebpf"] as? Double ?? 0) > 0, "concurrent ADDs: \(metrics.keys.filter { $0.contains("concurrent") })")
        // iptables mode's NAT tracks every connection: the presence that shows the count can see entries.
        #expect((metrics["conntrack_per_conn"]?["iptables"] as? Double ?? 0) >= 1, "\(metrics["conntrack_per_conn"] ?? [:])")
        for name in ["p99_us_fixed_load", "cpu_ms_per_1000_conn"] {
            for mode in ["direct", "iptables", "ebpf"] { #expect((metrics[name]?[mode] as? Double ?? 0) > 0, "\(name) \(mode): \(metrics[name] ?? [:])") }
        }
        // A listening monitor's cost, side by side with none, and the events it drained.
        let monitor = try #require(metrics["monitor_long_req_per_s"])
        #expect((monitor["ebpf"] as? Double ?? 0) > 0 && (monitor["ebpf+monitor"] as? Double ?? 0) > 0, "\(monitor)")
        #expect(((json["monitor"] as? [String: Any])?["events"] as? Int ?? 0) > 0, "the monitor saw the connections it ran beside")
        let report = try String(contentsOfFile: "\(out)/README.md", encoding: .utf8)
        #expect(report.contains("## Against the targets") && report.contains("ebpf / iptables"))
        for plot in ["traffic.svg", "latency.svg", "enrollment.svg"] {
            #expect((try? String(contentsOfFile: "\(out)/\(plot)", encoding: .utf8))?.hasPrefix("<svg") == true, "\(plot)")
        }
        // The bench's bare pods are `<run id>-b<n>` (other suites' labs run meanwhile under their own ids).
        let left = try namespaces(prefix: "ra").filter { $0.range(of: #"^ra[0-9a-f]{6}-b[0-9]+$"#, options: .regularExpression) != nil }
        #expect(left.isEmpty, "bench pods removed: \(left)")
    }
}
