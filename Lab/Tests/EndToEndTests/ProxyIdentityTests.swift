import AgentAPI
import Dataplane
import Foundation
import NodeLab
import SystemCalls
import Testing

/// Invariant 5 with the proxy's identity learned, not configured (`--proxy-cgroup zds-peer`, as
/// the DaemonSet runs it): whatever connects to the ZDS socket is the proxy, by its cgroup.
@Suite("The proxy's identity from its ZDS connection", .serialized)
struct ProxyIdentityTests {
    @Test("before any proxy connects no socket skips capture; the proxy's cgroup is learned at its hello, kept across an agent restart, and follows a proxy that comes back in another cgroup",
          arguments: ["ebpf", "iptables", "nftables"])
    func learned(_ dataplane: String) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withLab({ o in
            o.podsPerNode = 0
            o.agentDataplane = dataplane
            o.startProxies = false
        }) { lab throws in
            let node = lab.nodes[0]
            let pod = try lab.addMeshedPod(on: node, name: "n1-pod1")
            let outsider = try lab.addPod(on: node, name: "n1-plain")
            let dst = SocketAddress(outsider.ip4, Lab.httpPort)
            let identity = { try status(node).proxyIdentity ?? "" }
            let before = try identity()
            #expect(before.contains("no proxy has connected yet"), "\(before)")

            // No proxy yet: a socket with the proxy's mark is captured like any other, and with
            // nobody to take it, the outsider sees nothing.
            #expect(throws: (any Error).self) { try lab.request(from: pod, to: dst, timeout: 1, mark: 0x539) }
            #expect(try lab.appRecords(outsider).isEmpty)

            // The proxy connects: its cgroup is the proxy's; captured traffic flows through it,
            // which its own sockets must be allowed to carry; a forged mark is still captured.
            try lab.startProxy(on: node)
            try lab.waitForProxyOnAgent(node)
            let first = try Cgroup(path: node.proxyCgroupPath)
            #expect(try identity() == "cgroup \(first), learned from the ZDS peer")
            #expect(try lab.request(from: pod, to: dst).status == 200)
            #expect(try lab.request(from: pod, to: dst, mark: 0x539).status == 200)
            let captured = { try lab.proxyRecords(node).filter { $0.listener == 15001 && $0.originalDestination == dst.description }.count }
            #expect(try captured() == 2, "both requests went through the proxy")
            #expect(try lab.appRecords(outsider).count == 2, "the presence the first check looked for")
            // A marked socket in the proxy's cgroup skips capture: the exemption a takeover withdraws.
            #expect(try markedGet(pod, cgroup: node.proxyCgroupPath, dst) == 200)
            #expect(try captured() == 2 && lab.appRecords(outsider).count == 3)

            // An agent restart with no proxy connected starts from the cgroup it learned.
            node.proxy?.stop()
            node.agent?.stop()
            try lab.startAgent(on: node)
            #expect(try identity() == "cgroup \(first), learned from the ZDS peer")
            #expect(try status(node).pods.first?.drift.isEmpty == true)

            // A proxy in another cgroup (a new ztunnel pod) takes over, and only it carries traffic.
            try lab.startProxy(on: node, cgroup: node.daemonCgroupPath)
            try lab.waitForProxyOnAgent(node)
            let second = try Cgroup(path: node.daemonCgroupPath)
            #expect(try identity() == "cgroup \(second), learned from the ZDS peer")
            let seen = try captured()  // the new proxy starts its own records
            #expect(try lab.request(from: pod, to: dst).status == 200)
            #expect(try captured() == seen + 1)
            #expect(try status(node).pods.first?.drift.isEmpty == true)
            // The old proxy's cgroup is nobody's now: its marked socket is captured like an app's.
            #expect(try markedGet(pod, cgroup: node.proxyCgroupPath, dst) == 200)
            #expect(try captured() == seen + 2)

            // A peer that says hello and is gone before its snapshot is through leaves the proxy as it
            // was; one in a group that holds other groups (the node's lab group) is refused outright.
            let log = { try String(contentsOfFile: try #require(node.agent?.logPath), encoding: .utf8) }
            try helloAndLeave(node, cgroup: node.kubeletCgroupPath)
            try waitFor("the undo", seconds: 10) { try log().contains("the previous proxy's cgroup is the proxy's again") }
            try helloAndLeave(node, cgroup: node.cgroupPath)
            try waitFor("the refusal", seconds: 10) { try log().contains("which holds other groups") }
            #expect(try identity() == "cgroup \(second), learned from the ZDS peer")
            #expect(try lab.request(from: pod, to: dst).status == 200)
            #expect(try captured() == seen + 3)
        }
    }

    @Test("a rolling upgrade: a new proxy that connects while the old one still runs takes new traffic, the old one's connections keep flowing until it exits, an agent restart mid-drain keeps them flowing; then its cgroup is nobody's",
          .enabled(if: KernelRelease.atLeast(6, 5), "two proxies listen side by side with SO_REUSEPORT, which bpf_sk_assign takes only from Linux 6.5"),
          arguments: ["ebpf", "iptables", "nftables"])
    func rollingUpgrade(_ dataplane: String) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withLab({ o in
            o.podsPerNode = 0
            o.agentDataplane = dataplane
        }) { lab throws in
            let node = lab.nodes[0]
            let pod = try lab.addMeshedPod(on: node, name: "n1-pod1")
            let outsider = try lab.addPod(on: node, name: "n1-plain")
            let identity = { try status(node).proxyIdentity ?? "" }
            let old = try #require(node.proxy)
            // A long connection through the first proxy: the app's echo session to a peer.
            let conn = try pod.netns.run { try Socket.connected(to: SocketAddress(outsider.ip4, Lab.echoPort), timeout: 3) }
            defer { conn.close() }
            func echo(_ text: String) throws -> String? {
                try conn.writeAll(text + "\n")
                return try conn.readLine()
            }
            #expect(try echo("one") == "one", "the presence: the connection flows through the first proxy")
            #expect(try lab.proxyRecords(node).contains { $0.listener == 15001 && $0.originalDestination == "\(outsider.ip4):\(Lab.echoPort)" })

            // The new proxy connects while the old one runs (it listens beside it: SO_REUSEPORT).
            try lab.startProxy(on: node, cgroup: node.daemonCgroupPath)
            let second = try Cgroup(path: node.daemonCgroupPath), first = try Cgroup(path: node.proxyCgroupPath)
            try waitFor("the new proxy is the proxy", seconds: 15) { try identity().hasPrefix("cgroup \(second)") }
            let during = try identity()
            #expect(during.contains("draining (replaced, still running): \(first)"), "\(during)")
            #expect(try echo("two") == "two", "the old proxy's connection keeps flowing")
            #expect(try lab.request(from: pod, to: SocketAddress(outsider.ip4, Lab.httpPort)).status == 200, "new connections are captured")

            // The agent restarts mid-drain: the old proxy is still draining, its connection still flows.
            node.agent?.kill9()
            try lab.startAgent(on: node)
            let restarted = try identity()
            #expect(restarted.contains("draining (replaced, still running): \(first)"), "\(restarted)")
            #expect(try echo("three") == "three", "the old proxy's connection outlives an agent restart")
            // Every proxy says hello again after a restart, in any order: the replaced one last stays draining.
            try helloAndLeave(node, cgroup: node.proxyCgroupPath)
            #expect(try identity() == restarted, "a hello from the draining proxy does not make it the proxy again")

            // The old proxy exits: its cgroup stops being the proxy's.
            old.stop()
            try waitFor("the drained proxy is retired", seconds: 15) { try !identity().contains("draining") }
            #expect(try identity() == "cgroup \(second), learned from the ZDS peer")
            let before = try lab.proxyRecords(node).filter { $0.listener == 15001 }.count
            #expect(try markedGet(pod, cgroup: node.proxyCgroupPath, SocketAddress(outsider.ip4, Lab.httpPort)) == 200)
            #expect(try lab.proxyRecords(node).filter { $0.listener == 15001 }.count == before + 1, "a marked socket in the old proxy's cgroup is captured again")
        }
    }

