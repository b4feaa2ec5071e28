import ArgumentParser
import Dataplane
import MapSync
import Foundation
import NodeLab
import SystemCalls

/// `redirect-lab demo`: 2 nodes x 2 meshed pods and an outsider, capture, traffic, probes, teardown.
struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Bring up 2 nodes x 2 pods, capture them, run traffic and kubelet probes, print what the proxy and the kernel saw, tear down.")
    enum Choice: String, ExpressibleByArgument, CaseIterable { case ebpf, iptables, none }
    @Option(help: "Dataplane: ebpf, iptables, or none (no capture; traffic to the proxy is explicit).") var dataplane: Choice = .ebpf
    @Flag(help: "No IPv6 addresses.") var noIPv6 = false

    func run() throws {
        var options = LabOptions()
        options.ipv6 = !noIPv6
        let lab = Lab(options: options)
        var capture: LabCapture?
        let signals = tearDownOnSignal(lab)
        defer { capture?.teardown(); lab.teardown(); _ = signals }

        say("== lab \(options.runID): 2 nodes x 2 pods through the real CNI plugins (bridge + host-local, loopback), dataplane: \(dataplane.rawValue)")
        try lab.up()
        let outsider = try lab.addPod(on: lab.nodes[1], name: "n2-outsider")
        let meshed = lab.pods.filter { $0 !== outsider }
        if let mode = DataplaneMode(rawValue: dataplane.rawValue) {
            capture = try LabCapture(lab: lab, mode: mode)
            for pod in meshed { try capture!.enroll(pod) }
        } else {
            for pod in meshed { try lab.enrollInProxy(pod, spoofSource: false) }
        }
        for pod in lab.pods {
            say("  \(pod.node.name)/\(pod.name)  \(pod.addresses.map(\.description).joined(separator: ", "))  \(pod === outsider ? "(not in the mesh)" : "(meshed)")")
        }

        say("\n== traffic: pod -> app :8080/whoami (what the app saw as its client)")
        var flows = [(meshed[0], meshed[1]), (meshed[0], meshed[2]), (meshed[3], meshed[0]), (outsider, meshed[1])]
        if capture == nil { flows.removeLast() }
        for (from, to) in flows {
            let target = SocketAddress(to.ipv4!, Lab.httpPort)
            let r = capture == nil ? try lab.requestViaProxy(from: from, to: target) : try lab.request(from: from, to: target)
            say("  \(from.name) -> \(to.name): HTTP \(r.status) \(r.body.trimmed)")
        }
        if let v6 = meshed[2].ipv6 {
            let r = capture == nil ? try lab.requestViaProxy(from: meshed[0], to: SocketAddress(v6, Lab.httpPort))
                                   : try lab.request(from: meshed[0], to: SocketAddress(v6, Lab.httpPort))
            say("  \(meshed[0].name) -> \(meshed[2].name) (IPv6): HTTP \(r.status) \(r.body.trimmed)")
        }

        say("\n== kubelet probes from each node (source the app saw)")
        for pod in lab.pods {
            for v6 in options.ipv6 ? [false, true] : [false] {
                let r = try lab.probe(pod, ipv6: v6)
                let seen = lab.appRecords(pod).last { $0.path == "/healthz" }?.client ?? "?"
                say("  \(pod.node.name) -> \(pod.name) \(v6 ? "IPv6" : "IPv4") /healthz: HTTP \(r.status) from \(seen)")
            }
        }

        say("\n== what the mesh proxy handled")
        for node in lab.nodes {
            for r in lab.proxyRecords(node) {
                say("  \(node.name) :\(r.listener)  \(r.client) -> \(r.originalDestination)  [\(r.method)] upstream \(r.upstream)\(r.error.map { " ERROR \($0)" } ?? "")")
            }
        }
        if let capture {
            if let ebpf = capture.dataplane(meshed[0].node) as? EBPFDataplane {
                try showBPFState(lab: lab, capture: capture, dataplane: ebpf, pod: meshed[0])
            } else {
                try showKernelState(lab: lab, pod: meshed[0])
            }
        }
        say("\n== tearing down")
    }

    func showKernelState(lab: Lab, pod: LabPod) throws {
        say("\n== what the kernel holds for \(pod.name) (iptables-save -t nat in the pod, ip rule)")
        let nat = try lab.inNamespace(pod.netns, "iptables-save", ["-t", "nat"])
        for line in nat.split(separator: "\n") where line.contains("ISTIO") { say("  \(line)") }
        for line in try lab.inNamespace(pod.netns, "ip", ["rule", "show"]).split(separator: "\n") where line.contains("lookup 100") { say("  \(line)") }
        say("\n== node \(pod.node.name): probe SNAT (iptables-save -t nat, ipset)")
        let node = try lab.inNamespace(pod.node.netns, "iptables-save", ["-t", "nat"])
        for line in node.split(separator: "\n") where line.contains("ISTIO") { say("  \(line)") }
        for line in try lab.inNamespace(pod.node.netns, "ipset", ["list", "istio-inpod-probes-v4"]).split(separator: "\n") where line.contains("comment") {
            say("  ipset istio-inpod-probes-v4: \(line)")
        }
    }
}

extension Demo {
    func showBPFState(lab: Lab, capture: LabCapture, dataplane: EBPFDataplane, pod: LabPod) throws {
        let maps = "\(pod.node.bpfPinRoot)/maps"
        say("\n== what the kernel holds on node \(pod.node.name) (pins under \(pod.node.bpfPinRoot))")
        say("$ bpftool map dump pinned \(maps)/ra_config")
        say(try Command.run("bpftool", ["map", "dump", "pinned", "\(maps)/ra_config"]).trimmed)
        say("$ bpftool map dump pinned \(maps)/ra_pods   (one entry per pod address)")
        say(try Command.run("bpftool", ["map", "dump", "pinned", "\(maps)/ra_pods"]).trimmed)
        say("$ tc filter show dev eth0 ingress   (inside \(pod.name))")
        say(try lab.inNamespace(pod.netns, "tc", ["filter", "show", "dev", "eth0", "ingress"]).trimmed)
        say("\n== per-pod decisions counted by the programs (ra_counters)")
        for p in capture.enrolledPods(on: pod.node).sorted(by: { $0.name < $1.name }) {
            let c = try dataplane.counters(lab.podSpec(p)).sorted { $0.key.rawValue < $1.key.rawValue }
            say("  \(p.name): " + c.map { "\($0.key)=\($0.value)" }.joined(separator: " "))
        }
        let rules = try lab.inNamespace(pod.netns, "iptables-save", []) + lab.inNamespace(pod.node.netns, "iptables-save", [])
        say("\n== iptables rules of ours in \(pod.name) and \(pod.node.name): \(rules.split(separator: "\n").filter { $0.contains("ISTIO") }.count)")
    }
}

func say(_ s: String) { print(s); fflush(stdout) }

extension String {
    var trimmed: String { trimmingCharacters(in: .whitespacesAndNewlines) }
}
