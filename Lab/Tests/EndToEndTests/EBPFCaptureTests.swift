import Dataplane
import Foundation
import MapSync
import NodeLab
import SystemCalls
import Testing

/// What only the eBPF dataplane does or guarantees, beyond the shared conformance suite.
@Suite("eBPF dataplane in the lab", .serialized)
struct EBPFCaptureTests {
    @Test("no iptables rule of ours exists in the node or in any pod")
    func noIptables() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(.ebpf) { cl throws in
            let dst = SocketAddress(cl.meshed[2].ip4, Lab.httpPort)
            #expect(try cl.lab.request(from: cl.meshed[0], to: dst).status == 200)
            // The same dumps see iptables rules where they exist (the conformance suite proves it
            // in iptables mode); tool failures appear in them as text, never as an empty string.
            for pod in cl.lab.pods {
                let state = try podKernelState(cl.lab, pod)
                #expect(!state.contains("ISTIO") && !state.contains("-j REDIRECT") && !state.contains("-j SNAT"), "\(pod.name): \(state)")
                #expect(!state.split(separator: "\n").contains { $0.hasPrefix("exit ") }, "every dump tool answered: \(state)")
            }
            for node in cl.lab.nodes {
                let state = try nodeKernelState(cl.lab, node)
                #expect(state.contains("name cg_node_connect4") && state.contains("name sockops_node"), "the node's programs are visible: \(state)")
                #expect(state.contains("inet 169.254.7.127/32") && state.contains("fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128"), "the probe IPs are the node's: \(state)")
                #expect(!state.contains("ISTIO") && !state.contains("-j SNAT") && !state.contains("istio"), "\(node.name): \(state)")
                #expect(!state.split(separator: "\n").contains { $0.hasPrefix("exit ") }, "every dump tool answered: \(state)")
            }
        }
    }

    @Test("bpftool dumps show the in-mesh pods, the probe IPs, ports and marks as named fields")
    func bpftoolDump() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(.ebpf) { cl throws in
            let maps = "\(cl.n1.bpfPinRoot)/maps"
            let config = try Command.run("bpftool", ["map", "dump", "pinned", "\(maps)/ra_config"])
            for field in ["probe_ipv4", "probe_ipv6", "outbound_port", "inbound_port", "tunnel_port", "proxy_mark", "capture_mark"] {
                #expect(config.contains("\"\(field)\""), "ra_config shows \(field)")
            }
            // Addresses as their bytes (the map's BTF value type), not as a number.
            #expect(config.contains("\"probe_ipv4\": [169,254,7,127"), "\(config)")
            #expect(config.contains("\"outbound_port\": 15001") && config.contains("\"proxy_mark\": 1337"))
            let pods = try Command.run("bpftool", ["map", "dump", "pinned", "\(maps)/ra_pods"])
            #expect(pods.contains("\"pod_index\"") && pods.contains("\"host_ifindex\""))
            let entries = pods.components(separatedBy: "\"pod_index\"").count - 1
            #expect(entries == 4, "two pods on n1, one entry per address: \(entries)")
            let progs = try FileManager.default.contentsOfDirectory(atPath: "\(cl.n1.bpfPinRoot)/progs")
            #expect(Set(progs) == Set(EBPFDataplane.availableProgramNames))
        }
    }

    @Test("a connection from another pod that spoofs the probe IP is captured, not let through")
    func spoofedProbeIsCaptured() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(.ebpf) { cl throws in
            let attacker = try cl.outsider(cl.n1), victim = cl.meshed[0]
            // Let the attacker receive replies to the probe IP, so a handshake can complete.
            let restoreRouting = try routeProbeReplies(cl.lab, on: cl.n1, to: attacker, probe: try #require(IPAddress("169.254.7.127")))
            let socket = try attacker.netns.run { try Socket(tcp: AF_INET) }
            try socket.setTransparent(ipv6: false)
            try socket.bind(SocketAddress(IPAddress("169.254.7.127")!, 0))
            try socket.setTimeout(seconds: 3)
            try socket.connect(SocketAddress(victim.ip4, Lab.httpPort))
            let r = try MiniHTTP.get(socket, host: "victim", path: "/whoami")
            #expect(r.status == 200)
            let captured = try cl.records(victim.node, listener: 15006, to: SocketAddress(victim.ip4, Lab.httpPort))
            #expect(captured.count == 1 && captured.first?.client.hasPrefix("169.254.7.127:") == true, "\(captured)")
            let counters = try (try ebpfDataplane(cl, victim.node)).counters(cl.lab.podSpec(victim))
            #expect(counters[.spoofedProbe, default: 0] >= 1 && counters[.inboundCaptured, default: 0] >= 1)
            try restoreRouting()
            // A genuine probe still passes.
            #expect(try cl.lab.probe(victim).status == 200)
            #expect(try (try ebpfDataplane(cl, victim.node)).counters(cl.lab.podSpec(victim))[.probePass, default: 0] >= 1)
        }
    }

    @Test("a host process that binds the probe IP (the node holds it) is captured, even on the tuple of a probe that just closed")
    func hostProcessBindsProbeIP() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(.ebpf) { cl throws in
            let victim = cl.meshed[0], node = cl.n1
            let dst = SocketAddress(victim.ip4, Lab.httpPort), probeIP = try #require(IPAddress("169.254.7.127"))
            // The presence: the kubelet's probe passes uncaptured from the probe IP.
            #expect(try cl.lab.probe(victim).status == 200)
            let probed = try #require(try cl.lab.appRecords(victim).last { $0.path == "/healthz" })
            let probePort = try #require(SocketAddress(parsing: probed.client)?.port)
            #expect(try cl.records(node, listener: 15006, to: dst).isEmpty)
            // This test's process is in neither the kubelet's cgroup nor a pod: a node daemon. The
            // probe IP is a local address of the node, so it needs no privilege to bind it; the
            // node's TIME_WAIT reuse is allowed so the kubelet's old tuple can be taken at once.
            _ = try cl.lab.inNamespace(node.netns, "sysctl", ["-w", "net.ipv4.tcp_tw_reuse=1"])
            for port in [UInt16(0), probePort] {
                let r = try node.netns.run { () -> MiniHTTP.Response in
                    let socket = try Socket(tcp: AF_INET)
                    defer { socket.close() }
                    try socket.setReuseAddress()
                    try socket.bind(SocketAddress(probeIP, port))
                    try socket.setTimeout(seconds: 3)
                    try socket.connect(dst)
                    return try MiniHTTP.get(socket, host: "victim", path: "/whoami")
                }
                #expect(r.status == 200 && clientIP(r.body) == "169.254.7.127", "\(r.body)")
            }
            let captured = try cl.records(node, listener: 15006, to: dst)
            #expect(captured.count == 2, "both connections went through the proxy: \(captured)")
            #expect(captured.contains { $0.client == "169.254.7.127:\(probePort)" }, "the probe's old tuple too: \(captured)")
            let counters = try (try ebpfDataplane(cl, node)).counters(cl.lab.podSpec(victim))
            #expect(counters[.spoofedProbe, default: 0] == 2 && counters[.probePass, default: 0] == 1, "\(counters)")
        }
    }

    @Test("per-pod counters come from the kernel and follow the traffic")
    func counters() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(.ebpf) { cl throws in
            let a = cl.meshed[0], b = cl.meshed[2]
            for _ in 0..<3 { _ = try cl.lab.request(from: a, to: SocketAddress(b.ip4, Lab.httpPort)) }
            _ = try cl.lab.probe(b)
            let dpA = try ebpfDataplane(cl, a.node), dpB = try ebpfDataplane(cl, b.node)
            let ca = try dpA.counters(cl.lab.podSpec(a)), cb = try dpB.counters(cl.lab.podSpec(b))
            #expect(ca[.outboundCaptured] == 3, "\(ca)")
            #expect(cb[.hbonePass] == 3 && cb[.probePass] == 1, "\(cb)")
            #expect(try dpB.counters(cl.lab.podSpec(b))[.probeSNAT] == 1)
        }
    }

    @Test("a restarted dataplane reuses the pinned programs and maps: nothing detaches, live connections keep flowing",
          arguments: conformanceModes)
    func restartKeepsCapture(_ mode: DataplaneMode) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(mode) { cl throws in
            let a = cl.meshed[0], b = cl.meshed[2]
            let conn = try a.netns.run { try Socket(tcp: AF_INET) }
            try conn.setTimeout(seconds: 3)
            try conn.connect(SocketAddress(b.ip4, Lab.echoPort))
            func roundTrip(_ text: String) throws -> String {
                try conn.writeAll(text)
                return String(decoding: try conn.read(max: 100), as: UTF8.self)
            }
            #expect(try roundTrip("before") == "before")
            try cl.capture.restartDataplane(a.node)
            try cl.capture.restartDataplane(b.node)
            #expect(try roundTrip("after") == "after", "the connection survived the restart")
            for pod in cl.meshed {
                #expect(try cl.capture.dataplane(pod.node).verify(cl.lab.podSpec(pod)).isEmpty, "\(pod.name) intact after restart")
            }
            let dst = SocketAddress(b.ip4, Lab.httpPort)
            #expect(try cl.lab.request(from: a, to: dst).status == 200)
            #expect(try cl.records(a.node, listener: 15001, to: dst).count == 1, "new connections are still captured")
        }
    }
}
