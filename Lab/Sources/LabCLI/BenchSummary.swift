import Foundation

/// `summary.json`: one entry per metric with every mode side by side (medians over the rounds), so
/// that any run can be compared with another by a program. A mode a metric does not apply to is null.
struct BenchSummary: Encodable {
    /// One metric: its unit, which way is better, and each mode's median.
    struct Metric: Encodable {
        var unit: String
        var better: String
        var values: [String: Double?]

        enum Fixed: String, CodingKey { case unit, better }
        struct Mode: CodingKey {
            var stringValue: String
            var intValue: Int? { nil }
            init(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }

        func encode(to encoder: Encoder) throws {
            var fixed = encoder.container(keyedBy: Fixed.self)
            try fixed.encode(unit, forKey: .unit)
            try fixed.encode(better, forKey: .better)
            var modes = encoder.container(keyedBy: Mode.self)
            for (mode, value) in values { try modes.encode(value, forKey: Mode(stringValue: mode)) } // nil: null
        }
    }

    var build: String
    var kernel: String
    var cpu: String
    var rounds: Int
    var metrics: [String: Metric]

    /// The summary of `result`, with the modes `direct`, `explicit`, `iptables`, `ebpf` (and `nftables`, `ebpf-tcx` when measured).
    init(_ result: BenchResult) {
        build = result.machine.build
        kernel = result.machine.kernel
        cpu = result.machine.cpu
        rounds = result.rounds
        let report = BenchReport(result: result)
        let modes = ["direct", "explicit", "iptables", "ebpf"] + (result.modes.contains("nftables") ? ["nftables"] : []) + (result.modes.contains("ebpf-tcx") ? ["ebpf-tcx"] : [])
        var metrics: [String: Metric] = [:]
        for placement in ["same-node", "cross-node"] {
            let suffix = placement == "same-node" ? "same_node" : "cross_node"
            func traffic(_ name: String, _ unit: String, _ better: String, _ kind: String, _ value: @escaping (TrafficSample) -> Double) {
                metrics["\(name)_\(suffix)"] = Metric(unit: unit, better: better, values: Dictionary(uniqueKeysWithValues: modes.map { mode in
                    (mode, report.stat(mode, placement, kind, value)?.median)
                }))
            }
            traffic("short_conn_per_s", "conn/s", "higher", "short") { $0.rate }
            traffic("short_p50_us", "us", "lower", "short") { $0.p50us }
            traffic("short_p99_us", "us", "lower", "short") { $0.p99us }
            traffic("long_req_per_s", "req/s", "higher", "long") { $0.rate }
            traffic("long_p99_us", "us", "lower", "long") { $0.p99us }
            traffic("bulk_gbps", "Gbit/s", "higher", "bulk") { $0.gbps }
            traffic("short_fixed_p50_us", "us", "lower", "short-fixed") { $0.p50us }
            traffic("short_fixed_p99_us", "us", "lower", "short-fixed") { $0.p99us }
            traffic("cpu_ms_per_1000_conn", "ms", "lower", "short", BenchReport.cpuPer1000Connections)
            traffic("cpu_ms_per_gb", "ms", "lower", "bulk", BenchReport.cpuPerGB)
            traffic("conntrack_per_conn", "entries", "lower", "short-fixed", BenchReport.conntrackPerConnection)
        }
        for pods in Set(result.enrollment.map(\.pods)).sorted() {
            func enrolment(_ name: String, _ value: @escaping (EnrollSample) -> Double?) {
                metrics["\(name)_\(pods)_pods"] = Metric(unit: "ms/pod", better: "lower", values: Dictionary(uniqueKeysWithValues: modes.map { mode in
                    (mode, result.enrollment.first { $0.mode == mode && $0.pods == pods }.flatMap(value))
                }))
            }
            enrolment("enrol_ms_per_pod") { $0.enrollMs / Double(max($0.pods, 1)) }
            enrolment("remove_ms_per_pod") { $0.removeMs / Double(max($0.pods, 1)) }
            enrolment("probe_ip_change_ms_per_pod") { s in s.probeChangeMs.map { $0 / Double(max(s.pods, 1)) } }
        }
        for (program, byMode) in BenchSummary.bpfCost(result) {
            metrics["bpf_ns_per_run_\(program)"] = Metric(unit: "ns", better: "lower", values: Dictionary(uniqueKeysWithValues: modes.map { ($0, byMode[$0]) }))
        }
        if let m = result.monitor {
            // Values keyed "ebpf" (no monitor) and "ebpf+monitor" (one listening).
            func pair(_ name: String, _ unit: String, _ better: String, _ off: Double, _ on: Double) {
                metrics[name] = Metric(unit: unit, better: better, values: ["ebpf": off, "ebpf+monitor": on])
            }
            pair("monitor_long_req_per_s", "req/s", "higher", m.connPerSecondOff, m.connPerSecondOn)
            pair("monitor_bpf_ns_per_run_tc_pod_ingress", "ns", "lower", m.ingressNsOff, m.ingressNsOn)
            pair("monitor_bpf_ns_per_run_tc_pod_egress", "ns", "lower", m.egressNsOff, m.egressNsOn)
        }
        for s in result.agentRSS where s.pods > 0 {
            func agent(_ name: String, _ unit: String, _ v: Double?) {
                metrics["\(name)_\(s.pods)"] = Metric(unit: unit, better: "lower", values: Dictionary(uniqueKeysWithValues: modes.map { ($0, $0 == "ebpf" ? v : nil) }))
            }
            agent("agent_add_ms_p50", "ms", s.addP50Ms)
            agent("agent_add_ms_p99", "ms", s.addP99Ms)
            agent("agent_rss_mib", "MiB", Double(s.rssKiB) / 1024)
        }
        if let c = result.concurrentAdds {
            for (name, v) in [("agent_add_ms_p50_concurrent", c.p50Ms), ("agent_add_ms_p99_concurrent", c.p99Ms)] {
                metrics["\(name)\(c.concurrency)_\(c.pods)"] = Metric(unit: "ms", better: "lower",
                                                                   values: Dictionary(uniqueKeysWithValues: modes.map { ($0, $0 == "ebpf" ? v : nil) }))
            }
        }
        if let k = result.kube {
            func ebpf(_ name: String, _ unit: String, _ v: Double?) {
                metrics[name] = Metric(unit: unit, better: "lower", values: Dictionary(uniqueKeysWithValues: modes.map { ($0, $0 == "ebpf" ? v : nil) }))
            }
            ebpf("label_to_captured_ms_p50", "ms", Self.percentile(k.labelToCapturedMs, 0.5))
            ebpf("label_to_captured_ms_p99", "ms", Self.percentile(k.labelToCapturedMs, 0.99))
            ebpf("label_to_released_ms_p50", "ms", Self.percentile(k.labelToReleasedMs, 0.5))
            ebpf("label_to_released_ms_p99", "ms", Self.percentile(k.labelToReleasedMs, 0.99))
            ebpf("agent_rss_mib_watching_\(k.watchedPods)", "MiB", Double(k.agentRSSKiB) / 1024)
            ebpf("agent_cpu_percent_watching_\(k.watchedPods)", "% of a CPU", k.agentCPUPercentWatching)
        }
        BenchSummary.addIssueNames(&metrics)
        self.metrics = metrics
    }

