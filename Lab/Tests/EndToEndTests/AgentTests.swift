import AgentAPI
import BPFLoader
import Dataplane
import Foundation
import MapSync
import NodeLab
import SystemCalls
import Testing

/// The repository root (for scripts/).
let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

/// A lab with one agent per node and no pods yet.
func withAgentLab(_ dataplane: String, wrapper: [String] = [], extra: [String] = [], nodes: Int = 1, _ body: (Lab) throws -> Void) throws {
    try withLab({ o in
        o.podsPerNode = 0
        o.nodes = nodes
        o.agentDataplane = dataplane
        o.agentWrapper = wrapper
        o.agentExtraArguments = extra
    }, body)
}

func status(_ node: LabNode) throws -> AgentStatus {
    let r = try AgentClient.call(ControlRequest(op: "status"), socket: node.agentControlSocket)
    return try #require(r.status)
}

/// Runs redirect-cni as a runtime would, with `env` and `stdin`; returns (exit status, stdout JSON).
func runPlugin(_ env: [String: String], stdin: String) throws -> (Int32, [String: Any]) {
    var full = ProcessInfo.processInfo.environment
    for k in full.keys where k.hasPrefix("CNI_") { full[k] = nil }
    full.merge(env) { $1 }
    let r = try Command.capture(try LabBinaries.path("redirect-cni"), [], environment: full, input: stdin)
    let json = (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8))) as? [String: Any] ?? [:]
    return (r.status, json)
}

