import ArgumentParser
import Dataplane
import AgentAPI
import Foundation
import KubeStandIn
import MeshProxy
import NodeLab
import SystemCalls

/// `redirect-lab demo`: 2 nodes x 2 meshed pods and an outsider, capture, traffic, probes, teardown.
struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "2 nodes, pods created through the CNI chain with redirect-cni, a redirect-agent per node, the proxy on ZDS: traffic, probes, what was captured, the kernel's view; then teardown.")
    enum Choice: String, ExpressibleByArgument, CaseIterable { case auto, ebpf, iptables, nftables, none }
    @Option(help: "The agents' dataplane: auto (eBPF where the kernel allows it), ebpf, iptables, nftables, or none (no capture; the client talks to the proxy explicitly).") var dataplane: Choice = .auto
    @Flag(help: "No IPv6 addresses.") var noIPv6 = false

    func run() throws {
        var options = LabOptions()
        options.ipv6 = !noIPv6
        options.podsPerNode = 0
        if dataplane != .none {
            options.agentDataplane = dataplane.rawValue
            options.kubeAPI = true // membership from the (stand-in) Kubernetes API, as on a cluster
        }
        let lab = Lab(options: options)
        let signals = tearDownOnSignal(lab)
        defer { lab.teardown(); _ = signals }

        say("== lab \(options.runID): 2 nodes; pods created as a runtime does: loopback, then bridge + host-local\(dataplane == .none ? "" : " + redirect-cni")")
        try lab.up()
        var meshed: [LabPod] = []
        for node in lab.nodes {
            for i in 1...2 {
                meshed.append(dataplane == .none ? try lab.addPod(on: node, name: "\(node.name)-pod\(i)") : try lab.addMeshedPod(on: node, name: "\(node.name)-pod\(i)"))
            }
        }
        let outsider = try lab.addPod(on: lab.nodes[1], name: "n2-outsider")
        let optOut = try lab.addPod(on: lab.nodes[0], name: "n1-optout", labels: ["istio.io/dataplane-mode": "none"])
        if dataplane == .none { for pod in meshed { try lab.enrollInProxy(pod, spoofSource: false) } }
        var enrolled = Set<String>()
        for node in lab.nodes where dataplane != .none {
            let s = try AgentClient.call(ControlRequest(op: "status"), socket: node.agentControlSocket).status!
            say("  agent on \(node.name): dataplane \(s.dataplane) (\(s.reason)); proxy \(s.proxyConnected ? "connected over ZDS" : "not connected")")
            for p in s.pods { enrolled.insert(String(p.pod.split(separator: "/").last!)) }
        }
        for pod in lab.pods {
            let labels = (try? lab.kube?.server.store.get(.pod, namespace: pod.identity.namespace, name: pod.name)[path: ["metadata", "labels"]]?.stringMap) ?? pod.identity.labels
            let label = labels["istio.io/dataplane-mode"].map { "label \($0)" } ?? "no label"
            say("  \(pod.node.name)/\(pod.name)  \(pod.addresses.map(\.description).joined(separator: ", "))  (\(label): \(enrolled.contains(pod.name) ? "in the mesh" : "not in the mesh"))")
        }

        say("\n== traffic: pod -> app :8080/whoami (what the app saw as its client)")
        var flows = [(meshed[0], meshed[1]), (meshed[0], meshed[2]), (meshed[3], meshed[0]), (outsider, meshed[1]), (optOut, outsider)]
        if dataplane == .none { flows = Array(flows.prefix(3)) }
        for (from, to) in flows {
            let target = SocketAddress(to.ipv4!, Lab.httpPort)
            let r = dataplane == .none ? try lab.requestViaProxy(from: from, to: target) : try lab.request(from: from, to: target)
            say("  \(from.name) -> \(to.name): HTTP \(r.status) \(r.body.trimmed)")
        }
        if let v6 = meshed[2].ipv6 {
            let t = SocketAddress(v6, Lab.httpPort)
            let r = dataplane == .none ? try lab.requestViaProxy(from: meshed[0], to: t) : try lab.request(from: meshed[0], to: t)
            say("  \(meshed[0].name) -> \(meshed[2].name) (IPv6): HTTP \(r.status) \(r.body.trimmed)")
        }

        if dataplane != .none { try showDNS(lab: lab, meshed: meshed[0], outsider: outsider) }

        say("\n== kubelet probes from each node (source the app saw)")
        for pod in lab.pods {
            for v6 in options.ipv6 ? [false, true] : [false] {
                let r = try lab.probe(pod, ipv6: v6)
                let seen = try lab.appRecords(pod).last { $0.path == "/healthz" }?.client ?? "?"
                say("  \(pod.node.name) -> \(pod.name) \(v6 ? "IPv6" : "IPv4") /healthz: HTTP \(r.status) from \(seen)")
            }
        }

        say("\n== what the mesh proxy handled")
        for node in lab.nodes {
            for r in try lab.proxyRecords(node) {
                say("  \(node.name) :\(r.listener)  \(r.client) -> \(r.originalDestination)  [\(r.method)] upstream \(r.upstream)\(r.error.map { " ERROR \($0)" } ?? "")")
            }
        }
        guard dataplane != .none else { say("\n== tearing down"); return }
        try showLabelDriven(lab: lab, peer: outsider)
        let node = lab.nodes[0]
        say("\n== redirect-agent status (node \(node.name), read from the kernel)")
        say(try Command.run(try LabBinaries.path("redirect-agent"), ["status", "--control-socket", node.agentControlSocket]).trimmed)
        let s = try AgentClient.call(ControlRequest(op: "status"), socket: node.agentControlSocket).status!
        switch s.dataplane {
        case "ebpf": try showBPFState(lab: lab, pod: meshed[0])
        case "nftables": try showNftState(lab: lab, pod: meshed[0])
        default: try showKernelState(lab: lab, pod: meshed[0])
        }
        say("\n== tearing down")
    }

    func showNftState(lab: Lab, pod: LabPod) throws {
        say("\n== what the kernel holds for \(pod.name) (nft list table inet istio-ambient-nat in the pod, ip rule)")
        let nat = try lab.inNamespace(pod.netns, "nft", ["list", "table", "inet", "istio-ambient-nat"])
        for line in nat.split(separator: "\n") where line.contains("redirect") || line.contains("accept") { say("  \(line.trimmingCharacters(in: .whitespaces))") }
        for line in try lab.inNamespace(pod.netns, "ip", ["rule", "show"]).split(separator: "\n") where line.contains("lookup 100") { say("  \(line)") }
        say("\n== node \(pod.node.name): probe SNAT and the set of in-mesh pods (nft list table inet istio-ambient-nat)")
        let node = try lab.inNamespace(pod.node.netns, "nft", ["list", "table", "inet", "istio-ambient-nat"])
        for line in node.split(separator: "\n") where line.contains("snat") || line.contains("comment \"") && !line.contains("UIDs") {
            say("  \(line.trimmingCharacters(in: .whitespaces))")
        }
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
    /// dig from a meshed pod and from one outside the mesh, against the node's cluster DNS: the proxy
    /// answers the mesh's names itself and forwards the rest.
    func showDNS(lab: Lab, meshed: LabPod, outsider: LabPod) throws {
        let server = meshed.node.clusterDNS.ip
        say("\n== DNS: dig @\(server) (the cluster DNS answers every name with \(Lab.clusterDNSAddresses[0]); the proxy answers *.\(MeshProxy.dnsZone) itself)")
        for pod in [meshed, outsider] {
            for name in ["web.mesh.lab", "www.example.com"] {
                let answer = (try? lab.inNamespace(pod.netns, "dig", ["+short", "+time=2", "+tries=1", "@\(server)", name]))?.trimmed ?? "?"
                say("  \(pod.name): \(name) -> \(answer.isEmpty ? "no answer" : answer)")
            }
        }
    }

    /// A running pod joins the mesh when its namespace is labelled with kubectl, and leaves it
    /// when the label goes: no restart, no new ADD.
    func showLabelDriven(lab: Lab, peer: LabPod) throws {
        say("\n== enrolment driven by the Kubernetes API (the lab's stand-in, through the real kubectl)")
        let node = lab.nodes[0]
        let pod = try lab.addPod(on: node, name: "shop-app", namespace: "shop")
        let dst = SocketAddress(peer.ipv4!, Lab.httpPort)
        func enrolled() throws -> Bool {
            try AgentClient.call(ControlRequest(op: "status"), socket: node.agentControlSocket).status!.pods.contains { $0.pod == "shop/shop-app" }
        }
        func traffic() throws {
            let before = try lab.proxyRecords(node).count
            let r = try lab.request(from: pod, to: dst)
            let proxied = try lab.proxyRecords(node).count > before
            say("  shop-app -> \(peer.name): HTTP \(r.status), \(proxied ? "captured (the proxy handled it)" : "not captured")")
        }
        func wait(_ want: Bool) throws {
            for _ in 0..<200 where try enrolled() != want { usleep(50_000) }
        }
        func kubectl(_ args: [String]) throws {
            say("$ kubectl \(args.joined(separator: " "))")
            let out = try lab.kubectl(args).trimmed
            if !out.isEmpty { say("  " + out.replacingOccurrences(of: "\n", with: "\n  ")) }
        }
        try kubectl(["get", "pods", "-n", "shop"])
        try traffic()
        try kubectl(["label", "namespace", "shop", "istio.io/dataplane-mode=ambient"])
        try wait(true)
        try traffic()
        usleep(300_000) // the annotation is written after enrolment
        try kubectl(["get", "pod", "shop-app", "-n", "shop", "-o", "jsonpath={.metadata.annotations}"])
        try kubectl(["label", "namespace", "shop", "istio.io/dataplane-mode-"])
        try wait(false)
        try traffic()
        usleep(300_000)
        try kubectl(["get", "pod", "shop-app", "-n", "shop", "-o", "jsonpath={.metadata.annotations}"])
    }

    func showBPFState(lab: Lab, pod: LabPod) throws {
        let maps = "\(pod.node.bpfPinRoot)/maps"
        say("\n== the maps on node \(pod.node.name) (pins under \(pod.node.bpfPinRoot))")
        say("$ redirect-agent maps   (every map decoded, read from the kernel; names from the agent)")
        say(try Command.run(try LabBinaries.path("redirect-agent"), ["maps", "--pin-root", pod.node.bpfPinRoot,
                                                                     "--control-socket", pod.node.agentControlSocket]).trimmed)
        say("$ bpftool map dump pinned \(maps)/ra_config")
        say(try Command.run("bpftool", ["map", "dump", "pinned", "\(maps)/ra_config"]).trimmed)
        say("$ bpftool map dump pinned \(maps)/ra_pods   (one entry per pod address)")
        say(try Command.run("bpftool", ["map", "dump", "pinned", "\(maps)/ra_pods"]).trimmed)
        say("$ bpftool map dump pinned \(maps)/ra_probe_flows   (the kubelet's probe connections, recorded by sockops_node)")
        say(try Command.run("bpftool", ["map", "dump", "pinned", "\(maps)/ra_probe_flows"]).trimmed)
        say("$ ip -o address show dev lo   (node \(pod.node.name): it holds the probe IPs, so replies reach the kubelet unrewritten)")
        say(try lab.inNamespace(pod.node.netns, "ip", ["-o", "address", "show", "dev", "lo"]).trimmed)
        say("$ bpftool link show pinned ...   (the node's socket programs on the cgroup v2 root; nothing on the host veths)")
        for name in try FileManager.default.contentsOfDirectory(atPath: "\(pod.node.bpfPinRoot)/node").sorted() {
            say(try Command.run("bpftool", ["link", "show", "pinned", "\(pod.node.bpfPinRoot)/node/\(name)"]).trimmed)
        }
        say("$ tc filter show dev eth0 ingress   (inside \(pod.name))")
        say(try lab.inNamespace(pod.netns, "tc", ["filter", "show", "dev", "eth0", "ingress"]).trimmed)
        let rules = try lab.inNamespace(pod.netns, "iptables-save", []) + lab.inNamespace(pod.node.netns, "iptables-save", [])
        say("\n== iptables rules of ours in \(pod.name) and \(pod.node.name): \(rules.split(separator: "\n").filter { $0.contains("ISTIO") }.count)")
    }
}

func say(_ s: String) { print(s); flushOutput() }

extension String {
    var trimmed: String { trimmingCharacters(in: .whitespacesAndNewlines) }
}
