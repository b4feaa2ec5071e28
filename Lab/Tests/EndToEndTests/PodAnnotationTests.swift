import Dataplane
import Foundation
import Glibc
import NodeLab
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
}