@Suite("The node agent", .serialized)
struct AgentTests {
    @Test("pods from the CNI chain are enrolled by label; an opt-out pod and an unlabelled one are not; status reads the kernel", arguments: ["ebpf", "iptables", "nftables"])
    func selectionAndStatus(_ dataplane: String) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withAgentLab(dataplane) { lab throws in
            let node = lab.nodes[0]
            let meshed = try lab.addMeshedPod(on: node, name: "n1-pod1")
            let optOut = try lab.addPod(on: node, name: "n1-optout", labels: ["istio.io/dataplane-mode": "none"])
            let plain = try lab.addPod(on: node, name: "n1-plain")
            let s = try status(node)
            #expect(s.dataplane == dataplane && s.proxyConnected)
            #expect(s.pods.map(\.pod) == ["default/n1-pod1"])
            #expect(s.pods.first?.drift.isEmpty == true, "\(String(describing: s.pods.first?.drift))")
            #expect(s.pods.first?.attachment.contains(["ebpf": "clsact eth0", "iptables": "iptables-", "nftables": "nftables: "][dataplane] ?? "?") == true)
            if dataplane == "ebpf" {
                let guardText = BPFObject.netfilterProgramsSupported ? "egress guard linked for IPv4 and IPv6" : "no egress guard (needs Linux 6.4)"
                #expect(s.pods.first?.attachment.contains(guardText) == true, "\(s.pods.first?.attachment ?? "")")
                #expect(s.features["netfilter_egress_guard"] == BPFObject.netfilterProgramsSupported)
            }
            // Traffic: the meshed pod is captured, the others are not.
            let dst = SocketAddress(plain.ip4, Lab.httpPort)
            #expect(try lab.request(from: meshed, to: dst).status == 200)
            #expect(try lab.request(from: optOut, to: dst).status == 200)
            let out = try lab.proxyRecords(node).filter { $0.listener == 15001 }
            #expect(out.count == 1 && out.first?.client.hasPrefix("\(meshed.ip4):") == true)
            if dataplane == "ebpf" {
                #expect(try status(node).pods.first?.counters["outbound_captured"] == 1)
            }
            // The CLI prints the same from the kernel.
            let json = try Command.run(try LabBinaries.path("redirect-agent"), ["status", "--json", "--control-socket", node.agentControlSocket])
            #expect(json.contains("\"dataplane\" : \"\(dataplane)\"") && json.contains("n1-pod1"))
            // CNI DEL through the chain removes it.
            try lab.removePod(meshed)
            #expect(try status(node).pods.isEmpty)
        }
    }

    @Test("auto falls back to nftables or iptables (by the node's rules) where seccomp denies bpf(), says why, and still captures; --dataplane ebpf refuses to start")
    func seccompFallback() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        let wrapper = ["/usr/bin/python3", "\(repoRoot)/scripts/deny-bpf.py"]
        guard (try? Command.run("/usr/bin/python3", ["-c", "import seccomp"])) != nil else {
            Issue.record("cannot run: Debian's python3-seccomp is missing (make deps installs it)"); return
        }
        try withAgentLab("auto", wrapper: wrapper, nodes: 2) { lab throws in
            // A node without iptables rules gets nftables; one whose other software wrote iptables rules
            // (kube-proxy, the CNI) gets iptables, so the two never mix.
            let s = try status(lab.nodes[0])
            #expect(s.dataplane == "nftables")
            #expect(s.reason.contains("bpf() syscall is denied") && s.reason.contains("no iptables rules"), "\(s.reason)")
            #expect(s.features["bpf_syscall"] == false)
            let n2 = lab.nodes[1]
            n2.agent?.stop()
            _ = try lab.inNamespace(n2.netns, "iptables", ["-w", "-A", "FORWARD", "-m", "comment", "--comment", "another component's rule", "-j", "ACCEPT"])
            try lab.startAgent(on: n2)
            let s2 = try status(n2)
            #expect(s2.dataplane == "iptables" && s2.reason.contains("the node has 1 iptables rules"), "\(s2.dataplane): \(s2.reason)")
            let a = try lab.addMeshedPod(on: lab.nodes[0], name: "n1-pod1")
            let b = try lab.addMeshedPod(on: lab.nodes[1], name: "n2-pod1")
            let dst = SocketAddress(b.ip4, Lab.httpPort)
            #expect(try lab.request(from: a, to: dst).status == 200)
            #expect(try lab.proxyRecords(lab.nodes[0]).filter { $0.listener == 15001 && $0.originalDestination == dst.description }.count == 1)
            #expect(try lab.probe(b).status == 200)
            #expect(try lab.appRecords(b).last?.client.hasPrefix("169.254.7.127:") == true)
            // Forced ebpf under the same limits: refuses, with the reason.
            let node = lab.nodes[0]
            var args = lab.agentArguments(node, dataplane: "ebpf")
            let stateDir = try #require(args.firstIndex(of: "--state-dir"))
            args[stateDir + 1] = "\(node.directory)/agent-ebpf"
            let r = try Command.capture(wrapper[0], [wrapper[1], try LabBinaries.path("redirect-agent")] + args)
            #expect(r.status != 0)
            #expect(r.stderr.contains("--dataplane ebpf") && r.stderr.contains("bpf() syscall is denied"), "\(r.stderr)")
        }
    }

    @Test("an agent that would mount bpffs where it never reaches the node (HostToContainer) refuses ebpf; auto says why; a shared mount is fine")
    func privateBPFFS() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withLab({ o in o.podsPerNode = 0; o.nodes = 1 }) { lab throws in
            let node = lab.nodes[0]
            let dir = "\(node.directory)/mounts"
            // A private mount namespace, as a container has: `src` stands for the node's directory
            // (shared), `slave` for the container's view of it with HostToContainer propagation.
            let script = "set -e; d=$0; mkdir -p $d/src $d/slave; mount -t tmpfs lab $d/src; mount --make-shared $d/src; "
                + "mount --bind $d/src $d/slave; mount --make-slave $d/slave; exec \"$@\""
            func agent(_ mode: String, pinParent: String) throws -> (executable: String, arguments: [String]) {
                var args = lab.agentArguments(node, dataplane: mode)
                for (flag, value) in [("--pin-root", "\(dir)/\(pinParent)/pins"), ("--state-dir", "\(node.directory)/agent-\(mode)-\(pinParent)"),
                                      ("--metrics-address", "127.0.0.1:0")] {
                    let i = try #require(args.firstIndex(of: flag))
                    args[i + 1] = value
                }
                return ("/usr/bin/unshare", ["-m", "--propagation", "private", "sh", "-c", script, dir, try LabBinaries.path("redirect-agent")] + args)
            }
            // Presence first: on the shared mount the agent mounts bpffs itself and runs ebpf.
            let shared = try agent("ebpf", pinParent: "src")
            let ok = try ManagedProcess(shared.executable, shared.arguments, logPath: "\(node.directory)/agent-shared.log")
            defer { ok.stop() }
            try waitFor("the agent on a shared mount to start", seconds: 10) { ok.log().contains("READY dataplane=ebpf") || !ok.isRunning }
            #expect(ok.log().contains("READY dataplane=ebpf"), "\(ok.log())")
            ok.stop()
            // Below the slave mount: ebpf refuses with the reason, auto falls back and says it.
            let forced = try agent("ebpf", pinParent: "slave")
            let r = try Command.capture(forced.executable, forced.arguments, timeout: 15)
            #expect(r.status != 0)
            #expect(r.stderr.contains("--dataplane ebpf") && r.stderr.contains("refusing to mount bpffs at \(dir)/slave")
                    && r.stderr.contains("Bidirectional"), "\(r.stderr)")
            let auto = try agent("auto", pinParent: "slave")
            let fallback = try ManagedProcess(auto.executable, auto.arguments, logPath: "\(node.directory)/agent-auto.log")
            defer { fallback.stop() }
            try waitFor("the auto agent to start", seconds: 10) { fallback.log().contains("READY") || !fallback.isRunning }
            #expect(fallback.log().contains("READY dataplane=nftables") && fallback.log().contains("refusing to mount bpffs"), "\(fallback.log())")
        }
    }

    @Test("kill -9 under steady traffic, restart, repeat: no failed connection, none skipped capture, same pods", arguments: ["ebpf", "iptables", "nftables"])
    func killNineUnderTraffic(_ dataplane: String) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withAgentLab(dataplane, nodes: 2) { lab throws in
            let a = try lab.addMeshedPod(on: lab.nodes[0], name: "n1-pod1")
            let b = try lab.addMeshedPod(on: lab.nodes[1], name: "n2-pod1")
            let target = "\(b.ip4):\(Lab.echoPort)"
            let load = try ManagedProcess(try LabBinaries.path("lab-app"), [
                "client", "--netns", a.netns.path, "--target", target, "--mode", "short", "--duration", "20",
            ], logPath: "\(lab.directory)/load.json")
            // Each kill waits for connections made since the last restart, and must land while the
            // client still runs: the restarts provably overlap the traffic.
            let captured = { try lab.proxyRecords(lab.nodes[0]).filter { $0.listener == 15001 && $0.originalDestination == target }.count }
            var seen = 0
            for round in 1...3 {
                try waitFor("connections before kill \(round)", seconds: 10) { try captured() > seen }
                #expect(load.isRunning, "kill \(round) falls inside the traffic")
                for node in lab.nodes {
                    node.agent?.kill9()
                    try lab.startAgent(on: node)
                }
                seen = try captured()
            }
            try waitFor("connections after the last restart", seconds: 10) { try captured() > seen }
            #expect(load.isRunning, "traffic outlasted the last restart")
            load.wait()
            let summary = try #require(try JSONSerialization.jsonObject(with: Data(load.log().utf8)) as? [String: Any])
            let ok = summary["ok"] as? Int ?? 0
            #expect(ok > 0 && summary["failed"] as? Int == 0, "\(summary) \(load.log())")
            let proxied = try captured()
            #expect(proxied == ok, "every connection went through the proxy: \(proxied) of \(ok)")
            for node in lab.nodes {
                let s = try status(node)
                #expect(s.pods.count == 1 && s.pods.allSatisfy { $0.drift.isEmpty })
            }
        }
    }

    @Test("malformed CNI input gets the spec's error; the agent and other pods are unaffected")
    func malformedCNI() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withAgentLab("ebpf") { lab throws in
            let node = lab.nodes[0]
            let good = try lab.addMeshedPod(on: node, name: "n1-pod1")
            let conf = "{\"cniVersion\":\"1.0.0\",\"name\":\"lab-pods\",\"type\":\"redirect-cni\",\"agentSocket\":\"\(node.agentControlSocket)\",\"prevResult\":{\"cniVersion\":\"1.0.0\",\"ips\":[{\"address\":\"10.244.1.77/24\"}]}}"
            let env = ["CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/run/netns/\(lab.options.runID)-nope",
                       "CNI_ARGS": "K8S_POD_NAME=ghost;K8S_POD_NAMESPACE=default;K8S_POD_UID=ghost-uid;POD_LABELS=istio.io/dataplane-mode:ambient"]
            var (code, out) = try runPlugin(env, stdin: "{not json")
            #expect(code != 0 && out["code"] as? Int == 6)
            (code, out) = try runPlugin(env.filter { $0.key != "CNI_COMMAND" }, stdin: conf)
            #expect(code != 0 && out["code"] as? Int == 4)
            (code, out) = try runPlugin(env, stdin: conf)
            #expect(code != 0 && out["code"] as? Int == 100 && (out["msg"] as? String ?? "").contains("does not exist"), "\(out)")
            (code, out) = try runPlugin(env, stdin: conf.replacingOccurrences(of: ",\"prevResult\":{\"cniVersion\":\"1.0.0\",\"ips\":[{\"address\":\"10.244.1.77/24\"}]}", with: ""))
            #expect(code != 0 && out["code"] as? Int == 7)
            let down = conf.replacingOccurrences(of: node.agentControlSocket, with: "\(node.directory)/no-agent.sock")
            (code, out) = try runPlugin(env, stdin: down)
            #expect(code != 0 && out["code"] as? Int == 11)
            var del = env
            del["CNI_COMMAND"] = "DEL"
            (code, _) = try runPlugin(del, stdin: down)
            #expect(code == 0, "DEL succeeds when the agent is away")
            (code, out) = try runPlugin(["CNI_COMMAND": "VERSION"], stdin: "{}")
            #expect(code == 0 && (out["supportedVersions"] as? [String])?.contains("1.0.0") == true)
            // Nothing else was touched.
            let s = try status(node)
            #expect(s.pods.map(\.pod) == ["default/n1-pod1"] && s.pods[0].drift.isEmpty)
            #expect(node.agent?.isRunning == true)
            let other = try lab.addMeshedPod(on: node, name: "n1-pod2")
            #expect(try lab.request(from: good, to: SocketAddress(other.ip4, Lab.httpPort)).status == 200)
            #expect(try lab.proxyRecords(node).contains { $0.listener == 15001 })
            // CHECK through the plugin passes for an intact pod.
            let chk = try runPlugin(["CNI_COMMAND": "CHECK", "CNI_CONTAINERID": good.identity.containerID, "CNI_IFNAME": "eth0", "CNI_NETNS": good.netns.path,
                                     "CNI_ARGS": good.identity.cniArgs], stdin: "{\"cniVersion\":\"1.0.0\",\"name\":\"lab-pods\",\"type\":\"redirect-cni\",\"agentSocket\":\"\(node.agentControlSocket)\",\"prevResult\":\(String(decoding: try JSONSerialization.data(withJSONObject: good.cniResult), as: UTF8.self))}")
            #expect(chk.0 == 0, "\(chk.1)")
        }
    }

    @Test("a ZDS peer that sends garbage or disconnects mid-snapshot does not hurt the agent")
    func zdsGarbage() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withAgentLab("ebpf") { lab throws in
            let node = lab.nodes[0]
            let a = try lab.addMeshedPod(on: node, name: "n1-pod1")
            // Garbage instead of ZdsHello.
            let g = try UnixSocket.connect(path: node.agentZDSSocket, type: Int32(5)) // SOCK_SEQPACKET
            try g.writeAll([0xff, 0xff, 0xff, 0x01, 0x02])
            g.close()
            // A proper hello, then gone before acknowledging the snapshot.
            let h = try UnixSocket.connect(path: node.agentZDSSocket, type: Int32(5))
            try h.writeAll([0x08, 0x01]) // ZdsHello{version: V1}
            _ = try? h.read(max: 1024)
            h.close()
            usleep(200_000)
            #expect(node.agent?.isRunning == true)
            #expect(try status(node).proxyConnected, "the real proxy stays connected")
            let b = try lab.addMeshedPod(on: node, name: "n1-pod2")
            #expect(try lab.request(from: a, to: SocketAddress(b.ip4, Lab.httpPort)).status == 200)
            #expect(try lab.proxyRecords(node).contains { $0.listener == 15001 && $0.originalDestination.hasPrefix(b.ip4.description) })
        }
    }

    @Test("switching the dataplane on a node migrates every enrolled pod, both ways")
    func switchDataplane() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withAgentLab("iptables", nodes: 2) { lab throws in
            let a = try lab.addMeshedPod(on: lab.nodes[0], name: "n1-pod1")
            let b = try lab.addMeshedPod(on: lab.nodes[1], name: "n2-pod1")
            let dst = SocketAddress(b.ip4, Lab.httpPort)
            for mode in ["ebpf", "nftables", "iptables"] {
                for node in lab.nodes {
                    node.agent?.stop()
                    try lab.startAgent(on: node, dataplane: mode)
                }
                let s = try status(lab.nodes[0])
                #expect(s.dataplane == mode && s.pods.count == 1 && s.pods[0].drift.isEmpty, "\(s.pods.map(\.drift))")
                let marks = captureMarks(try podKernelState(lab, a))
                expectCaptured(try podKernelState(lab, a), DataplaneMode(rawValue: mode) ?? .auto)
                #expect(marks.contains("ISTIO") == (mode == "iptables"), "iptables rules only in iptables mode: \(marks)")
                #expect(marks.contains("istio-ambient") == (mode == "nftables"), "nftables tables only in nftables mode: \(marks)")
                #expect(marks.contains("tc_pod_") == (mode == "ebpf"), "BPF programs only in ebpf mode: \(marks)")
                let before = try lab.proxyRecords(lab.nodes[0]).count
                #expect(try lab.request(from: a, to: dst).status == 200)
                #expect(try lab.proxyRecords(lab.nodes[0]).count == before + 1, "captured after switching to \(mode)")
                #expect(try lab.probe(b).status == 200)
            }
        }
    }

    @Test("SIGTERM stops the agent and leaves capture working; uninstall then removes everything", arguments: ["ebpf", "iptables", "nftables"])
    func stopAndUninstall(_ dataplane: String) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withAgentLab(dataplane) { lab throws in
            let node = lab.nodes[0]
            let a = try lab.addMeshedPod(on: node, name: "n1-pod1")
            let b = try lab.addPod(on: node, name: "n1-plain")
            expectCaptured(try podKernelState(lab, a), DataplaneMode(rawValue: dataplane) ?? .auto)
            let nodeBefore = try nodeKernelState(lab, node)
            let nodeMark = ["ebpf": "name cg_node_connect4", "iptables": "ISTIO", "nftables": "istio-ambient-nat"][dataplane] ?? "?"
            #expect(nodeBefore.contains(nodeMark), "the node's probe path is visible: \(nodeBefore)")
            #expect(nodeBefore.contains("inet 169.254.7.127/32") == (dataplane == "ebpf"), "ebpf holds the probe IP on the node: \(nodeBefore)")
            // A long grace: the check is that SIGTERM alone ends it cleanly, however slowly.
            node.agent?.stop(grace: 60)
            #expect(node.agent?.exitStatus == 0, "graceful exit")
            #expect(try lab.request(from: a, to: SocketAddress(b.ip4, Lab.httpPort)).status == 200)
            #expect(try lab.proxyRecords(node).filter { $0.listener == 15001 }.count == 1, "capture kept working while the agent was away")
            var args = lab.agentArguments(node, dataplane: dataplane)
            args[0] = "uninstall"
            args.removeLast(2) // --metrics-address
            let out = try Command.run(try LabBinaries.path("redirect-agent"), args)
            #expect(out.contains("1 pod"))
            let state = try podKernelState(lab, a)
            expectClean(state)
            let nodeState = try nodeKernelState(lab, node)
            #expect(!nodeState.contains("ISTIO") && !nodeState.contains("cg_node_") && !nodeState.contains("istio-inpod") && !nodeState.contains("istio-ambient"), "\(nodeState)")
            #expect(!nodeState.contains("169.254.7.127") && !nodeState.contains("fd16:9254:7127"), "the probe IPs left the node: \(nodeState)")
            #expect(!FileManager.default.fileExists(atPath: "\(node.bpfPinRoot)/maps"))
            #expect(!FileManager.default.fileExists(atPath: "\(node.agentDirectory)/state.json"))
            #expect(!FileManager.default.fileExists(atPath: "\(node.agentDirectory)/state.json.journal"))
            let tc = try lab.inNamespace(a.netns, "tc", ["filter", "show", "dev", "eth0", "ingress"])
            #expect(!tc.contains("tc_pod_ingress"))
        }
    }

    @Test("the metrics endpoint counts enrollments and BPF decisions")
    func metrics() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withAgentLab("ebpf") { lab throws in
            let node = lab.nodes[0]
            let a = try lab.addMeshedPod(on: node, name: "n1-pod1")
            let b = try lab.addPod(on: node, name: "n1-plain")
            _ = try lab.request(from: a, to: SocketAddress(b.ip4, Lab.httpPort))
            let r = try lab.get(from: node.netns, to: SocketAddress(IPAddress("127.0.0.1")!, 15029), path: "/metrics", timeout: 3)
            #expect(r.status == 200)
            #expect(r.body.contains("redirect_agent_enrollments_total 1") && r.body.contains("redirect_agent_pods 1"))
            #expect(r.body.contains("decision=\"outbound_captured\"} 1"))
            #expect(r.body.contains("redirect_agent_enrollment_duration_seconds_count 1"), "\(r.body)")
            #expect(r.body.contains("# TYPE redirect_agent_capture_decisions_total counter"))
            // The kernel's counters are mirrored at each scrape: one more connection, one more.
            _ = try lab.request(from: a, to: SocketAddress(b.ip4, Lab.httpPort))
            let again = try lab.get(from: node.netns, to: SocketAddress(IPAddress("127.0.0.1")!, 15029), path: "/metrics", timeout: 3)
            #expect(again.body.contains("redirect_agent_capture_decisions_total{pod=\"default/n1-pod1\",decision=\"outbound_captured\"} 2"), "\(again.body)")
            #expect(try lab.get(from: node.netns, to: SocketAddress(IPAddress("127.0.0.1")!, 15029), path: "/healthz", timeout: 3).status == 200)
        }
    }

    @Test("redirect-agent maps decodes the pinned maps from the kernel: pods by name with addresses, interfaces, settings and counters, the config, probe flows; also with the agent stopped; bpftool prints addresses as bytes")
    func mapsCommand() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withAgentLab("ebpf") { lab throws in
            let node = lab.nodes[0]
            let a = try lab.addMeshedPod(on: node, name: "n1-pod1")
            let b = try lab.addPod(on: node, name: "n1-plain")
            _ = try lab.request(from: a, to: SocketAddress(b.ip4, Lab.httpPort))
            _ = try lab.probe(a)
            func maps(_ args: [String]) throws -> String {
                try Command.run(try LabBinaries.path("redirect-agent"), ["maps", "--pin-root", node.bpfPinRoot, "--control-socket", node.agentControlSocket] + args)
            }
            let report = try JSONDecoder().decode(MapReport.self, from: Data(try maps(["--json"]).utf8))
            let pod = try #require(report.pods.first)
            #expect(report.pods.count == 1, "only the meshed pod: \(report.pods.map(\.addresses))")
            #expect(pod.name == "default/n1-pod1" && Set(pod.addresses) == Set(a.addresses.map(\.description)), "\(pod)")
            #expect(pod.flags.contains("dns_capture") && pod.dnsNetnsCookie != nil)
            #expect(pod.lookupInterfaces.contains("\(a.ip4)%\(pod.podIfindex)"), "\(pod.lookupInterfaces)")
            #expect(pod.counters["outbound_captured", default: 0] >= 1 && pod.counters["probe_pass", default: 0] >= 1, "\(pod.counters)")
            #expect(report.config?.probeIPv4 == "169.254.7.127" && report.config?.dnsPort == 15053 && report.config?.proxyMark == "0x539")
            #expect(report.probeFlows.contains { $0.pod.hasPrefix("\(a.ip4):") && $0.probe.hasPrefix("169.254.7.127:") }, "\(report.probeFlows)")
            // The same as bpftool sees it: one ra_pods entry per address.
            let dump = try Command.run("bpftool", ["map", "dump", "pinned", "\(node.bpfPinRoot)/maps/ra_pods"])
            #expect(dump.components(separatedBy: "\"pod_index\"").count - 1 == pod.addresses.count)
            // bpftool prints the addresses as their bytes (the maps' BTF key types): 10.244.1.2 as [10,244,1,2].
            let entries = try #require(try JSONSerialization.jsonObject(with: Data(dump.utf8)) as? [[String: Any]])
            let ipv4s = entries.compactMap { (($0["key"] as? [String: Any])?["addr"] as? [String: Any])?["ipv4"] as? [Int] }
            #expect(ipv4s.contains(a.ip4.bytes.map(Int.init)), "bpftool shows \(a.ip4) as its bytes: \(ipv4s)")
            let flows = try Command.run("bpftool", ["map", "dump", "pinned", "\(node.bpfPinRoot)/maps/ra_probe_flows"])
            #expect(flows.contains("\"ipv4\": [169,254,7,127"), "the probe flow's probe IP: \(flows)")
            let config = try Command.run("bpftool", ["map", "dump", "pinned", "\(node.bpfPinRoot)/maps/ra_config"])
            #expect(config.contains("\"probe_ipv4\": [169,254,7,127"), "the config's probe IP: \(config)")
            let text = try maps([])
            #expect(text.contains("default/n1-pod1") && text.contains(a.ip4.description) && text.contains("outbound_captured="), "\(text)")
            #expect(!text.contains(b.ip4.description + " "), "the plain pod is not there")
            node.agent?.stop()
            let offline = try JSONDecoder().decode(MapReport.self, from: Data(try maps(["--json"]).utf8))
            #expect(offline.pods.map(\.addresses) == report.pods.map(\.addresses) && offline.pods.first?.name == nil, "read from the kernel alone")
        }
    }

    @Test("redirect-agent monitor streams the kernel's capture decisions, filtered by pod and decision; its lease ends with it")
    func monitorCommand() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withAgentLab("ebpf") { lab throws in
            let node = lab.nodes[0]
            let a = try lab.addMeshedPod(on: node, name: "n1-pod1"), b = try lab.addMeshedPod(on: node, name: "n1-pod2")
            let plain = try lab.addPod(on: node, name: "n1-plain")
            let maps = try MapSync(pinDirectory: "\(node.bpfPinRoot)/maps")
            #expect(try maps.monitorLease() == 0, "nobody listens: no lease")
            let monitor = try ManagedProcess(try LabBinaries.path("redirect-agent"), [
                "monitor", "--pin-root", node.bpfPinRoot, "--control-socket", node.agentControlSocket, "--json",
                "--pod", "default/n1-pod1", "--decision", "outbound_captured", "--count", "2", "--seconds", "30",
            ], logPath: "\(lab.directory)/monitor.log")
            defer { monitor.stop() }
            try waitFor("the monitor listens", seconds: 10) { monitor.log().contains("monitoring") }
            #expect(try maps.monitorLease() > Monotonic.nanoseconds(), "a monitor holds a lease")
            _ = try lab.request(from: b, to: SocketAddress(plain.ip4, Lab.httpPort)) // another pod: filtered out
            for _ in 0..<2 { _ = try lab.request(from: a, to: SocketAddress(plain.ip4, Lab.httpPort)) }
            try waitFor("the monitor has its two events", seconds: 20) { !monitor.isRunning }
            let events = try monitor.log().split(separator: "\n").filter { $0.hasPrefix("{") }.map {
                let d = JSONDecoder()
                d.dateDecodingStrategy = .iso8601
                return try d.decode(CaptureEvent.self, from: Data($0.utf8))
            }
            #expect(events.count == 2, "\(monitor.log())")
            for e in events {
                #expect(e.pod == "default/n1-pod1" && e.decision == "outbound_captured" && e.proxyPort == 15001 && e.hook == "tc-ingress", "\(e)")
                #expect(e.source.hasPrefix("\(a.ip4):") && e.destination == "\(plain.ip4):\(Lab.httpPort)", "\(e)")
            }
            #expect(try maps.monitorLease() == 0, "the monitor ended its lease")
        }
    }

    @Test("tcx attachment through the agent: captured, verified, and its pinned links removed with the pod")
    func tcxThroughAgent() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withAgentLab("ebpf", extra: ["--attach", "tcx"], nodes: 2) { lab throws in
            let node = lab.nodes[0]
            guard try status(node).features["tcx"] == true else { Issue.record("cannot run: this kernel has no tcx (Linux 6.6+)"); return }
            let a = try lab.addMeshedPod(on: node, name: "n1-pod1")
            let b = try lab.addMeshedPod(on: lab.nodes[1], name: "n2-pod1")
            let s = try status(node)
            #expect(s.pods.first?.attachment.hasPrefix("tcx eth0") == true && s.pods.first?.drift.isEmpty == true, "\(s.pods)")
            let dst = SocketAddress(b.ip4, Lab.httpPort)
            #expect(try lab.request(from: a, to: dst).status == 200)
            #expect(try lab.proxyRecords(node).filter { $0.listener == 15001 && $0.originalDestination == dst.description }.count == 1)
            #expect(try lab.inNamespace(a.netns, "tc", ["filter", "show", "dev", "eth0", "ingress"]).isEmpty, "no tc filter: tcx links only")
            #expect(try !FileManager.default.contentsOfDirectory(atPath: "\(node.bpfPinRoot)/links").isEmpty, "the pod's link pins are seen")
            try lab.removePod(a)
            let links = try FileManager.default.contentsOfDirectory(atPath: "\(node.bpfPinRoot)/links")
            #expect(links.isEmpty, "\(links)")
        }
    }
}
