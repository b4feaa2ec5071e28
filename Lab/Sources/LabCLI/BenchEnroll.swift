import AgentAPI
import Dataplane
import Foundation
import NodeLab
import Synchronization
import SystemCalls

/// Enrollment cost at scale: bare pods (a namespace with a veth into the node) made in bulk with
/// `ip -batch`, enrolled and removed through each dataplane directly, then through the agent.
struct EnrollSample: Codable {
    var mode: String
    var pods: Int
    var enrollMs: Double
    var removeMs: Double
    var probeChangeMs: Double?
}

struct RSSSample: Codable {
    var pods: Int
    var rssKiB: Int
    var addMsPerPod: Double
    /// Median and 99th percentile of the single ADDs that brought the node to `pods` (each answered
    /// only once durable), nil for a step with no ADD.
    var addP50Ms: Double?
    var addP99Ms: Double?
}

/// ADDs sent to the agent at once, as a kubelet starting pods in parallel sends them.
struct ConcurrentAddSample: Codable {
    /// Pods on the node once they were all enrolled.
    var pods: Int
    var concurrency: Int
    var p50Ms: Double
    var p99Ms: Double
    /// From the first request sent to the last answer.
    var wallMs: Double
}

final class EnrollBench {
    let lab: Lab
    let node: LabNode
    var pods: [PodSpec] = []
    /// What ``agentRSS(steps:)`` measured of concurrent ADDs, at its last step.
    var concurrentAdds: ConcurrentAddSample?
    let log: (String) -> Void

    init(lab: Lab, log: @escaping (String) -> Void) { self.lab = lab; self.node = lab.nodes[0]; self.log = log }

    /// Creates `count` bare pods in two `ip -batch` calls.
    func makePods(_ count: Int) throws {
        let prefix = "\(lab.options.runID)-b"
        let names = (0..<count).map { "\(prefix)\($0)" }
        try Command.run("ip", ["-batch", "-"], input: names.map { "netns add \($0)" }.joined(separator: "\n") + "\n")
        var links = ""
        for (i, n) in names.enumerated() { links += "link add h\(i) type veth peer name eth0 netns \(n)\nlink set h\(i) up\n" }
        try Command.run("ip", ["-n", node.netnsName, "-batch", "-"], input: links)
        pods = names.enumerated().map { i, n in
            PodSpec(uid: "bench-\(i)", name: "b\(i)", namespace: "bench", netns: "/run/netns/\(n)",
                    ips: [IPAddress("10.250.\(i / 250).\(i % 250 + 2)")!])
        }
    }

    func deletePods() {
        for p in pods { _ = try? Command.capture("ip", ["netns", "del", URL(fileURLWithPath: p.netns).lastPathComponent]) }
        pods = []
    }

    func time(_ body: () throws -> Void) rethrows -> Double {
        let t0 = DispatchTime.now()
        try body()
        return Double(DispatchTime.now().uptimeNanoseconds - t0.uptimeNanoseconds) / 1e6
    }

    /// Enroll and remove 1, 10, ... pods per mode, modes interleaved per size.
    func run(sizes: [Int], modes: [String], make: (String) throws -> Dataplane) throws -> [EnrollSample] {
        var out: [EnrollSample] = []
        var planes: [String: Dataplane] = [:]
        for m in modes { planes[m] = try make(m) }
        for n in sizes {
            for m in modes {
                if (m == "ebpf-tcx" || m == "nftables") && n > 100 { continue } // tens of ms per pod: see the report
                let dp = planes[m]!
                let batch = Array(pods.prefix(n))
                let enroll = try time { for p in batch { try dp.enroll(p) } }
                var change: Double? = nil
                if n == sizes.last {
                    change = try time { try dp.setProbeIPs(v4: node.address, v6: node.addressV6, pods: batch) }
                    try dp.setProbeIPs(v4: CaptureConfig().probeIPv4, v6: CaptureConfig().probeIPv6, pods: batch)
                }
                let remove = try time { for p in batch { try dp.remove(p) } }
                out.append(EnrollSample(mode: m, pods: n, enrollMs: enroll, removeMs: remove, probeChangeMs: change))
                log(String(format: "enroll %@ x%d: %.1f ms (%.3f ms/pod), remove %.1f ms%@", m, n, enroll, enroll / Double(n), remove,
                           change.map { String(format: ", probe IP change %.2f ms", $0) } ?? ""))
            }
        }
        return out
    }

