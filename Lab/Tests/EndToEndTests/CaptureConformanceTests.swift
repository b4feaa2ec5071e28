import Dataplane
import MapSync
import Foundation
import NodeLab
import SystemCalls
import Testing

/// The capture conformance suite: one set of behaviours, run against every dataplane.
/// Real pods from the CNI plugins, real rules or programs, the stand-in proxy, real bytes.
@Suite("Capture conformance", .serialized)
struct CaptureConformanceTests {
    @Test("outbound same-node and cross-node goes through 15001, then the peer's 15008; the app sees the real client", arguments: conformanceSetups)
    func outbound(_ setup: CaptureSetup) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(setup) { cl throws in
            let a = cl.meshed[0]
            for target in [cl.meshed[1], cl.meshed[2]] {
                let dst = SocketAddress(target.ip4, Lab.httpPort)
                let r = try cl.lab.request(from: a, to: dst)
                #expect(r.status == 200 && r.body.contains(target.name))
                #expect(clientIP(r.body) == a.ip4.description, "inbound delivery keeps the client's address: \(r.body)")
                let out = try cl.records(a.node, listener: 15001, to: dst)
                #expect(out.count == 1 && out.first?.upstream == "\(target.ip4):15008" && out.first?.error == nil, "\(out)")
                #expect(out.first?.client.hasPrefix("\(a.ip4):") == true)
                let tunnel = try cl.records(target.node, listener: 15008, to: dst)
                #expect(tunnel.count == 1 && tunnel.first?.error == nil, "\(tunnel)")
            }
            // The proxy's own upstream connections were not captured again.
            #expect(try !cl.allRecords.contains { $0.listener == 15001 && $0.originalDestination.hasSuffix(":15008") })
        }
    }

    @Test("a plain client outside the mesh lands on 15006", arguments: conformanceSetups)
    func plainInbound(_ setup: CaptureSetup) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(setup) { cl throws in
            let outsider = try cl.outsider(cl.n2)
            for target in [cl.meshed[0], cl.meshed[3]] {
                let dst = SocketAddress(target.ip4, Lab.httpPort)
                let r = try cl.lab.request(from: outsider, to: dst)
                #expect(r.status == 200 && clientIP(r.body) == outsider.ip4.description)
                let inbound = try cl.records(target.node, listener: 15006, to: dst)
                #expect(inbound.count == 1 && inbound.first?.client.hasPrefix("\(outsider.ip4):") == true, "\(inbound)")
                #expect(try cl.records(outsider.node, listener: 15001).isEmpty, "an outsider's outbound is never captured")
            }
        }
    }

    @Test("loopback traffic inside a pod is untouched", arguments: conformanceSetups)
    func loopback(_ setup: CaptureSetup) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(setup) { cl throws in
            let a = cl.meshed[0]
            for ip in ["127.0.0.1", "::1", a.ip4.description, a.ip6.description] {
                let r = try cl.lab.request(from: a, to: SocketAddress(try #require(IPAddress(ip)), Lab.httpPort))
                #expect(r.status == 200 && clientIP(r.body) == ip, "\(ip): \(r.body)")
            }
            #expect(try cl.allRecords.isEmpty, "no loopback connection reached the proxy: \(String(describing: (try? cl.allRecords) ?? []))")
        }
    }

    @Test("kubelet probes reach the app uncaptured, from the link-local probe IP", arguments: conformanceSetups)
    func probesLinkLocal(_ setup: CaptureSetup) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(setup) { cl throws in
            for pod in cl.meshed {
                for v6 in [false, true] {
                    let r = try cl.lab.probe(pod, ipv6: v6)
                    #expect(r.status == 200 && r.body == "ok\n")
                    let seen = try #require(cl.lab.appRecords(pod).last { $0.path == "/healthz" })
                    let expected = v6 ? "[fd16:9254:7127:1337:ffff:ffff:ffff:ffff]" : "169.254.7.127"
                    #expect(seen.client.hasPrefix(expected + ":"), "\(pod.name) saw \(seen.client)")
                }
            }
            #expect(try cl.allRecords.isEmpty, "probes bypass the proxy: \(String(describing: (try? cl.allRecords) ?? []))")
            // An outsider pod is probed as before: from the node's own address, not SNATed.
            let outsider = try cl.outsider(cl.n1)
            _ = try cl.lab.probe(outsider)
            #expect(try cl.lab.appRecords(outsider).last?.client.hasPrefix("10.244.1.1:") == true)
        }
    }

    @Test("with the node's own IP as probe IP (HOST_PROBE_SNAT_IP), probes still bypass capture", arguments: conformanceSetups)
    func probesHostIP(_ setup: CaptureSetup) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        let hostProbe: (LabNode) -> CaptureConfig = { node in
            var c = CaptureConfig()
            c.probeIPv4 = node.address
            c.probeIPv6 = node.addressV6
            return c
        }
        try withCaptureLab(setup, config: hostProbe) { cl throws in
            for pod in cl.meshed {
                let r = try cl.lab.probe(pod)
                #expect(r.status == 200)
                #expect(try cl.lab.appRecords(pod).last?.client.hasPrefix("\(pod.node.address):") == true)
            }
            #expect(try cl.allRecords.isEmpty)
        }
    }

    @Test("switching the probe IP on a running node takes effect without restarting pods", arguments: conformanceSetups)
    func probeIPLiveSwitch(_ setup: CaptureSetup) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(setup) { cl throws in
            let pod = cl.meshed[0], node = pod.node
            let appPid = pod.app?.pid
            func probeSource() throws -> String {
                #expect(try cl.lab.probe(pod).status == 200)
                let last = try #require(try cl.lab.appRecords(pod).last, "the app recorded no request")
                return String(last.client.split(separator: ":")[0])
            }
            #expect(try probeSource() == "169.254.7.127")
            try cl.capture.setProbeIPs(on: node, v4: node.address, v6: node.addressV6)
            #expect(try probeSource() == node.address.description)
            try cl.capture.setProbeIPs(on: node, v4: IPAddress("169.254.7.127")!, v6: IPAddress("fd16:9254:7127:1337:ffff:ffff:ffff:ffff")!)
            #expect(try probeSource() == "169.254.7.127")
            #expect(pod.app?.pid == appPid && pod.app?.isRunning == true)
            #expect(try cl.allRecords.isEmpty)
            // Capture still works after the switches.
            let dst = SocketAddress(cl.meshed[2].ip4, Lab.httpPort)
            #expect(try cl.lab.request(from: pod, to: dst).status == 200)
            #expect(try cl.records(node, listener: 15001, to: dst).count == 1)
        }
    }

    @Test("a pod that is not enrolled is untouched", arguments: conformanceSetups)
    func notEnrolled(_ setup: CaptureSetup) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(setup) { cl throws in
            let a = try cl.outsider(cl.n1), b = try cl.outsider(cl.n2)
            let r = try cl.lab.request(from: a, to: SocketAddress(b.ip4, Lab.httpPort))
            #expect(r.status == 200 && clientIP(r.body) == a.ip4.description)
            #expect(try cl.allRecords.isEmpty)
            expectCaptured(try captureState(cl.lab, cl.meshed[0]), setup.mode)
            let state = try captureState(cl.lab, a)
            expectClean(state)
        }
    }

    @Test("removing a pod removes all of its state and its traffic is no longer captured", arguments: conformanceSetups)
    func removal(_ setup: CaptureSetup) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(setup) { cl throws in
            let pod = cl.meshed[1], other = cl.meshed[0]
            expectCaptured(try captureState(cl.lab, pod), setup.mode)
            try cl.capture.remove(pod)
            let state = try captureState(cl.lab, pod)
            expectClean(state)
            #expect(try !nodeHasMember(cl, pod.node, pod.ip4) && !nodeHasMember(cl, pod.node, pod.ip6))
            #expect(try nodeHasMember(cl, other.node, other.ip4), "the other pod's entry stays")
            let r = try cl.lab.request(from: pod, to: SocketAddress(cl.meshed[2].ip4, Lab.httpPort))
            #expect(r.status == 200)
            #expect(try cl.records(pod.node, listener: 15001).isEmpty)
            _ = try cl.lab.probe(pod)
            #expect(try cl.lab.appRecords(pod).last?.client.hasPrefix("10.244.1.1:") == true, "no longer SNATed to the probe IP")
            #expect(try cl.capture.dataplane(other.node).verify(cl.lab.podSpec(other)).isEmpty, "the other pod is intact")
        }
    }

    @Test("IPv6: outbound cross-node capture and inbound delivery", arguments: conformanceSetups)
    func ipv6(_ setup: CaptureSetup) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(setup) { cl throws in
            let a = cl.meshed[0], b = cl.meshed[2]
            let dst = SocketAddress(b.ip6, Lab.httpPort)
            let r = try cl.lab.request(from: a, to: dst)
            #expect(r.status == 200 && clientIP(r.body) == a.ip6.description, "\(r.body)")
            #expect(try cl.records(a.node, listener: 15001, to: dst).count == 1)
            #expect(try cl.records(b.node, listener: 15008, to: dst).count == 1)
            let o = try cl.lab.request(from: cl.outsider(cl.n1), to: dst)
            #expect(o.status == 200)
            #expect(try cl.records(b.node, listener: 15006, to: dst).count == 1)
        }
    }

    @Test("rapid reconnects on one 4-tuple all succeed", arguments: conformanceSetups)
    func rapidReconnects(_ setup: CaptureSetup) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(setup) { cl throws in
            let a = cl.meshed[0]
            let port = UInt16.random(in: 20000..<25000)
            for target in [cl.meshed[2], try cl.outsider(cl.n2)] {
                let dst = SocketAddress(target.ip4, Lab.httpPort)
                for i in 0..<8 {
                    let r = try cl.lab.request(from: a, to: dst, timeout: 3, sourcePort: port)
                    #expect(r.status == 200, "attempt \(i) to \(target.name)")
                }
                #expect(try cl.records(a.node, listener: 15001, to: dst).count == 8)
            }
            if let ebpf = cl.capture.dataplane(a.node) as? EBPFDataplane {
                // The proxy closed first, so its mirrored socket sat in TIME_WAIT: the SYNs that
                // met it went through the sk_lookup hand-off, not a silent drop (a drop would only
                // show as a retransmitted SYN). The proxy registers nothing, as a stock ztunnel: the
                // listener the hand-off needs was recorded by the tc program.
                let counters = try ebpf.counters(cl.lab.podSpec(a))
                #expect(counters[.timeWaitHandoff, default: 0] > 0)
                #expect(counters[.dropNoListener, default: 0] == 0)
            }
        }
    }

    @Test("bad input: unknown netns, enrolled twice, removed twice", arguments: conformanceSetups)
    func badInput(_ setup: CaptureSetup) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(setup) { cl throws in
            let dp = cl.capture.dataplane(cl.n1)
            var ghost = cl.lab.podSpec(cl.meshed[0])
            ghost.uid = "ghost-uid"
            ghost.netns = "/run/netns/does-not-exist-\(cl.lab.options.runID)"
            ghost.ips = [IPAddress("10.244.1.250")!]
            #expect(throws: DataplaneError.self) { try dp.enroll(ghost) }
            #expect(try !nodeHasMember(cl, cl.n1, IPAddress("10.244.1.250")!), "nothing partial was left")

            var noIP = cl.lab.podSpec(try cl.outsider(cl.n1))
            noIP.ips = []
            #expect(throws: DataplaneError.self) { try dp.enroll(noIP) }
            expectClean(try captureState(cl.lab, cl.outsider(cl.n1)))

            let pod = cl.meshed[0]
            let before = try captureState(cl.lab, pod)
            expectCaptured(before, setup.mode)
            try dp.enroll(cl.lab.podSpec(pod))
            #expect(try captureState(cl.lab, pod) == before, "enrolling twice changes nothing")
            #expect(try dp.verify(cl.lab.podSpec(pod)).isEmpty)

            try cl.capture.remove(pod)
            try dp.remove(cl.lab.podSpec(pod))
            expectClean(try captureState(cl.lab, pod))
        }
    }

    @Test("drift is found by verify and repaired by enrolling again", arguments: conformanceSetups)
    func repair(_ setup: CaptureSetup) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(setup) { cl throws in
            let pod = cl.meshed[0], dp = cl.capture.dataplane(pod.node)
            try cl.lab.inNamespace(pod.netns, "ip", ["-4", "rule", "del", "fwmark", "0x111/0xfff", "lookup", "100"])
            if setup.mode == .iptables { try cl.lab.inNamespace(pod.netns, "iptables", ["-t", "nat", "-F", "ISTIO_OUTPUT"]) }
            if setup.mode == .nftables { try cl.lab.inNamespace(pod.netns, "nft", ["flush", "chain", "inet", NftablesRules.natTable, "istio-output"]) }
            let drift = try dp.verify(cl.lab.podSpec(pod))
            #expect(!drift.isEmpty)
            try dp.enroll(cl.lab.podSpec(pod))
            #expect(try dp.verify(cl.lab.podSpec(pod)).isEmpty)
            let dst = SocketAddress(cl.meshed[2].ip4, Lab.httpPort)
            let r = try cl.lab.request(from: pod, to: dst)
            #expect(try r.status == 200 && cl.records(pod.node, listener: 15001, to: dst).count == 1)
        }
    }
}