    /// An HTTP GET from `pod` to `dst` by a process in `cgroup` whose socket carries the proxy's
    /// mark; its status.
    private func markedGet(_ pod: LabPod, cgroup: String, _ dst: SocketAddress) throws -> Int {
        let (exe, args) = try ManagedProcess.inCgroup(cgroup, try LabBinaries.path("lab-app"), [
            "get", "--netns", pod.netns.path, "--target", dst.description, "--path", "/whoami", "--mark", "\(0x539)",
        ])
        let r = try Command.capture(exe, args)
        guard r.status == 0, let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any],
              let status = json["status"] as? Int else { throw LabError("marked GET from \(cgroup): \(r.stderr)\(r.stdout)") }
        return status
    }

    /// A ZDS client in `cgroup` that sends ZdsHello, reads the first message of its snapshot (or
    /// the end of a refused connection), and disconnects.
    private func helloAndLeave(_ node: LabNode, cgroup: String) throws {
        let script = """
        import socket
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect("\(node.agentZDSSocket)")
        s.send(bytes([0x08, 0x01]))
        s.recv(65536)
        """
        let (exe, args) = try ManagedProcess.inCgroup(cgroup, "/usr/bin/python3", ["-c", script])
        let r = try Command.capture(exe, args)
        #expect(r.status == 0, "\(r.stderr)")
    }
}
