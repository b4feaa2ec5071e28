import Dataplane
import Foundation
import NodeLab
import SystemCalls

/// What a listening `redirect-agent monitor` costs the ebpf mode: requests on long connections on
/// one node (every packet of a captured flow is a counted decision, so an event), in interleaved
/// rounds with the monitor off and on (draining every event as JSON to a file). Long, not short,
/// connections: back-to-back short runs from one client pile up TIME_WAIT sockets and drift.
struct MonitorCost: Codable {
    /// Requests/s on long connections (median of the rounds), monitor off and on.
    var connPerSecondOff, connPerSecondOn: Double
    /// ns per run of the pod programs over the same runs, off and on.
    var ingressNsOff, ingressNsOn, egressNsOff, egressNsOn: Double
    /// Events the monitor wrote.
    var events: Int
}

extension TrafficBench {
    /// Measures the monitor's cost on the `ebpf` mode (same node, long connections).
    func monitorCost(rounds: Int, duration: Double) throws -> MonitorCost? {
        guard let mode = modes.first(where: { $0.name == "ebpf" }), let dp = dataplanes["ebpf"]?["n1"] as? EBPFDataplane else { return nil }
        let node = mode.client.node
        var rates: [Bool: [Double]] = [false: [], true: []]
        var ns: [Bool: [String: (UInt64, UInt64)]] = [false: [:], true: [:]]
        var events = 0
        for round in 1...rounds {
            for on in [false, true] {
                let logPath = "\(lab.directory)/bench-monitor.log"
                let monitor = on ? try ManagedProcess(try LabBinaries.path("redirect-agent"), [
                    "monitor", "--pin-root", node.bpfPinRoot, "--control-socket", "\(lab.directory)/no-agent.sock", "--json",
                ], logPath: logPath) : nil
                if let monitor { try waitFor("monitor") { monitor.log().contains("monitoring") } }
                let before = try dp.programStats()
                let s = try measure(mode, placement: "same-node", kind: "long", duration: duration, round: round)
                let after = try dp.programStats()
                if let monitor {
                    monitor.stop()
                    events += monitor.log().split(separator: "\n").count - 1
                    try? FileManager.default.removeItem(atPath: logPath)
                }
                rates[on]!.append(s.rate)
                for (prog, a) in after {
                    let b = before[prog] ?? (0, 0), acc = ns[on]![prog] ?? (0, 0)
                    ns[on]![prog] = (acc.0 + a.runTimeNs - b.runTimeNs, acc.1 + a.runs - b.runs)
                }
                log(String(format: "monitor %@ round %d: %.0f requests/s", on ? "on" : "off", round, s.rate))
            }
        }
        func perRun(_ on: Bool, _ prog: String) -> Double { ns[on]![prog].map { $0.1 > 0 ? Double($0.0) / Double($0.1) : 0 } ?? 0 }
        func median(_ v: [Double]) -> Double { v.sorted()[v.count / 2] }
        return MonitorCost(connPerSecondOff: median(rates[false]!), connPerSecondOn: median(rates[true]!),
                           ingressNsOff: perRun(false, "tc_pod_ingress"), ingressNsOn: perRun(true, "tc_pod_ingress"),
                           egressNsOff: perRun(false, "tc_pod_egress"), egressNsOn: perRun(true, "tc_pod_egress"), events: events)
    }

    private func waitFor(_ what: String, _ condition: () -> Bool) throws {
        let end = Monotonic.now() + 10
        while Monotonic.now() < end { if condition() { return }; usleep(20_000) }
        throw LabError("\(what) did not start")
    }
}
