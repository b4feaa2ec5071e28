import Dataplane
import Foundation
import Glibc
import NodeLab
import Synchronization
import SystemCalls
import Testing

/// Istio's per-pod capture annotations, in every dataplane.
@Suite("Per-pod capture annotations", .serialized)
struct PodAnnotationTests {
    @Test("ambient.istio.io/bypass-inbound-capture: inbound reaches the app directly, outbound is still captured; taken back, inbound is captured again",
          arguments: conformanceModes)
    func bypassInbound(_ mode: DataplaneMode) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(mode) { cl throws in
            let pod = cl.meshed[0], peer = try cl.outsider(cl.n2)
            let inward = SocketAddress(pod.ip4, Lab.httpPort), out = SocketAddress(peer.ip4, Lab.httpPort)
            func inboundCaptured() throws -> Bool {
                let before = try cl.records(pod.node, listener: 15006, to: inward).count
                let r = try cl.lab.request(from: peer, to: inward)
                #expect(r.status == 200 && clientIP(r.body) == peer.ip4.description)
                return try cl.records(pod.node, listener: 15006, to: inward).count > before
            }
            #expect(try inboundCaptured(), "the presence: enrolled, inbound is captured")
            var spec = cl.lab.podSpec(pod)
            spec.bypassInboundCapture = true
            try cl.capture.dataplane(pod.node).enroll(spec)
            #expect(try !inboundCaptured(), "bypassed: the app gets it directly")
            #expect(try cl.lab.probe(pod).status == 200, "probes still work")
            // Meshed peers still send HBONE to 15008; the proxy's connection to the app carries
            // the client's address, so the app's answers must go back to the proxy, not out.
            for client in [cl.meshed[1], cl.meshed[2]] {
                let r = try cl.lab.request(from: client, to: inward)
                #expect(r.status == 200 && clientIP(r.body) == client.ip4.description, "\(client.name) over HBONE: \(r.body)")
                #expect(try cl.records(pod.node, listener: 15008, to: inward).contains { $0.client.hasPrefix("\(client.ip4):") && $0.error == nil })
            }
            #expect(try cl.lab.request(from: pod, to: out).status == 200)
            #expect(try cl.records(pod.node, listener: 15001, to: out).count == 1, "outbound is still captured")
            // The attack: a connection the pod accepted (so its answers leave uncaptured) is dropped
            // and its socket connects elsewhere: that is the pod's own outbound, and captured.
            let listener = try pod.netns.run { try Socket.listening(on: SocketAddress(IPAddress("0.0.0.0")!, 9099)) }
            defer { listener.close() }
            let client = try peer.netns.run { try Socket.connected(to: SocketAddress(pod.ip4, 9099), timeout: 2) }
            defer { client.close() }
            let accepted = try listener.accept()
            defer { accepted.close() }
            try accepted.setTimeout(seconds: 3)
            try client.writeAll("hi\n")
            #expect(try accepted.readLine() == "hi")
            try accepted.writeAll("ho\n")
            #expect(try client.readLine() == "ho", "the presence: an accepted connection's answers leave")
            let before = try cl.records(pod.node, listener: 15001, to: out).count
            try accepted.disconnect()
            try accepted.connect(out)
            #expect(try MiniHTTP.get(accepted, host: "peer", path: "/whoami").status == 200)
            #expect(try cl.records(pod.node, listener: 15001, to: out).count == before + 1, "an accepted socket reconnected is captured")

            spec.bypassInboundCapture = false
            try cl.capture.dataplane(pod.node).enroll(spec)
            #expect(try inboundCaptured(), "taken back: captured again")
        }
    }

    @Test("a simultaneous open between an app in a pod that bypasses inbound capture and a peer opens no uncaptured connection",
          arguments: conformanceModes)
    func simultaneousOpen(_ mode: DataplaneMode) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(mode) { cl throws in
            let pod = cl.meshed[0], peer = try cl.outsider(pod.node), dp = cl.capture.dataplane(pod.node)
            var spec = cl.lab.podSpec(pod)
            // The peer drops lone SYNs to its ports, so the pod's own SYN leaves its socket waiting in
            // SYN_SENT (not reset) until the peer's SYN crosses it: a simultaneous open.
            _ = try cl.lab.inNamespace(peer.netns, "iptables", ["-w", "-A", "INPUT", "-p", "tcp", "--dport", "9200:9299", "--tcp-flags", "SYN,ACK", "SYN", "-j", "DROP"])
            // The presence: out of the mesh, both ends connect to each other and bytes flow.
            try dp.remove(spec)
            let open = try crossedConnect(pod, peer, podPort: 9101, peerPort: 9201)
            #expect(open.podPending, "the pod's connect() was still waiting when the peer's SYN crossed it")
            #expect(open.podConnected && open.peerConnected && open.bytes == "from the pod", "the presence: a simultaneous open works here: \(open)")
            // The attack: the pod bypasses inbound capture (the peer's SYN reaches its stack) and its
            // own SYN finds no proxy to answer it (the proxy is down), which is the moment a
            // simultaneous open needs.
            spec.bypassInboundCapture = true
            try dp.enroll(spec)
            pod.node.proxy?.stop()
            let attack = try crossedConnect(pod, peer, podPort: 9102, peerPort: 9202)
            // ebpf: the app's SYN, captured, meets no proxy and is dropped, so the crossing happens;
            // iptables: the REDIRECT to the absent proxy resets it at once, so it cannot.
            #expect(attack.podPending == (mode == .ebpf), "\(attack)")
            #expect(!attack.peerConnected && attack.bytes == nil, "no connection to the peer outside capture: \(attack)")
            #expect(!attack.podConnected, "the app's connect() never completed uncaptured: \(attack)")
        }
    }

    /// The pod and the peer connect to each other at once from fixed ports (the pod first); whether
    /// each end connected, and what the peer read from the pod.
    func crossedConnect(_ pod: LabPod, _ peer: LabPod, podPort: UInt16, peerPort: UInt16)
        throws -> (podPending: Bool, podConnected: Bool, peerConnected: Bool, bytes: String?) {
        let podEnd = SocketAddress(pod.ip4, podPort), peerEnd = SocketAddress(peer.ip4, peerPort)
        let podSocket = try pod.netns.run { try Socket(tcp: AF_INET) }, peerSocket = try peer.netns.run { try Socket(tcp: AF_INET) }
        defer { podSocket.close(); peerSocket.close() }
        for (s, end) in [(podSocket, podEnd), (peerSocket, peerEnd)] {
            try s.setReuseAddress()
            try s.bind(end)
            try s.setTimeout(seconds: 4)
        }
        let podConnected = Mutex<Bool?>(nil)
        let podSide = Thread {
            let ok = (try? podSocket.connect(peerEnd)) != nil // not under the lock: it waits
            podConnected.withLock { $0 = ok }
        }
        podSide.start()
        usleep(300_000) // the pod's SYN is out (dropped by the peer, or by capture)
        let podPending = podConnected.withLock { $0 } == nil
        let peerConnected = (try? peerSocket.connect(podEnd)) != nil
        while podConnected.withLock({ $0 }) == nil { usleep(20_000) }
        let pod = podConnected.withLock { $0 } ?? false
        var bytes: String?
        if pod {
            try? podSocket.writeAll("from the pod\n")
            bytes = peerConnected ? try? peerSocket.readLine() : nil
        }
        return (podPending, pod, peerConnected, bytes)
    }
}
