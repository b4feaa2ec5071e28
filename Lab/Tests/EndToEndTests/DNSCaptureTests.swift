import Dataplane
import Foundation
import Glibc
import MapSync
import MeshProxy
import NodeLab
import SystemCalls
import Testing

/// DNS capture, in every dataplane: a meshed pod's queries to any server on port 53 are answered
/// by the proxy's DNS listener (names of the mesh's zone from the proxy, the rest forwarded to the
/// node's cluster DNS), and the answers carry the server's address the app asked. Real resolver
/// clients (dig, and scripts/dns-query.py for the ways resolvers send) over real sockets.
@Suite("DNS capture", .serialized)
struct DNSCaptureTests {
    static let meshName = "web.mesh.lab"
    static var proxyAnswer4: String { MeshProxy.dnsZoneAddresses[0].description }
    static var proxyAnswer6: String { MeshProxy.dnsZoneAddresses[1].description }
    static var clusterAnswer4: String { Lab.clusterDNSAddresses[0].description }

    @Test("a meshed pod's DNS reaches the proxy over UDP (unconnected, connected, v4-mapped), TCP and IPv6; answers come from the server asked; an outsider's does not",
          arguments: conformanceSetups)
    func captured(_ setup: CaptureSetup) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(setup) { cl throws in
            let a = cl.meshed[0], outsider = try cl.outsider(cl.n1)
            let server = cl.n1.clusterDNS
            // The presence check first: out of the mesh, the cluster DNS answers.
            let direct = try dnsQuery(outsider, server: server, name: Self.meshName)
            #expect(direct["answers"] as? [String] == [Self.clusterAnswer4], "\(direct)")
            for via in ["udp", "udp-connected", "tcp", "mapped"] {
                let r = try dnsQuery(a, server: server, name: Self.meshName, via: via)
                #expect(r["answers"] as? [String] == [Self.proxyAnswer4], "\(via): \(r)")
                let from = via == "mapped" ? "[::ffff:\(server.ip)]:53" : server.description
                #expect(r["from"] as? String == from, "\(via): the answer shows the server asked: \(r)")
                if via == "udp-connected" || via == "tcp" { #expect(r["peer"] as? String == server.description, "\(via): \(r)") }
            }
            let v6 = try dnsQuery(a, server: cl.n1.clusterDNSv6, name: Self.meshName, type: "AAAA")
            #expect(v6["answers"] as? [String] == [Self.proxyAnswer6] && v6["from"] as? String == cl.n1.clusterDNSv6.description, "\(v6)")
            // Any server, on any node: the query never leaves uncaptured.
            let remote = try dnsQuery(a, server: cl.n2.clusterDNS, name: Self.meshName)
            #expect(remote["answers"] as? [String] == [Self.proxyAnswer4], "\(remote)")
            // A name outside the mesh: the proxy forwards it (its own query is not captured again).
            let other = try dnsQuery(a, server: server, name: "www.example.com")
            #expect(other["answers"] as? [String] == [Self.clusterAnswer4], "\(other)")
            let records = try cl.records(a.node, listener: 15053)
            #expect(records.contains { $0.pod == a.identity.uid && $0.upstream == server.description }, "forwarded by the proxy: \(records)")
            #expect(records.filter { $0.pod == a.identity.uid }.count == 7, "one record per query: \(records)")
            // The proxy's mark forged on an app's socket: the lab knows the proxy by its cgroup, so
            // the query is still captured.
            let marked = try dnsQuery(a, server: server, name: Self.meshName, mark: 0x539)
            #expect(marked["answers"] as? [String] == [Self.proxyAnswer4], "\(marked)")
            // A real resolver client.
            #expect(try dig(a, ["@\(server.ip)", Self.meshName, "+short"]) == Self.proxyAnswer4)
            #expect(try dig(a, ["@\(server.ip)", Self.meshName, "+short", "+tcp"]) == Self.proxyAnswer4)
            #expect(try dig(outsider, ["@\(server.ip)", Self.meshName, "+short"]) == Self.clusterAnswer4)
            #expect(try cl.records(outsider.node, listener: 15053).allSatisfy { $0.pod != outsider.identity.uid })
        }
    }