    /// The agent's resident memory with 0 and more pods enrolled through its control socket.
    func agentRSS(steps: [Int]) throws -> [RSSSample] {
        try lab.startAgent(on: node, dataplane: "ebpf")
        defer { node.agent?.stop() }
        var out: [RSSSample] = []
        var enrolled = 0
        var added = 0 // every pod the agent may hold, for the clean-up even after a failure
        defer {
            for p in pods.prefix(added) { _ = try? AgentClient.call(ControlRequest(op: "del", pod: request(p)), socket: node.agentControlSocket) }
        }
        for target in steps {
            let batch = pods[enrolled..<min(target, pods.count)]
            var each: [Double] = []
            let ms = try time {
                for p in batch {
                    let req = request(p)
                    var r: ControlResponse?
                    added += 1
                    each.append(try time { r = try AgentClient.call(ControlRequest(op: "add", pod: req), socket: node.agentControlSocket) })
                    guard r?.ok == true else { throw LabError("agent add failed: \(r?.error ?? "?")") }
                }
            }
            enrolled = target
            let rss = Self.rssKiB(node.agent!.pid)
            let sorted = each.sorted()
            func pct(_ q: Double) -> Double? { sorted.isEmpty ? nil : sorted[min(sorted.count - 1, Int((Double(sorted.count) * q).rounded(.up)) - 1)] }
            out.append(RSSSample(pods: target, rssKiB: rss, addMsPerPod: batch.isEmpty ? 0 : ms / Double(batch.count),
                                 addP50Ms: pct(0.5), addP99Ms: pct(0.99)))
            log("agent RSS with \(target) pods: \(rss) KiB" + (batch.isEmpty ? "" : String(format: " (ADD %.2f ms/pod through the agent)", ms / Double(batch.count))))
        }
        concurrentAdds = try concurrentAdds(Array(pods.prefix(enrolled).suffix(20)), total: enrolled)
        return out
    }

    private func request(_ p: PodSpec) -> PodRequest {
        PodRequest(uid: p.uid, name: p.name, namespace: p.namespace, netns: p.netns, ips: p.ips.map(\.description),
                   podLabels: ["istio.io/dataplane-mode": "ambient"])
    }

    /// Takes `batch` out through the agent, then sends all their ADDs at once, one thread each.
    private func concurrentAdds(_ batch: [PodSpec], total: Int) throws -> ConcurrentAddSample? {
        guard !batch.isEmpty else { return nil }
        for p in batch {
            let r = try AgentClient.call(ControlRequest(op: "del", pod: request(p)), socket: node.agentControlSocket)
            guard r.ok else { throw LabError("agent del failed: \(r.error ?? "?")") }
        }
        let socket = node.agentControlSocket
        let results = Mutex<[Result<Double, any Error>]>([])
        let group = DispatchGroup()
        let wall = time {
            for p in batch {
                let req = request(p)
                group.enter()
                Thread {
                    let t0 = DispatchTime.now()
                    let r = Result { () throws -> Double in
                        let answer = try AgentClient.call(ControlRequest(op: "add", pod: req), socket: socket)
                        guard answer.ok else { throw LabError("agent add failed: \(answer.error ?? "?")") }
                        return Double(DispatchTime.now().uptimeNanoseconds - t0.uptimeNanoseconds) / 1e6
                    }
                    results.withLock { $0.append(r) }
                    group.leave()
                }.start()
            }
            group.wait()
        }
        let sorted = try results.withLock { $0 }.map { try $0.get() }.sorted()
        let sample = ConcurrentAddSample(pods: total, concurrency: batch.count, p50Ms: BenchSummary.percentile(sorted, 0.5) ?? 0,
                                         p99Ms: BenchSummary.percentile(sorted, 0.99) ?? 0, wallMs: wall)
        log(String(format: "%d concurrent ADDs through the agent at %d pods: p50 %.2f ms, p99 %.2f ms, all in %.1f ms",
                   sample.concurrency, total, sample.p50Ms, sample.p99Ms, wall))
        return sample
    }

    static func rssKiB(_ pid: Int32) -> Int {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
    }
}
