import BPFLoader
import Dataplane
import Foundation
import MeshProxy
import NodeLab
import SystemCalls

/// One measured run of the load client.
struct TrafficSample: Codable {
    var round: Int
    var mode: String
    var placement: String
    var kind: String          // short, long, bulk
    var rate: Double          // connections/s (short), requests/s (long)
    var gbps: Double
    var p50us: Double
    var p90us: Double
    var p99us: Double
    var ok: Int
    var failed: Int
    /// Connections the client made, and how many of them the client's proxy recorded.
    var connections: Int
    var proxied: Int
    /// Node-wide CPU time during the run (every CPU's busy time in /proc/stat), ms.
    var cpuMs: Double? = nil
    /// Conntrack entries created during a fixed-load run (NEW events), in the client's and the
    /// server's namespaces and in both nodes'; nil at saturation, where the watchers would cost CPU.
    var conntrackNew: Int? = nil
    /// The client's offered rate (connections/s) in a fixed-load run; nil at saturation.
    var offeredRate: Double? = nil
    /// How long the client ran, seconds.
    var seconds: Double? = nil
}

/// What a run costs the node: CPU time and conntrack entries.
enum NodeCost {
    /// Busy time of every CPU so far (user, nice, system, irq, softirq, steal), ms.
    static func cpuBusyMs() -> Double {
        guard let text = try? String(contentsOfFile: "/proc/stat", encoding: .utf8), let line = text.split(separator: "\n").first else { return 0 }
        let f = line.split(separator: " ").dropFirst().compactMap { Double($0) }
        guard f.count >= 8 else { return 0 }
        return (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) * 1000 / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// Counts the conntrack entries created in each of `namespaces` while `body` runs, from
    /// ctnetlink's NEW events (`conntrack -E`, one per namespace; the kernel's `insert` statistic
    /// no longer counts ordinary confirmations). A namespace where conntrack never runs adds none.
    static func conntrackNew<T>(in namespaces: [NetworkNamespace], during body: () throws -> T) throws -> (T, Int) {
        let files = namespaces.map { _ in NSTemporaryDirectory() + "ra-ct-\(UUID().uuidString.prefix(8))" }
        defer { for f in files { try? FileManager.default.removeItem(atPath: f) } }
        var watchers: [Process] = []
        defer { for w in watchers where w.isRunning { w.terminate(); w.waitUntilExit() } }
        for (ns, file) in zip(namespaces, files) {
            FileManager.default.createFile(atPath: file, contents: nil)
            let w = Process()
            w.executableURL = URL(fileURLWithPath: "/usr/bin/nsenter")
            w.arguments = ["--net=\(ns.path)", "conntrack", "-E", "-e", "NEW"]
            w.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: file))
            w.standardError = FileHandle.nullDevice
            try w.run()
            watchers.append(w)
        }
        usleep(300_000) // subscribed before the first connection
        let value = try body()
        usleep(300_000) // the last events delivered
        for w in watchers { w.terminate(); w.waitUntilExit() }
        let created = files.reduce(0) { sum, f in
            sum + ((try? String(contentsOfFile: f, encoding: .utf8)) ?? "").split(separator: "\n").filter { $0.contains("[NEW]") }.count
        }
        return (value, created)
    }
}

/// A traffic mode: how its pods are set up and how the client reaches the server.
struct TrafficMode {
    let name: String
    let client: LabPod
    let servers: [String: LabPod]   // placement -> server
    let explicit: Bool
}

/// Sets up one client and two servers (same node, other node) per mode, in one lab, so every
/// mode is measured in the same conditions and rounds can interleave them.
final class TrafficBench {
    let lab: Lab
    var modes: [TrafficMode] = []
    var dataplanes: [String: [String: Dataplane]] = [:]   // mode -> node -> dataplane
    let log: (String) -> Void

    init(lab: Lab, log: @escaping (String) -> Void) { self.lab = lab; self.log = log }

