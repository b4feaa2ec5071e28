import CoreMetrics
import Foundation
import Glibc
import Prometheus
import Synchronization
import SystemCalls

/// The agent's metrics, on the ecosystem's libraries: its own counters and enrolment latency through
/// swift-metrics (a Prometheus factory over this instance's registry, no global bootstrap), and the
/// BPF programs' per-pod decision counters mirrored from the kernel into the same registry at each
/// scrape. Prometheus names: `_total` counters, `_seconds` durations.
public final class AgentMetrics: Sendable {
    /// The registry `/metrics` renders.
    public let registry = PrometheusCollectorRegistry()
    private let enrollments: CoreMetrics.Counter
    private let failures: CoreMetrics.Counter
    private let removals: CoreMetrics.Counter
    private let enrollmentDuration: CoreMetrics.Timer
    private let pods: Prometheus.Gauge
    private struct Mirrored { var counter: Prometheus.Counter; var last: UInt64 }
    private let kernel = Mutex<[String: Mirrored]>([:]) // "pod|decision" -> counter

    /// The metric names this agent exports (the Grafana dashboard in deploy/ uses only these).
    public static let names = ["redirect_agent_enrollments_total", "redirect_agent_enrollment_failures_total", "redirect_agent_removals_total",
                               "redirect_agent_enrollment_duration_seconds", "redirect_agent_pods", "redirect_agent_capture_decisions_total"]

    /// Creates the metrics, each at zero.
    public init() {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets = ["redirect_agent_enrollment_duration_seconds": [
            .microseconds(500), .milliseconds(1), .microseconds(2500), .milliseconds(5), .milliseconds(10), .milliseconds(25),
            .milliseconds(50), .milliseconds(100), .milliseconds(250), .seconds(1),
        ]]
        enrollments = CoreMetrics.Counter(label: "redirect_agent_enrollments_total", factory: factory)
        failures = CoreMetrics.Counter(label: "redirect_agent_enrollment_failures_total", factory: factory)
        removals = CoreMetrics.Counter(label: "redirect_agent_removals_total", factory: factory)
        enrollmentDuration = CoreMetrics.Timer(label: "redirect_agent_enrollment_duration_seconds", factory: factory)
        pods = registry.makeGauge(name: "redirect_agent_pods", help: "Pods enrolled on this node.")
    }

    /// Records a successful enrollment.
    public func enrolled(seconds: Double) {
        enrollments.increment()
        enrollmentDuration.recordNanoseconds(Int64(seconds * 1e9))
    }
    /// Records a failed enrollment.
    public func failure() { failures.increment() }
    /// Records a removal.
    public func removed() { removals.increment() }

    /// Brings the mirrored kernel counters up to `counters` (pod name -> decision -> count, as the
    /// maps hold them): each grows by what the kernel counted since the last scrape; a pod's
    /// counters that went back (it was enrolled again) start over; a gone pod's are unregistered.
    public func update(podCount: Int, counters: [String: [String: UInt64]]) {
        pods.set(Double(podCount))
        kernel.withLock { mirrored in
            var seen = Set<String>()
            for (pod, decisions) in counters {
                for (decision, value) in decisions {
                    let key = "\(pod)|\(decision)"
                    seen.insert(key)
                    if var m = mirrored[key], value >= m.last {
                        m.counter.increment(by: Int64(value - m.last))
                        m.last = value
                        mirrored[key] = m
                        continue
                    }
                    if let old = mirrored[key] { registry.unregisterCounter(old.counter) }
                    let c = registry.makeCounter(name: "redirect_agent_capture_decisions_total", labels: [("pod", pod), ("decision", decision)],
                                                 help: "Decisions of the BPF programs, per pod (drops are decisions named drop_*).")
                    c.increment(by: Int64(value))
                    mirrored[key] = Mirrored(counter: c, last: value)
                }
            }
            for (key, m) in mirrored where !seen.contains(key) {
                registry.unregisterCounter(m.counter)
                mirrored[key] = nil
            }
        }
    }

    /// The exposition text.
    public func render() -> String { registry.emitToString() }
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
        agent.metrics.update(podCount: status.pods.count,
                             counters: Dictionary(status.pods.map { ($0.pod, $0.counters) }, uniquingKeysWith: { a, _ in a }))
        return agent.metrics.render()
    }
}