    /// The names issue #14 gives its metrics, as aliases of the ones above (same node, where a
    /// placement applies; a packet's cost is the pod programs' cost per run).
    private static func addIssueNames(_ metrics: inout [String: Metric]) {
        let aliases = ["short_conn_per_s": "short_conn_per_s_same_node", "long_req_per_s": "long_req_per_s_same_node",
                       "bulk_gbit_per_s": "bulk_gbps_same_node", "bpf_ns_per_packet_ingress": "bpf_ns_per_run_tc_pod_ingress",
                       "bpf_ns_per_packet_egress": "bpf_ns_per_run_tc_pod_egress", "p99_us_fixed_load": "short_fixed_p99_us_same_node",
                       "cpu_ms_per_1000_conn": "cpu_ms_per_1000_conn_same_node", "conntrack_per_conn": "conntrack_per_conn_same_node"]
        for (alias, name) in aliases { if let m = metrics[name] { metrics[alias] = m } }
        for (name, m) in metrics where name.hasPrefix("enrol_ms_per_pod_") && name.hasSuffix("_pods") {
            metrics["enroll_ms_per_pod_" + name.dropFirst("enrol_ms_per_pod_".count).dropLast("_pods".count)] = m
        }
    }

    /// The `q` quantile of `values` (nearest rank), nil when empty.
    static func percentile(_ values: [Double], _ q: Double) -> Double? {
        let sorted = values.sorted()
        return sorted.isEmpty ? nil : sorted[min(sorted.count - 1, max(0, Int((Double(sorted.count) * q).rounded(.up)) - 1))]
    }

    /// BPF ns per run, by program and mode.
    private static func bpfCost(_ result: BenchResult) -> [String: [String: Double]] {
        var out: [String: [String: Double]] = [:]
        for (mode, programs) in result.bpfNsPerRun {
            for (program, ns) in programs { out[program, default: [:]][mode] = ns }
        }
        return out
    }
}
