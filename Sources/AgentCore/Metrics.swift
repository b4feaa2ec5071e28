import Foundation
import Glibc
import SystemCalls

/// The agent's own counters and the enrollment latency histogram, in Prometheus text format.
public final class AgentMetrics: @unchecked Sendable {
    private let lock = NSLock()
    private var enrollments = 0, failures = 0, removals = 0
    private static let buckets: [Double] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1]
    private var bucketCounts = [Int](repeating: 0, count: AgentMetrics.buckets.count)
    private var latencySum = 0.0

    /// Records a successful enrollment.
    public func enrolled(seconds: Double) {
        lock.withLock {
            enrollments += 1
            latencySum += seconds
            for (i, b) in Self.buckets.enumerated() where seconds <= b { bucketCounts[i] += 1 }
        }
    }
    /// Records a failed enrollment.
    public func failure() { lock.withLock { failures += 1 } }
    /// Records a removal.
    public func removed() { lock.withLock { removals += 1 } }

    /// The exposition text; `extra` adds lines (pod counts, BPF counters).
    public func render(extra: [String]) -> String {
        lock.withLock {
            var out = [
                "# HELP redirect_agent_enrollments_total Pods enrolled.", "# TYPE redirect_agent_enrollments_total counter",
                "redirect_agent_enrollments_total \(enrollments)",
                "# HELP redirect_agent_enrollment_failures_total Enrollments that failed.", "# TYPE redirect_agent_enrollment_failures_total counter",
                "redirect_agent_enrollment_failures_total \(failures)",
                "# HELP redirect_agent_removals_total Pods removed.", "# TYPE redirect_agent_removals_total counter",
                "redirect_agent_removals_total \(removals)",
                "# HELP redirect_agent_enrollment_seconds Time to enroll a pod.", "# TYPE redirect_agent_enrollment_seconds histogram",
            ]
            for (i, b) in Self.buckets.enumerated() { out.append("redirect_agent_enrollment_seconds_bucket{le=\"\(b)\"} \(bucketCounts[i])") }
            out += ["redirect_agent_enrollment_seconds_bucket{le=\"+Inf\"} \(enrollments)",
                    "redirect_agent_enrollment_seconds_sum \(latencySum)", "redirect_agent_enrollment_seconds_count \(enrollments)"]
            return (out + extra).joined(separator: "\n") + "\n"
        }
    }
}

/// Serves `/metrics` and `/healthz` (readiness) over plain HTTP on one address.
public final class MetricsServer: @unchecked Sendable {
    private let listener: Socket
    private let agent: Agent

    /// Binds `address`.
    public init(agent: Agent, address: SocketAddress) throws {
        self.agent = agent
        listener = try Socket.listening(on: address)
    }

    /// Serves on a background thread.
    public func start() {
        Thread { [self] in
            while true {
                guard let c = try? listener.accept() else { usleep(10_000); continue }
                try? c.setTimeout(seconds: 5)
                let head = (try? c.read(max: 4096)).map { String(decoding: $0, as: UTF8.self) } ?? ""
                let path = head.split(separator: " ").dropFirst().first.map(String.init) ?? "/"
                let (code, body) = path == "/healthz" ? (200, "ok\n") : path == "/metrics" ? (200, metrics()) : (404, "not found\n")
                try? c.writeAll("HTTP/1.1 \(code) \(code == 200 ? "OK" : "Not Found")\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)")
                c.close()
            }
        }.start()
    }

    private func metrics() -> String {
        let status = agent.status()
        var extra = ["# HELP redirect_agent_pods Pods enrolled on this node.", "# TYPE redirect_agent_pods gauge", "redirect_agent_pods \(status.pods.count)",
                     "# HELP redirect_agent_capture_decisions_total Decisions of the BPF programs.", "# TYPE redirect_agent_capture_decisions_total counter"]
        for p in status.pods { for (d, v) in p.counters.sorted(by: { $0.key < $1.key }) { extra.append("redirect_agent_capture_decisions_total{pod=\"\(p.pod)\",decision=\"\(d)\"} \(v)") } }
        return agent.metrics.render(extra: extra)
    }
}