    func setUp(modeNames: [String]) throws {
        let n1 = lab.nodes[0], n2 = lab.nodes[1]
        for name in modeNames {
            let tag = name.replacingOccurrences(of: "-", with: "")
            let client = try lab.addPod(on: n1, name: "c\(tag)")
            let same = try lab.addPod(on: n1, name: "s\(tag)a")
            let cross = try lab.addPod(on: n2, name: "s\(tag)b")
            let pods = [client, same, cross]
            switch name {
            case "direct":
                break
            case "explicit":
                for p in pods { try lab.enrollInProxy(p, spoofSource: false) }
            default:
                var planes: [String: Dataplane] = [:]
                for node in lab.nodes { planes[node.name] = try makeDataplane(name, node: node) }
                dataplanes[name] = planes
                for p in pods {
                    try planes[p.node.name]!.enroll(lab.podSpec(p))
                    try lab.enrollInProxy(p, spoofSource: true)
                }
            }
            modes.append(TrafficMode(name: name, client: client, servers: ["same-node": same, "cross-node": cross], explicit: name == "explicit"))
        }
    }

    func makeDataplane(_ name: String, node: LabNode) throws -> Dataplane {
        let dp = try newDataplane(name, node: node)
        try dp.prepareNode()
        return dp
    }

    private func newDataplane(_ name: String, node: LabNode) throws -> Dataplane {
        let runner = ProcessRunner(defaultNetns: node.netns.path)
        if name == "iptables" { return IptablesDataplane(config: CaptureConfig(), runner: runner, lockDirectory: "\(node.directory)/xtables") }
        if name == "nftables" { return try NftablesDataplane(config: CaptureConfig(), runner: runner) }
        try BPFFS.ensureMounted(node.bpffsMount)
        var o = EBPFOptions(objectPath: try LabBinaries.bpfObject())
        o.pinRoot = node.bpfPinRoot
        o.nodeNetns = node.netns
        o.attach = name == "ebpf-tcx" ? .tcx : .clsact
        return try EBPFDataplane(config: CaptureConfig(), options: o, runner: runner)
    }

    /// Records on the client's node for connections from `mode`'s client to `target`, with how
    /// they were found (`explicit`, or a capture method).
    func proxied(_ mode: TrafficMode, target: String) throws -> [ProxyRecord] {
        try lab.proxyRecords(mode.client.node).filter {
            $0.listener == 15001 && $0.pod == mode.client.identity.uid && $0.originalDestination == target
        }
    }

