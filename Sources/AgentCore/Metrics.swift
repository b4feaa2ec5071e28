import Foundation
import Glibc
import Synchronization
import SystemCalls

/// The agent's own counters and the enrollment latency histogram, in Prometheus text format.
public final class AgentMetrics: Sendable {
    private static let buckets: [Double] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1]
    private struct Counts {
        var enrollments = 0, failures = 0, removals = 0
        var bucketCounts = [Int](repeating: 0, count: AgentMetrics.buckets.count)
        var latencySum = 0.0
    }
    private let counts = Mutex(Counts())

    /// Creates empty counters.
    public init() {}

    /// Records a successful enrollment.
    public func enrolled(seconds: Double) {
        counts.withLock { c in
            c.enrollments += 1
            c.latencySum += seconds
            for (i, b) in Self.buckets.enumerated() where seconds <= b { c.bucketCounts[i] += 1 }
        }
    }
    /// Records a failed enrollment.
    public func failure() { counts.withLock { $0.failures += 1 } }
    /// Records a removal.
    public func removed() { counts.withLock { $0.removals += 1 } }

    /// The exposition text; `extra` adds lines (pod counts, BPF counters).
    public func render(extra: [String]) -> String {
        let c = counts.withLock { $0 }
        var out = [
            "# HELP redirect_agent_enrollments_total Pods enrolled.", "# TYPE redirect_agent_enrollments_total counter",
            "redirect_agent_enrollments_total \(c.enrollments)",
            "# HELP redirect_agent_enrollment_failures_total Enrollments that failed.", "# TYPE redirect_agent_enrollment_failures_total counter",
            "redirect_agent_enrollment_failures_total \(c.failures)",
            "# HELP redirect_agent_removals_total Pods removed.", "# TYPE redirect_agent_removals_total counter",
            "redirect_agent_removals_total \(c.removals)",
            "# HELP redirect_agent_enrollment_seconds Time to enroll a pod.", "# TYPE redirect_agent_enrollment_seconds histogram",
        ]
        for (i, b) in Self.buckets.enumerated() { out.append("redirect_agent_enrollment_seconds_bucket{le=\"\(b)\"} \(c.bucketCounts[i])") }
        out += ["redirect_agent_enrollment_seconds_bucket{le=\"+Inf\"} \(c.enrollments)",
                "redirect_agent_enrollment_seconds_sum \(c.latencySum)", "redirect_agent_enrollment_seconds_count \(c.enrollments)"]
        return (out + extra).joined(separator: "\n") + "\n"
    }
}

/// Serves `/metrics` and `/healthz` (readiness) over plain HTTP on one address.
public final class MetricsServer: Sendable {
    private let listener: Socket
    private let agent: Agent

    /// Binds `address`.
    public init(agent: Agent, address: SocketAddress) throws {
        self.agent = agent
        listener = try Socket.listening(on: address)
    }

    /// Serves on a background thread.
    public func start() {
        DedicatedThread.detach(name: "metrics") { [self] in
            while true {
                guard let c = try? listener.accept() else { usleep(10_000); continue }
                try? c.setTimeout(seconds: 5)
                let head = (try? c.read(max: 4096)).map { String(decoding: $0, as: UTF8.self) } ?? ""
                let path = head.split(separator: " ").dropFirst().first.map(String.init) ?? "/"
                let (code, body) = path == "/healthz" ? (200, "ok\n") : path == "/metrics" ? (200, metrics()) : (404, "not found\n")
                try? c.writeAll("HTTP/1.1 \(code) \(code == 200 ? "OK" : "Not Found")\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)")
                c.close()
            }
        }
    }

    private func metrics() -> String {
        let status = agent.status()
        var extra = ["# HELP redirect_agent_pods Pods enrolled on this node.", "# TYPE redirect_agent_pods gauge", "redirect_agent_pods \(status.pods.count)",
                     "# HELP redirect_agent_capture_decisions_total Decisions of the BPF programs.", "# TYPE redirect_agent_capture_decisions_total counter"]
        for p in status.pods { for (d, v) in p.counters.sorted(by: { $0.key < $1.key }) { extra.append("redirect_agent_capture_decisions_total{pod=\"\(p.pod)\",decision=\"\(d)\"} \(v)") } }
        return agent.metrics.render(extra: extra)
    }
}