    @Test("a DNS query sent from a raw socket in a meshed pod never reaches a server uncaptured, also when it claims the address of a pod with DNS capture off (ebpf drops and counts it, iptables and nftables redirect it)",
          arguments: conformanceModes)
    func rawQuery(_ mode: DataplaneMode) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(mode) { cl throws in
            let a = cl.meshed[0], outsider = try cl.outsider(cl.n1), server = cl.n1.clusterDNS
            let direct = try dnsQuery(outsider, server: server, name: Self.meshName, via: "raw")
            #expect(direct["answers"] as? [String] == [Self.clusterAnswer4], "the presence: a raw query gets its answer: \(direct)")
            let r = try dnsQuery(a, server: server, name: Self.meshName, via: "raw")
            switch mode {
            case .ebpf:
                #expect(r["error"] != nil, "dropped: \(r)")
                let counters = try ebpfDataplane(cl, a.node).counters(cl.lab.podSpec(a))
                #expect(counters[.dropDNSUncaptured, default: 0] >= 1, "\(counters)")
            default:
                #expect(r["answers"] as? [String] == [Self.proxyAnswer4], "redirected to the proxy: \(r)")
            }
            try expectNotSentAsAnotherPod(cl, mode, from: a, outsider: outsider)
        }
    }

    /// A raw query from `a` under the address of a same-node pod with DNS capture off: the
    /// cluster server's answer never reaches that pod's socket (it would if the query left as
    /// that pod's). The presence: sent from outside the mesh under that address, it does.
    private func expectNotSentAsAnotherPod(_ cl: CaptureLab, _ mode: DataplaneMode, from a: LabPod, outsider: LabPod) throws {
        let b = try #require(cl.meshed.first { $0.node.name == a.node.name && $0.name != a.name })
        var offSpec = cl.lab.podSpec(b)
        offSpec.dnsCapture = false
        try cl.capture.dataplane(b.node).enroll(offSpec)
        let clusterAnswer = Array(Lab.clusterDNSAddresses[0].bytes), server = cl.n1.clusterDNS
        func answeredAsB(from pod: LabPod) throws -> Bool {
            let socket = try b.netns.run { () -> Socket in
                let s = try Socket(udp: AF_INET)
                try s.bind(SocketAddress(b.ip4, 0))
                try s.setTimeout(seconds: 2)
                return s
            }
            defer { socket.close() }
            let sent = try dnsQuery(pod, server: server, name: Self.meshName, via: "raw", claim: try socket.localAddress())
            #expect(sent["sent"] as? Bool == true, "\(sent)")
            guard let answer = try? socket.receive().bytes else { return false }
            return answer.indices.contains { answer[$0...].starts(with: clusterAnswer) }
        }
        #expect(try answeredAsB(from: outsider), "the presence: sent from outside the mesh, the answer reaches b")
        #expect(try !answeredAsB(from: a), "a's query under b's address never reaches the server as it is")
        if mode == .ebpf {
            #expect(try ebpfDataplane(cl, a.node).counters(cl.lab.podSpec(b))[.dropDNSUncaptured, default: 0] >= 1)
        }
    }

    @Test("while the proxy is away, an app that takes the DNS port in a meshed pod never reads the pod's queries (ebpf refuses the bind, iptables and nftables drop what reaches it)",
          arguments: conformanceModes)
    func portHijack(_ mode: DataplaneMode) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(mode) { cl throws in
            let a = cl.meshed[0], outsider = try cl.outsider(cl.n1)
            let port = SocketAddress(IPAddress("127.0.0.1")!, 15053)
            // The presence check: outside the mesh, a socket on that port reads what is sent to it.
            let heard = try outsider.netns.run { () -> Int in
                let s = try Socket(udp: AF_INET)
                try s.bind(port)
                try s.setTimeout(seconds: 2)
                try Socket(udp: AF_INET).send(Array("hello".utf8), to: port)
                return try s.receive().bytes.count
            }
            #expect(heard == 5)
            try cl.lab.removeFromProxy(a) // the proxy's listeners in the pod close
            let hijacker = try a.netns.run { () -> Result<Socket, any Error> in
                Result {
                    let s = try Socket(udp: AF_INET)
                    try s.bind(port)
                    try s.setTimeout(seconds: 2)
                    return s
                }
            }
            let query = try dnsQuery(a, server: cl.n1.clusterDNS, name: Self.meshName)
            #expect(query["answers"] == nil, "no answer while the proxy is away: \(query)")
            switch (mode, hijacker) {
            case (.ebpf, .failure(let e)):
                #expect((e as? SystemError)?.code == EPERM, "\(e)")
                #expect(try ebpfDataplane(cl, a.node).counters(cl.lab.podSpec(a))[.refusedDNSBind, default: 0] == 1)
            case (_, .success(let s)):
                #expect(mode != .ebpf, "only the netfilter modes let the bind happen")
                #expect(throws: (any Error).self, "the query never reaches the app's socket") { try s.receive() }
            default:
                Issue.record("\(mode): \(hijacker)")
            }
        }
    }

    @Test("a socket that held the DNS port before its pod joined the mesh (UDP and a TCP listener) never reads the pod's queries",
          arguments: conformanceModes)
    func portHeldBeforeEnrolment(_ mode: DataplaneMode) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(mode) { cl throws in
            let a = cl.meshed[0], spec = cl.lab.podSpec(a), dataplane = try cl.capture.dataplane(a.node)
            let port = SocketAddress(IPAddress("127.0.0.1")!, 15053)
            try cl.lab.removeFromProxy(a) // the proxy's sockets in the pod close
            try dataplane.remove(spec)
            // Out of the mesh, an app takes the port (the bind hook cannot see it yet).
            let (udp, tcp) = try a.netns.run { () -> (Socket, Socket) in
                let u = try Socket(udp: AF_INET)
                try u.bind(port)
                try u.setTimeout(seconds: 2)
                let t = try Socket.listening(on: port)
                try t.setTimeout(seconds: 2)
                return (u, t)
            }
            defer { udp.close(); tcp.close() }
            // The presence check: the app's sockets get what is sent to them.
            try a.netns.run { try Socket(udp: AF_INET).send(Array("hello".utf8), to: port) }
            #expect(try udp.receive().bytes.count == 5)
            let client = try a.netns.run { try Socket.connected(to: port, timeout: 2) }
            defer { client.close() }
            try tcp.accept().close()
            try dataplane.enroll(spec)
            #expect(try dataplane.verify(spec).isEmpty)
            for via in ["udp", "udp-connected", "tcp"] {
                let query = try dnsQuery(a, server: cl.n1.clusterDNS, name: Self.meshName, via: via)
                #expect(query["answers"] == nil, "\(via): no answer while the proxy is away: \(query)")
            }
            #expect(throws: (any Error).self, "no query reaches the app's UDP socket") { try udp.receive() }
            #expect(throws: (any Error).self, "no query reaches the app's TCP listener") { try tcp.accept().close() }
        }
    }

    @Test("the node's switch and the pod's setting (ambient.istio.io/dns-capture) turn DNS capture off and on, on a running pod",
          arguments: conformanceModes)
    func settings(_ mode: DataplaneMode) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(mode, config: { _ in var c = CaptureConfig(); c.dnsCapture = false; return c }) { cl throws in
            let a = cl.meshed[0], b = cl.meshed[1], server = cl.n1.clusterDNS
            func answer(_ pod: LabPod) throws -> [String]? { try dnsQuery(pod, server: server, name: Self.meshName)["answers"] as? [String] }
            #expect(try answer(a) == [Self.clusterAnswer4], "the node's switch off: not captured")
            var spec = cl.lab.podSpec(a)
            spec.dnsCapture = true
            try cl.capture.dataplane(a.node).enroll(spec)
            #expect(try cl.capture.dataplane(a.node).verify(spec).isEmpty)
            #expect(try answer(a) == [Self.proxyAnswer4], "the pod says true: captured")
            #expect(try answer(b) == [Self.clusterAnswer4], "another pod keeps the node's setting")
            spec.dnsCapture = false
            try cl.capture.dataplane(a.node).enroll(spec)
            #expect(try cl.capture.dataplane(a.node).verify(spec).isEmpty)
            #expect(try answer(a) == [Self.clusterAnswer4], "the pod says false again: not captured")
        }
    }
}

/// Runs scripts/dns-query.py in `pod` and returns the JSON object it printed.
func dnsQuery(_ pod: LabPod, server: SocketAddress, name: String, type: String = "A", via: String = "udp", mark: UInt32 = 0,
              claim: SocketAddress? = nil) throws -> [String: Any] {
    let r = try Command.capture("/usr/bin/nsenter", ["--net=\(pod.netns.path)", "/usr/bin/python3", "\(repoRoot)/scripts/dns-query.py",
                                                     "--server", server.description, "--name", name, "--type", type, "--via", via, "--mark", "\(mark)"]
                                                     + (claim.map { ["--claim", $0.description] } ?? []))
    guard let line = r.stdout.split(separator: "\n").last,
          let json = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
        throw LabError("dns-query \(via): exit \(r.status): \(r.stdout)\(r.stderr)")
    }
    return json
}

/// Runs dig (Debian's bind9-dnsutils) in `pod`; its output, trimmed.
func dig(_ pod: LabPod, _ args: [String]) throws -> String {
    let r = try Command.capture("/usr/bin/nsenter", ["--net=\(pod.netns.path)", "/usr/bin/dig", "+time=2", "+tries=1"] + args)
    return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
}