    /// One client run; returns the parsed summary. Throws unless the proxy recorded exactly the
    /// connections the client made (none in the direct mode): a mode whose capture failed must
    /// never look fast in the report.
    /// With `rate`, short connections at that offered rate (kind `short-fixed`).
    func measure(_ mode: TrafficMode, placement: String, kind: String, duration: Double, round: Int, rate: Double? = nil) throws -> TrafficSample {
        guard let server = mode.servers[placement], let ip = server.ipv4 else { throw LabError("no \(placement) server for \(mode.name)") }
        let target = "\(ip):\(Lab.echoPort)"
        let before = try proxied(mode, target: target).count
        var args = ["client", "--netns", mode.client.netns.path, "--target", target, "--mode", rate == nil ? kind : "short", "--duration", "\(duration)"]
        if let rate { args += ["--rate", "\(rate)"] }
        if mode.explicit { args += ["--via", "127.0.0.1:15001"] }
        let cpuBefore = NodeCost.cpuBusyMs()
        var out = "", created: Int? = nil
        if rate != nil {
            (out, created) = try NodeCost.conntrackNew(in: [mode.client.netns, server.netns] + lab.nodes.map(\.netns)) {
                try Command.run(try LabBinaries.path("lab-app"), args)
            }
        } else {
            out = try Command.run(try LabBinaries.path("lab-app"), args)
        }
        let cpuMs = NodeCost.cpuBusyMs() - cpuBefore
        guard let j = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any] else { throw LabError("client printed no JSON: \(out)") }
        func d(_ k: String) -> Double { (j[k] as? Double) ?? Double(j[k] as? Int ?? 0) }
        let connections = j["connections"] as? Int ?? -1
        let records = try recordsSettled(mode, target: target, before: before, expected: mode.name == "direct" ? 0 : connections)
        try checkCaptured(mode, records: records, connections: connections)
        return TrafficSample(round: round, mode: mode.name, placement: placement, kind: kind, rate: d("rate"), gbps: d("gbps"),
                             p50us: d("p50_us"), p90us: d("p90_us"), p99us: d("p99_us"), ok: j["ok"] as? Int ?? 0, failed: j["failed"] as? Int ?? 0,
                             connections: connections, proxied: records.count, cpuMs: cpuMs, conntrackNew: created,
                             offeredRate: rate, seconds: d("seconds"))
    }

    /// The records added since `before`, once their count reaches `expected` or stops growing
    /// (the proxy writes a record when it has its upstream, which can trail the client by a little).
    private func recordsSettled(_ mode: TrafficMode, target: String, before: Int, expected: Int) throws -> [ProxyRecord] {
        let deadline = Monotonic.now() + 5
        var last = -1
        while true {
            let added = Array(try proxied(mode, target: target).dropFirst(before))
            if added.count == expected && expected > 0 { return added }
            if Monotonic.now() >= deadline || (added.count == last && expected == 0) { return added }
            last = added.count
            usleep(50_000)
        }
    }

    private func checkCaptured(_ mode: TrafficMode, records: [ProxyRecord], connections: Int) throws {
        guard connections > 0 else { throw LabError("\(mode.name): the client made no connection") }
        let expected = mode.name == "direct" ? 0 : connections
        guard records.count == expected else {
            throw LabError("\(mode.name): the proxy recorded \(records.count) of the client's \(connections) connections (expected \(expected))")
        }
        // The explicit mode's connections say CONNECT; a capture mode's must have been captured.
        if let bad = records.first(where: { r in r.error != nil || (r.method == "explicit") != mode.explicit }) {
            throw LabError("\(mode.name): a connection was not proxied as this mode does it: \(bad)")
        }
    }

    /// Rounds of A B C ... so drift hits every mode alike.
    func run(rounds: Int, duration: Double, kinds: [String]) throws -> [TrafficSample] {
        var samples: [TrafficSample] = []
        let total = rounds * modes.count * 2 * kinds.count
        for r in 1...rounds {
            for kind in kinds {
                for placement in ["same-node", "cross-node"] {
                    for mode in modes {
                        let s = try measure(mode, placement: placement, kind: kind, duration: duration, round: r)
                        samples.append(s)
                        log("[\(samples.count)/\(total)] round \(r) \(kind) \(placement) \(mode.name): " +
                            (kind == "bulk" ? String(format: "%.2f Gbit/s", s.gbps) : String(format: "%.0f/s p99 %.0f us", s.rate, s.p99us)) +
                            (s.failed > 0 ? " (\(s.failed) failed)" : ""))
                    }
                }
            }
        }
        return samples + (try fixedLoad(rounds: rounds, duration: duration, saturated: samples))
    }

    /// Short connections at a fixed offered load, half of what iptables sustained (its median per
    /// placement), so latency is compared where no mode is saturated. Kind `short-fixed`.
    private func fixedLoad(rounds: Int, duration: Double, saturated: [TrafficSample]) throws -> [TrafficSample] {
        var samples: [TrafficSample] = []
        for placement in ["same-node", "cross-node"] {
            let sustained = saturated.filter { $0.mode == "iptables" && $0.placement == placement && $0.kind == "short" }.map(\.rate).sorted()
            guard !sustained.isEmpty else { continue }
            let rate = (sustained[sustained.count / 2] / 2).rounded()
            for r in 1...rounds {
                for mode in modes {
                    let s = try measure(mode, placement: placement, kind: "short-fixed", duration: duration, round: r, rate: rate)
                    samples.append(s)
                    log(String(format: "round %d short at %.0f/s %@ %@: %.0f/s p50 %.0f us p99 %.0f us", r, rate, placement, mode.name, s.rate, s.p50us, s.p99us))
                }
            }
        }
        return samples
    }

    /// ns per program run, per eBPF mode, from the kernel's run-time statistics.
    func bpfCost() throws -> [String: [String: Double]] {
        var out: [String: [String: Double]] = [:]
        for (mode, planes) in dataplanes {
            guard let dp = planes["n1"] as? EBPFDataplane else { continue }
            var m: [String: Double] = [:]
            for (prog, st) in try dp.programStats() where st.runs > 0 { m[prog] = Double(st.runTimeNs) / Double(st.runs) }
            out[mode] = m
        }
        return out
    }
}


