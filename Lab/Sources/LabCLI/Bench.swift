import ArgumentParser
import Dataplane
import Foundation
import NodeLab
import SystemCalls

/// `redirect-lab bench`: ebpf vs iptables vs nftables vs no capture, side by side in one run.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure capture modes side by side (interleaved rounds), enrollment at scale, probe-IP change, BPF per-packet cost and agent memory; write JSON, a Markdown report and SVG plots.")
    @Flag(help: "A one-minute smoke run (1 round, short runs, 1 and 10 pods).") var quick = false
    @Option(help: "Rounds of every mode.") var rounds = 3
    @Option(help: "Seconds per client run.") var duration = 2.0
    @Option(help: "Pod counts for the enrollment benchmark.") var pods = "1,10,100,1000"
    @Option(help: "Where to write results.json, summary.json, README.md and the plots.") var out = "docs/bench"
    @Option(help: "Re-render the report and plots from an earlier results.json instead of measuring.") var from: String?
    @Flag(help: "Measure only the Kubernetes part (label change to capture, the agent watching 1000 pods) and add it to OUT/results.json.")
    var kubeOnly = false

    func run() throws {
        if let from {
            let result = try JSONDecoder().decode(BenchResult.self, from: Data(contentsOf: URL(fileURLWithPath: from)))
            try write(result, reportOnly: true)
            return
        }
        if kubeOnly {
            let path = "\(out)/results.json"
            var result = try JSONDecoder().decode(BenchResult.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
            result.kube = try KubeBench(log: { say($0) }).run(quick: quick)
            try write(result, reportOnly: false)
            return
        }
        let rounds = quick ? 1 : self.rounds, duration = quick ? 0.3 : self.duration
        let sizes = quick ? [1, 10] : pods.split(separator: ",").compactMap { Int($0) }
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let started = Date()
        func log(_ s: String) { say(String(format: "[%5.0fs] ", Date().timeIntervalSince(started)) + s) }

        var options = LabOptions()
        options.podsPerNode = 0
        options.ipv6 = false
        let lab = Lab(options: options)
        let signals = tearDownOnSignal(lab)
        defer { lab.teardown(); _ = signals }
        try lab.up()
        let tcx = Self.tcxSupported(lab)
        var modes = ["direct", "explicit", "iptables", "nftables", "ebpf"]
        if tcx { modes.append("ebpf-tcx") }
        log("modes: \(modes.joined(separator: ", ")); \(rounds) round(s) x \(duration)s per run")

        let previousStats = (try? readSysctl("kernel.bpf_stats_enabled")) ?? "0"
        try writeSysctl("kernel.bpf_stats_enabled", "1")
        defer { try? writeSysctl("kernel.bpf_stats_enabled", previousStats) }
        let traffic = TrafficBench(lab: lab, log: log)
        try traffic.setUp(modeNames: modes)
        let samples = try traffic.run(rounds: rounds, duration: duration, kinds: ["short", "long", "bulk"])
        let cost = try traffic.bpfCost()
        let monitor = try traffic.monitorCost(rounds: rounds, duration: duration)

        let enroll = EnrollBench(lab: lab, log: log)
        log("creating \(sizes.max() ?? 0) bare pods for the enrollment benchmark")
        try enroll.makePods(sizes.max() ?? 1)
        defer { enroll.deletePods() }
        let node = lab.nodes[0]
        let enrollModes = ["iptables", "nftables", "ebpf"] + (tcx ? ["ebpf-tcx"] : [])
        let enrollSamples = try enroll.run(sizes: sizes, modes: enrollModes) { try traffic.makeDataplane($0, node: node) }
        let rss = try enroll.agentRSS(steps: quick ? [0, 1, 10] : [0, 1, 100, min(1000, sizes.max() ?? 1000)].filter { $0 <= (sizes.max() ?? 0) })

        let kube = try KubeBench(log: log).run(quick: quick)
        let result = BenchResult(machine: MachineInfo.read(), quick: quick, rounds: rounds, durationSeconds: duration, modes: modes,
                                 traffic: samples, bpfNsPerRun: cost, monitor: monitor, enrollment: enrollSamples, agentRSS: rss,
                                 concurrentAdds: enroll.concurrentAdds, kube: kube, seconds: Date().timeIntervalSince(started))
        try write(result, reportOnly: false)
        log("wrote \(out)/results.json, \(out)/README.md and plots")
    }

    func write(_ result: BenchResult, reportOnly: Bool) throws {
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        if !reportOnly {
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            try enc.encode(result).write(to: URL(fileURLWithPath: "\(out)/results.json"))
        }
        let summary = JSONEncoder()
        summary.outputFormatting = [.prettyPrinted, .sortedKeys]
        try summary.encode(BenchSummary(result)).write(to: URL(fileURLWithPath: "\(out)/summary.json"))
        let report = BenchReport(result: result)
        try report.markdown().write(toFile: "\(out)/README.md", atomically: true, encoding: .utf8)
        for (name, svg) in report.plots() { try svg.write(toFile: "\(out)/\(name)", atomically: true, encoding: .utf8) }
    }

    /// Whether tcx links attach here (kernel 6.6+).
    static func tcxSupported(_ lab: Lab) -> Bool {
        KernelRelease.atLeast(6, 6)
    }
}

/// Everything one run measured.
struct BenchResult: Codable {
    var machine: MachineInfo
    var quick: Bool
    var rounds: Int
    var durationSeconds: Double
    var modes: [String]
    var traffic: [TrafficSample]
    var bpfNsPerRun: [String: [String: Double]]
    /// A listening monitor's cost (absent in results from before it was measured).
    var monitor: MonitorCost?
    var enrollment: [EnrollSample]
    var agentRSS: [RSSSample]
    /// ADDs sent to the agent at once (absent in results from before it was measured).
    var concurrentAdds: ConcurrentAddSample?
    /// Enrolment from the Kubernetes API (absent in results from before it was measured).
    var kube: KubeBenchResult?
    var seconds: Double
}

/// The machine, as the report describes it.
struct MachineInfo: Codable {
    /// How the binaries under test were built: `release` (`make bench`) or `debug`.
    var build: String = MachineInfo.buildConfiguration
    var kernel: String
    var cpu: String
    var cpus: Int
    var memoryGiB: Double
    var date: String

    #if DEBUG
    static let buildConfiguration = "debug"
    #else
    static let buildConfiguration = "release"
    #endif

    static func read() -> MachineInfo {
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let model = cpuinfo.split(separator: "\n").first { $0.hasPrefix("model name") }.map { String($0.split(separator: ":", maxSplits: 1).last ?? "").trimmingCharacters(in: .whitespaces) } ?? "?"
        let mem = (try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8))?.split(separator: "\n").first?.split(separator: " ").dropFirst().first.flatMap { Double($0) } ?? 0
        let f = ISO8601DateFormatter()
        return MachineInfo(kernel: KernelRelease.string, cpu: model,
                           cpus: ProcessInfo.processInfo.activeProcessorCount, memoryGiB: (mem / 1048576 * 10).rounded() / 10, date: f.string(from: Date()))
    }
}
