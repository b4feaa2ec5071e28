import AgentCore
import Foundation
import Testing

/// The agent's metrics: Prometheus exposition from swift-metrics and swift-prometheus, and the
/// kernel's counters mirrored into it.
@Suite("Agent metrics")
struct MetricsTests {
    @Test("kernel counters are mirrored: they grow by what the kernel counted, start over when the kernel's went back, and leave with their pod")
    func mirrored() {
        let m = AgentMetrics()
        m.update(podCount: 2, counters: ["ns/a": ["outbound_captured": 3, "drop_not_proxy": 1], "ns/b": ["inbound_captured": 5]])
        var text = m.render()
        #expect(text.contains(#"redirect_agent_capture_decisions_total{pod="ns/a",decision="outbound_captured"} 3"#), "\(text)")
        #expect(text.contains(#"redirect_agent_capture_decisions_total{pod="ns/b",decision="inbound_captured"} 5"#))
        #expect(text.contains("redirect_agent_pods 2"))
        m.update(podCount: 1, counters: ["ns/a": ["outbound_captured": 7, "drop_not_proxy": 0]])
        text = m.render()
        #expect(text.contains(#"decision="outbound_captured"} 7"#), "grew by 4: \(text)")
        #expect(text.contains(#"decision="drop_not_proxy"} 0"#), "went back (the pod was enrolled again): starts over")
        #expect(!text.contains("ns/b"), "a gone pod's counters leave")
    }

    @Test("the agent's own counters and enrolment latency, under Prometheus names")
    func own() {
        let m = AgentMetrics()
        m.enrolled(seconds: 0.002)
        m.failure()
        m.removed()
        let text = m.render()
        for line in ["redirect_agent_enrollments_total 1", "redirect_agent_enrollment_failures_total 1", "redirect_agent_removals_total 1",
                     "redirect_agent_enrollment_duration_seconds_count 1", #"redirect_agent_enrollment_duration_seconds_bucket{le="0.0025"} 1"#] {
            #expect(text.contains(line), "\(line) in \(text)")
        }
        for name in AgentMetrics.names where name != "redirect_agent_capture_decisions_total" { #expect(text.contains("# TYPE \(name) "), "\(name)") }
    }

    @Test("the Grafana dashboard in deploy/ plots only metrics the agent exports, and parses as a dashboard")
    func dashboard() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("deploy/grafana-dashboard.json").path
        let json = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
        let panels = try #require(json["panels"] as? [[String: Any]])
        #expect(panels.count >= 4)
        let exprs = panels.flatMap { ($0["targets"] as? [[String: Any]] ?? []).compactMap { $0["expr"] as? String } }
        #expect(exprs.count >= panels.count)
        let used = Set(exprs.flatMap { e in e.matches(of: /redirect_agent_[a-z_]+/).map { String($0.output) } })
        let exported = Set(AgentMetrics.names.flatMap { [$0, $0 + "_bucket", $0 + "_count", $0 + "_sum"] })
        #expect(!used.isEmpty && used.isSubset(of: exported), "unknown: \(used.subtracting(exported))")
    }
}
