import Dataplane
import Foundation
import Glibc
import MapSync
import NodeLab
import SystemCalls
import Testing

/// Invariant 3's exception (docs/security.md): connections a pod has when it is enrolled keep
/// going until they close, as under Istio's iptables rules, and only those: everything opened
/// afterwards is captured. Each case first shows, with keeping turned off, that enrolment does cut
/// such a connection, so the kept case can fail.
@Suite("Connections from before enrolment", .serialized)
struct KeptConnectionsTests {
    @Test("a pod's open connections (in, out, IPv4 and IPv6) survive its enrolment; new ones are captured", arguments: conformanceModes)
    func keptAcrossEnrolment(_ mode: DataplaneMode) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        for keep in [false, true] {
            try withCaptureLab(mode, config: { _ in
                var c = CaptureConfig()
                c.keepExistingConnections = keep
                return c
            }) { cl throws in
                let pod = cl.meshed[0], peer = try cl.outsider(cl.n2)
                try cl.capture.remove(pod)
                var open = try openConnections(pod, peer)
                defer { for c in open { c.socket.close() } }
                for c in open { #expect(echoes(c.socket), "before enrolment, \(c.name) carries bytes") }
                try cl.capture.enroll(pod)
                for c in open {
                    #expect(echoes(c.socket) == keep, "\(c.name) after enrolment: \(keep ? "kept" : "cut off")")
                }
                // Opened after enrolment: captured, whatever was kept.
                let out = SocketAddress(peer.ip4, Lab.httpPort), inward = SocketAddress(pod.ip4, Lab.httpPort)
                #expect(try cl.lab.request(from: pod, to: out).status == 200)
                #expect(try cl.records(pod.node, listener: 15001, to: out).count == 1, "a new outbound connection is captured")
                #expect(try cl.lab.request(from: peer, to: inward).status == 200)
                #expect(try cl.records(pod.node, listener: 15006, to: inward).count == 1, "a new inbound connection is captured")
                // The attack: a kept socket that drops its connection and connects elsewhere is a
                // new connection, captured like any other (it keeps its cookie).
                if keep, let reused = open.first(where: { $0.name == "outbound IPv4" })?.socket {
                    let before = try cl.records(pod.node, listener: 15001, to: out).count
                    try reused.disconnect()
                    try reused.connect(out)
                    let r = try MiniHTTP.get(reused, host: "peer", path: "/whoami")
                    #expect(r.status == 200)
                    #expect(try cl.records(pod.node, listener: 15001, to: out).count == before + 1, "a kept socket reconnected is captured")
                    open.removeAll { $0.socket === reused }
                    reused.close()
                }
                guard keep, mode == .ebpf else { return }
                let dp = try ebpfDataplane(cl, pod.node), spec = cl.lab.podSpec(pod)
                #expect(try dp.keptConnections(spec).count == open.count)
                #expect(try dp.counters(spec)[.keptPass, default: 0] > 0)
                #expect(try dp.pruneKept(pods: [spec]) == open.count, "open connections stay kept")
                for c in open { c.socket.close() }
                open = []
                try waitFor("the closed connections are forgotten") { try dp.pruneKept(pods: [spec]) == 0 }
                #expect(try !dp.maps.keptLookup(), "with nothing kept the programs stop looking")
            }
        }
    }

    /// An echo connection each way over IPv4, and outbound over IPv6, between `pod` and `peer`.
    func openConnections(_ pod: LabPod, _ peer: LabPod) throws -> [(name: String, socket: Socket)] {
        var out: [(String, Socket)] = []
        out.append(("outbound IPv4", try connected(from: pod, to: SocketAddress(peer.ip4, Lab.echoPort))))
        out.append(("inbound IPv4", try connected(from: peer, to: SocketAddress(pod.ip4, Lab.echoPort))))
        if let p6 = peer.ipv6 { out.append(("outbound IPv6", try connected(from: pod, to: SocketAddress(p6, Lab.echoPort)))) }
        return out
    }

    func connected(from pod: LabPod, to dst: SocketAddress) throws -> Socket {
        try pod.netns.run { try Socket.connected(to: dst, timeout: 2) }
    }

    /// Whether a line sent on `socket` comes back within two seconds.
    func echoes(_ socket: Socket) -> Bool {
        let line = "ping \(UInt32.random(in: 0...UInt32.max))\n"
        guard (try? socket.writeAll(line)) != nil else { return false }
        var got: [UInt8] = []
        while got.count < line.utf8.count {
            guard let chunk = try? socket.read(max: 256), !chunk.isEmpty else { return false }
            got += chunk
        }
        return String(decoding: got, as: UTF8.self) == line
    }
}
