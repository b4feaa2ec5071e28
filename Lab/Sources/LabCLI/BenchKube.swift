import Foundation
import KubeStandIn
import NodeLab
import SystemCalls

/// Enrolment driven by the Kubernetes API, measured (issue #13's figures): how long a label change
/// on a running pod takes to show as capture, and its removal as release, and what watching a
/// node's pods costs the agent. One node, the stand-in API, the agent in ebpf mode, `watched` pod
/// objects scheduled on the node (outside the mesh: only watched) and `flips` running pods.
struct KubeBench {
    let log: (String) -> Void

    func run(quick: Bool) throws -> KubeBenchResult {
        let watched = quick ? 50 : 1000, flips = quick ? 3 : 20
        var options = LabOptions()
        options.nodes = 1
        options.podsPerNode = 0
        options.ipv6 = false
        options.kubeAPI = true
        options.agentDataplane = "ebpf"
        let lab = Lab(options: options)
        defer { lab.teardown() }
        try lab.up()
        let node = lab.nodes[0]
        log("kube: \(watched) pod objects on the node, \(flips) running pods to label")
        for i in 0..<watched { try lab.addPodObject(on: node, name: "watched-\(i)", namespace: "watched") }
        let pods = try (0..<flips).map { try lab.addPod(on: node, name: "flip-\($0)", namespace: "bench") }
        guard let agent = node.agent, let store = lab.kube?.server.store else { throw LabError("the kube lab has no agent or API") }
        sleep(2) // the informers have every object by now
        let (cpuPercent, seconds) = try cpuWhileIdle(agent.pid, seconds: quick ? 2 : 10)
        let rss = EnrollBench.rssKiB(agent.pid)
        log(String(format: "kube: agent RSS %d KiB and %.2f %% of a CPU over %.0f s, watching %d pods", rss, cpuPercent, seconds, watched + flips))
        let captured = try pods.map { try flip(store, $0, to: "ambient") }
        let released = try pods.map { try flip(store, $0, to: "none") }
        log(String(format: "kube: label to captured p50 %.1f ms, released p50 %.1f ms", median(captured), median(released)))
        return KubeBenchResult(watchedPods: watched + flips, labelToCapturedMs: captured, labelToReleasedMs: released,
                               agentRSSKiB: rss, agentCPUPercentWatching: cpuPercent)
    }

    /// Sets the pod's `istio.io/dataplane-mode` label in the API (what `kubectl label` does) and
    /// returns the milliseconds until the pod's `ambient.istio.io/redirection` annotation, which
    /// the agent writes once capture is in place and the proxy has the pod (or once it is
    /// released), says so.
    func flip(_ store: ObjectStore, _ pod: LabPod, to value: String) throws -> Double {
        let (ns, name) = (pod.identity.namespace, pod.name)
        let want: String? = value == "ambient" ? "enabled" : nil
        let start = Monotonic.now()
        _ = try store.patch(.pod, namespace: ns, name: name, .object(["metadata": .object(["labels": .object(["istio.io/dataplane-mode": .string(value)])])]))
        while Monotonic.now() - start < 30 {
            let annotation = try store.get(.pod, namespace: ns, name: name)[path: ["metadata", "annotations", "ambient.istio.io/redirection"]]?.string
            if annotation == want { return (Monotonic.now() - start) * 1000 }
            usleep(500)
        }
        throw LabError("the agent did not follow the label change on \(ns)/\(name) within 30 s")
    }

    /// The share of one CPU the process used over `seconds` of nothing changing.
    func cpuWhileIdle(_ pid: Int32, seconds: UInt32) throws -> (percent: Double, seconds: Double) {
        let before = try cpuSeconds(pid), start = Monotonic.now()
        sleep(seconds)
        let elapsed = Monotonic.now() - start
        return ((try cpuSeconds(pid) - before) / elapsed * 100, elapsed)
    }

    /// User and system CPU time of `pid` so far (/proc/PID/stat fields 14 and 15).
    func cpuSeconds(_ pid: Int32) throws -> Double {
        let stat = try String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)
        // Fields after the command name, which is in parentheses and may hold spaces.
        guard let close = stat.lastIndex(of: ")") else { throw LabError("unreadable /proc/\(pid)/stat") }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { throw LabError("unreadable /proc/\(pid)/stat") }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    private func median(_ values: [Double]) -> Double { values.isEmpty ? 0 : values.sorted()[values.count / 2] }
}

/// What ``KubeBench`` measured.
struct KubeBenchResult: Codable {
    /// Pod objects on the node that the agent watched.
    var watchedPods: Int
    /// Label set to annotation `enabled`, per pod, in ms.
    var labelToCapturedMs: [Double]
    /// Label set to `none` to annotation removed, per pod, in ms.
    var labelToReleasedMs: [Double]
    /// The agent's resident memory while watching.
    var agentRSSKiB: Int
    /// The agent's CPU while watching and nothing changes, in % of one CPU.
    var agentCPUPercentWatching: Double
}
