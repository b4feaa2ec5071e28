import BPFLoader
import CShim
import Foundation
import MapSync
import SystemCalls
import Testing

/// The compiled object: built by `make bpf` before the tests.
func bpfObjectPath() -> String {
    if let p = ProcessInfo.processInfo.environment["REDIRECT_BPF_OBJECT"], !p.isEmpty { return p }
    return URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("bpf/redirect.bpf.o").path
}

/// Why BPF tests cannot run here, or nil.
func bpfUnavailableReason() -> String? {
    if getuid() != 0 { return "needs root (CAP_BPF, CAP_NET_ADMIN)" }
    if !FileManager.default.fileExists(atPath: bpfObjectPath()) { return "\(bpfObjectPath()) is missing: run `make bpf`" }
    return nil
}

/// A loaded copy of the programs with its maps in a private bpffs that is unmounted afterwards.
final class LoadedPrograms: Sendable {
    let dir: String
    let object: BPFObject
    let sync: MapSync

    init() throws {
        dir = NSTemporaryDirectory() + "ra-bpftest-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try BPFFS.ensureMounted(dir)
        object = try BPFObject(path: bpfObjectPath(), mapPinDirectory: "\(dir)/maps")
        sync = try MapSync(object: object)
        try sync.write(KernelConfig(probeIPv4: IPAddress("169.254.7.127")!, probeIPv6: IPAddress("fd16:9254:7127:1337:ffff:ffff:ffff:ffff")!,
                                    outboundPort: 15001, inboundPort: 15006, tunnelPort: 15008,
                                    proxyMark: 0x539, markMask: 0xfff, captureMark: 0x111))
        for (i, ip) in ["10.244.1.2", "fd00:10:244:1::2"].enumerated() {
            try sync.upsert(PodEntry(ips: [IPAddress(ip)!], index: UInt32(7 + i), podIfindex: 2, hostIfindex: 0, flags: 0))
        }
    }

    func close() {
        BPFFS.unmount(dir)
        try? FileManager.default.removeItem(atPath: dir)
    }

    func run(_ prog: String, _ packet: Packet, mark: UInt32 = 0) throws -> TestRun.Result {
        try TestRun.run(try object.program(prog), packet: packet.bytes, mark: mark)
    }

    func count(_ pod: UInt32, _ d: Decision) throws -> UInt64 { try sync.counters(podIndex: pod)[d] ?? 0 }
}

/// The probe-SNAT flow key the node program writes, as the pod sees the flow.
func flowKey(pod: String, probe: String, podPort: UInt16 = 8080, probePort: UInt16 = 41000) -> ra_flow_key {
    var key = ra_flow_key()
    key.family = pod.contains(":") ? 10 : 2
    key.pod = MapSync.addr(IPAddress(pod)!)
    key.probe = MapSync.addr(IPAddress(probe)!)
    key.pod_port = podPort.bigEndian
    key.probe_port = probePort.bigEndian
    return key
}

let TC_ACT_OK: UInt32 = 0, TC_ACT_SHOT: UInt32 = 2, TC_ACT_REDIRECT: UInt32 = 7

func withPrograms(_ body: (LoadedPrograms) throws -> Void) throws {
    let p = try LoadedPrograms()
    defer { p.close() }
    try body(p)
}

@Suite("BPF programs on crafted packets (BPF_PROG_TEST_RUN)", .serialized)
struct ProgramTests {
    @Test("egress: an app SYN is turned back into ingress with the capture mark and our own MAC", arguments: ["10.244.1.2:40000|10.244.2.2:8080", "[fd00:10:244:1::2]:40000|[fd00:10:244:2::2]:8080"])
    func egressCaptures(_ flow: String) throws {
        if let why = bpfUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        let parts = flow.split(separator: "|").map(String.init)
        try withPrograms { p throws in
            let r = try p.run("tc_pod_egress", Packet(parts[0], parts[1]))
            #expect(r.verdict == TC_ACT_REDIRECT)
            #expect(r.mark & 0xfff == 0x111)
            let out = Parsed(bytes: r.packet)
            #expect(out.dstMAC == out.srcMAC && out.srcMAC == [0x02, 0, 0, 0, 0, 0x01])
        }
    }

    @Test("egress: the proxy's own traffic (mark 0x539) passes and is counted")
    func egressProxyPass() throws {
        if let why = bpfUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withPrograms { p throws in
            let r = try p.run("tc_pod_egress", Packet("10.244.1.2:40000", "10.244.2.2:15008"), mark: 0x539)
            #expect(r.verdict == TC_ACT_OK && r.mark == 0x539)
            #expect(try p.count(7, .proxyPass) == 1)
        }
    }

    @Test("egress: replies to a probe the node SNATed, and UDP, pass untouched")
    func egressPasses() throws {
        if let why = bpfUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withPrograms { p throws in
            let probeReply = Packet("10.244.1.2:8080", "169.254.7.127:41000", flags: 0x12)
            // Without the node's SNAT record a packet to the probe IP is captured like any other.
            #expect(try p.run("tc_pod_egress", probeReply).verdict == TC_ACT_REDIRECT)
            for (pod, probe) in [("10.244.1.2", "169.254.7.127"), ("fd00:10:244:1::2", "fd16:9254:7127:1337:ffff:ffff:ffff:ffff")] {
                let key = flowKey(pod: pod, probe: probe)
                try p.sync.probeFlows.update(key, ra_flow_value(original_source: MapSync.addr(IPAddress(pod)!), closed_ns: 0))
            }
            let r = try p.run("tc_pod_egress", probeReply)
            #expect(r.verdict == TC_ACT_OK && r.packet == probeReply.bytes)
            var udp = Packet("10.244.1.2:5000", "10.244.2.2:53")
            udp.proto = 17
            #expect(try p.run("tc_pod_egress", udp).verdict == TC_ACT_OK)
            let r6 = try p.run("tc_pod_egress", Packet("[fd00:10:244:1::2]:8080", "[fd16:9254:7127:1337:ffff:ffff:ffff:ffff]:41000", flags: 0x12))
            #expect(r6.verdict == TC_ACT_OK)
        }
    }

    @Test("egress with DNS capture: a datagram to port 53 not from the proxy is dropped and counted, also behind IPv6 extension headers or with its header cut off; the proxy's and other ports pass")
    func egressDNS() throws {
        if let why = bpfUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withPrograms { p throws in
            func udp(_ src: String, _ dst: String, _ edit: (inout Packet) -> Void = { _ in }) -> Packet {
                var packet = Packet(src, dst)
                packet.proto = 17
                edit(&packet)
                return packet
            }
            let v4 = udp("10.244.1.2:5000", "10.96.0.10:53"), v6 = udp("[fd00:10:244:1::2]:5000", "[fd00:10:96::a]:53")
            #expect(try p.run("tc_pod_egress", v4).verdict == TC_ACT_OK, "the presence: from a pod without DNS capture it passes")
            // A source no pod has (a raw socket can claim any): it cannot be attributed, so it is dropped.
            #expect(try p.run("tc_pod_egress", udp("10.244.1.99:5000", "10.96.0.10:53")).verdict == TC_ACT_SHOT)
            #expect(try p.count(0, .dropDNSUncaptured) == 1)
            let dns = UInt32(RA_POD_DNS_CAPTURE.rawValue)
            for (i, ip) in ["10.244.1.2", "fd00:10:244:1::2"].enumerated() {
                try p.sync.upsert(PodEntry(ips: [IPAddress(ip)!], index: UInt32(7 + i), podIfindex: 2, hostIfindex: 0, flags: dns))
            }
            #expect(try p.run("tc_pod_egress", v4).verdict == TC_ACT_SHOT)
            #expect(try p.run("tc_pod_egress", v6).verdict == TC_ACT_SHOT)
            #expect(try p.run("tc_pod_egress", udp("[fd00:10:244:1::2]:5000", "[fd00:10:96::a]:53") { $0.extHeaders = [0, 60, 60] }).verdict == TC_ACT_SHOT)
            // The UDP header cut off after two bytes: its port cannot be read, so it may be a query.
            #expect(try p.run("tc_pod_egress", udp("[fd00:10:244:1::2]:5000", "[fd00:10:96::a]:53") { $0.truncate = 14 + 40 + 2 }).verdict == TC_ACT_SHOT)
            #expect(try p.count(7, .dropDNSUncaptured) == 1 && p.count(8, .dropDNSUncaptured) == 3)
            #expect(try p.run("tc_pod_egress", v4, mark: 0x539).verdict == TC_ACT_OK, "the proxy's own query")
            // With the proxy known by its cgroup, the mark alone (a test packet has no socket, so no cgroup) is not enough.
            var known = try #require(try p.sync.readConfig())
            known.proxyCgroup = 4242
            try p.sync.write(known)
            #expect(try p.run("tc_pod_egress", v4, mark: 0x539).verdict == TC_ACT_SHOT, "a forged mark")
            #expect(try p.run("tc_pod_egress", udp("10.244.1.2:5000", "10.96.0.10:5353")).verdict == TC_ACT_OK, "another port")
            // A later fragment carries no UDP header (and is useless without the first, which is checked).
            #expect(try p.run("tc_pod_egress", udp("10.244.1.2:5000", "10.96.0.10:53") { $0.fragment = true; $0.fragmentOffset = 185 }).verdict == TC_ACT_OK)
            #expect(try p.run("tc_pod_egress", udp("10.244.1.2:5000", "10.96.0.10:53") { $0.fragment = true }).verdict == TC_ACT_SHOT, "a first fragment is checked")
        }
    }

    @Test("monitor: no event while no lease is held; with one, each counted decision is an event with its pod, flow and hook")
    func monitorEvents() throws {
        if let why = bpfUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withPrograms { p throws in
            let ring = try RingBuffer(mapFD: p.sync.events.fd)
            let syn = Packet("10.244.1.2:40000", "10.244.2.2:15008")
            #expect(try p.run("tc_pod_egress", syn, mark: 0x539).verdict == TC_ACT_OK)
            #expect(try ring.poll(timeoutMilliseconds: 0).isEmpty, "no lease: nothing written")
            #expect(try p.count(7, .proxyPass) == 1, "the presence: the decision was counted")
            try p.sync.setMonitorLease(until: Monotonic.nanoseconds() + 10_000_000_000)
            #expect(try p.run("tc_pod_egress", syn, mark: 0x539).verdict == TC_ACT_OK)
            #expect(try p.run("tc_pod_egress", Packet("[fd00:10:244:1::2]:40000", "[fd00:10:244:2::2]:8080"), mark: 0).verdict == TC_ACT_REDIRECT)
            let records = try ring.poll(timeoutMilliseconds: 100)
            #expect(records.count == 1, "one counted decision, one event (a capture on egress is counted where it is assigned)")
            let record = try #require(records.first)
            let e = try #require(CaptureEvent(record: record, monotonicNow: Monotonic.nanoseconds(), wallNow: Date(), config: nil))
            #expect(e.podIndex == 7 && e.decision == "proxy_pass" && e.hook == "tc-egress" && e.proto == "tcp")
            #expect(e.source == "10.244.1.2:40000" && e.destination == "10.244.2.2:15008", "\(e)")
            #expect(abs(e.time.timeIntervalSinceNow) < 5)
            try p.sync.setMonitorLease(until: Monotonic.nanoseconds() - 1)
            _ = try p.run("tc_pod_egress", syn, mark: 0x539)
            #expect(try ring.poll(timeoutMilliseconds: 0).isEmpty, "an expired lease writes nothing")
        }
    }

    @Test("egress and ingress: fragmented TCP is dropped, never classified blind")
    func fragments() throws {
        if let why = bpfUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withPrograms { p throws in
            var out = Packet("10.244.1.2:40000", "10.244.2.2:8080")
            out.fragment = true
            #expect(try p.run("tc_pod_egress", out).verdict == TC_ACT_SHOT)
            #expect(try p.count(7, .dropFragment) == 1)
            var into = Packet("10.244.2.2:40000", "10.244.1.2:8080")
            into.fragment = true
            #expect(try p.run("tc_pod_ingress", into).verdict == TC_ACT_SHOT)
            #expect(try p.count(7, .dropFragment) == 2, "the ingress fragment is counted too")
            var into6 = Packet("[fd00:10:244:2::2]:40000", "[fd00:10:244:1::2]:8080")
            into6.extHeaders = [44]
            #expect(try p.run("tc_pod_ingress", into6).verdict == TC_ACT_SHOT)
            #expect(try p.count(8, .dropFragment) == 1)
        }
    }

    @Test("ingress: 15008 reaches only the proxy's own listener, never an app that bound 15008",
          arguments: ["10.244.2.2:40000|10.244.1.2:15008", "[fd00:10:244:2::2]:40000|[fd00:10:244:1::2]:15008"])
    func ingressHBONE(_ flow: String) throws {
        if let why = bpfUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        let parts = flow.split(separator: "|").map(String.init)
        let any = parts[0].contains("[") ? "::" : "0.0.0.0"
        let pod: UInt32 = parts[0].contains("[") ? 8 : 7
        try withPrograms { p throws in
            try NetworkNamespace.runInFreshNamespace {
                // An app listening on 15008 without the proxy's mark gets nothing.
                let app = try Socket.listening(on: SocketAddress(IPAddress(any)!, 15008))
                #expect(try p.run("tc_pod_ingress", Packet(parts[0], parts[1])).verdict == TC_ACT_SHOT)
                #expect(try p.count(pod, .dropNoListener) == 1)
                app.close()
                // The proxy's marked listener is chosen (the test run cannot assign at tc ingress).
                let proxy = try Socket.listening(on: SocketAddress(IPAddress(any)!, 15008), mark: 0x539)
                defer { proxy.close() }
                #expect(try p.run("tc_pod_ingress", Packet(parts[0], parts[1])).verdict == TC_ACT_SHOT)
                #expect(try p.count(pod, .dropAssignFailed) == 1, "the marked listener was chosen; only the test run's assignment failed")
                #expect(try p.count(pod, .hbonePass) == 0)
                #expect(try p.count(pod, .dropNoListener) == 1)
            }
        }
    }

    @Test("ingress: a probe the node SNATed passes; the same source without the node's record is captured")
    func ingressProbeAntiSpoof() throws {
        if let why = bpfUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withPrograms { p throws in
            let probe = Packet("169.254.7.127:41000", "10.244.1.2:8080")
            // No SNAT record: treated as any inbound connection. No proxy listener here, so dropped.
            #expect(try p.run("tc_pod_ingress", probe).verdict == TC_ACT_SHOT)
            #expect(try p.count(7, .spoofedProbe) == 1)
            #expect(try p.count(7, .dropNoListener) == 1)
            // With the record the node program writes, it passes uncaptured.
            let key = flowKey(pod: "10.244.1.2", probe: "169.254.7.127")
            try p.sync.probeFlows.update(key, ra_flow_value(original_source: MapSync.addr(IPAddress("10.244.1.1")!), closed_ns: 0))
            #expect(try p.run("tc_pod_ingress", probe).verdict == TC_ACT_OK)
            #expect(try p.count(7, .probePass) == 1)
        }
    }

    @Test("ingress: a closed probe flow lets its last segments through for a while, never a new SYN on its tuple")
    func closedProbeFlow() throws {
        if let why = bpfUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withPrograms { p throws in
            func monotonicNow() -> UInt64 {
                var now = timespec()
                clock_gettime(CLOCK_MONOTONIC, &now) // the clock bpf_ktime_get_ns reads
                return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
            }
            let key = flowKey(pod: "10.244.1.2", probe: "169.254.7.127")
            let syn = Packet("169.254.7.127:41000", "10.244.1.2:8080"), ack = Packet("169.254.7.127:41000", "10.244.1.2:8080", flags: 0x10)
            let closed = monotonicNow()
            let probe = MapSync.addr(try #require(IPAddress("169.254.7.127")))
            try p.sync.probeFlows.update(key, ra_flow_value(original_source: probe, closed_ns: closed))
            // The closing connection's final ACK passes; a host process that binds the probe IP and
            // the kubelet's old port does not get a probe's pass for its SYN (no listener here: dropped).
            #expect(try p.run("tc_pod_ingress", ack).verdict == TC_ACT_OK)
            #expect(try p.run("tc_pod_ingress", syn).verdict == TC_ACT_SHOT)
            #expect(try p.count(7, .spoofedProbe) == 1 && p.count(7, .probePass) == 0)
            // Closed longer than the 60 s tail: nothing of it passes any more. (A VM that has just
            // booted has no time 61 s back yet: wait for its clock.)
            let beyondTail: UInt64 = 61_000_000_000
            while monotonicNow() <= beyondTail { usleep(200_000) }
            try p.sync.probeFlows.update(key, ra_flow_value(original_source: probe, closed_ns: monotonicNow() - beyondTail))
            #expect(try p.run("tc_pod_ingress", ack).verdict != TC_ACT_OK)
            // Open again (the kubelet reused the tuple): its SYN passes.
            try p.sync.probeFlows.update(key, ra_flow_value(original_source: probe, closed_ns: 0))
            #expect(try p.run("tc_pod_ingress", syn).verdict == TC_ACT_OK)
            #expect(try p.count(7, .probePass) == 1)
        }
    }

    @Test("ingress: a new inbound connection without the proxy listening is dropped, not delivered to the app")
    func ingressNoListener() throws {
        if let why = bpfUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withPrograms { p throws in
            try NetworkNamespace.runInFreshNamespace {
                // The app listens on 8080 and even on 15006, without the proxy's mark.
                let app = try Socket.listening(on: SocketAddress(IPAddress("0.0.0.0")!, 8080))
                let fake = try Socket.listening(on: SocketAddress(IPAddress("0.0.0.0")!, 15006))
                defer { app.close(); fake.close() }
                #expect(try p.run("tc_pod_ingress", Packet("10.244.2.2:40000", "10.244.1.2:8080")).verdict == TC_ACT_SHOT)
                #expect(try p.count(7, .dropNoListener) == 1)
            }
        }
    }

    @Test("ingress: a new inbound connection is handed to the proxy's marked listener")
    func ingressToProxyListener() throws {
        if let why = bpfUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withPrograms { p throws in
            try NetworkNamespace.runInFreshNamespace {
                let proxy = try Socket.listening(on: SocketAddress(IPAddress("0.0.0.0")!, 15006), transparent: true, mark: 0x539)
                defer { proxy.close() }
                // BPF_PROG_TEST_RUN does not run at tc ingress, so the kernel refuses bpf_sk_assign
                // itself: reaching that refusal proves the proxy's listener was found and chosen (the
                // real assignment is proven end to end by the lab suites).
                #expect(try p.run("tc_pod_ingress", Packet("10.244.2.2:40000", "10.244.1.2:8080")).verdict == TC_ACT_SHOT)
                #expect(try p.count(7, .dropAssignFailed) == 1)
                #expect(try p.count(7, .inboundCaptured) == 0)
                #expect(try p.count(7, .dropNoListener) == 0)
            }
        }
    }

    @Test("ingress: a non-SYN packet that no socket owns goes to the proxy's listener, never to the stack",
          arguments: [(UInt32(0x111), "10.244.1.2:40000", "10.244.2.2:8080", UInt16(15001)), (UInt32(0), "10.244.2.2:40000", "10.244.1.2:8080", UInt16(15006))])
    func ingressOrphan(_ mark: UInt32, _ src: String, _ dst: String, _ port: UInt16) throws {
        if let why = bpfUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withPrograms { p throws in
            try NetworkNamespace.runInFreshNamespace {
                // No proxy listener: dropped (before, the outside one was passed to the stack, where
                // an app listener could complete a SYN cookie).
                let app = try Socket.listening(on: SocketAddress(IPAddress("0.0.0.0")!, 8080))
                defer { app.close() }
                for flags: UInt8 in [0x10, 0x11, 0x04, 0x18] {
                    #expect(try p.run("tc_pod_ingress", Packet(src, dst, flags: flags), mark: mark).verdict == TC_ACT_SHOT, "flags \(flags)")
                }
                #expect(try p.count(7, .dropNoListener) == 4)
                // With the proxy's listener: handed to it (the test run refuses the assignment itself).
                let proxy = try Socket.listening(on: SocketAddress(IPAddress("0.0.0.0")!, port), transparent: true, mark: 0x539)
                defer { proxy.close() }
                #expect(try p.run("tc_pod_ingress", Packet(src, dst, flags: 0x10), mark: mark).verdict == TC_ACT_SHOT)
                #expect(try p.count(7, .dropAssignFailed) == 1)
                #expect(try p.count(7, .orphanToProxy) == 0)
                #expect(try p.count(7, .dropNoListener) == 4)
            }
        }
    }

    @Test("maps: the probe IP is one config write; pods reconcile to exactly the desired set")
    func mapSync() throws {
        if let why = bpfUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withPrograms { p throws in
            var c = try #require(try p.sync.readConfig())
            #expect(c.probeIPv4.description == "169.254.7.127")
            c.probeIPv4 = IPAddress("172.30.0.1")!
            try p.sync.write(c)
            #expect(try p.sync.readConfig()?.probeIPv4.description == "172.30.0.1")
            // The programs use the new value at once. The old probe source is an ordinary client now:
            _ = try p.run("tc_pod_ingress", Packet("169.254.7.127:41000", "10.244.1.2:8080"))
            #expect(try p.count(7, .spoofedProbe) == 0)
            // the new one without the node's SNAT record is a spoofed probe,
            let probe = Packet("172.30.0.1:41000", "10.244.1.2:8080")
            #expect(try p.run("tc_pod_ingress", probe).verdict == TC_ACT_SHOT)
            #expect(try p.count(7, .spoofedProbe) == 1)
            // and with it, a probe that passes uncaptured.
            try p.sync.probeFlows.update(flowKey(pod: "10.244.1.2", probe: "172.30.0.1"),
                                         ra_flow_value(original_source: MapSync.addr(IPAddress("10.244.1.1")!), closed_ns: 0))
            #expect(try p.run("tc_pod_ingress", probe).verdict == TC_ACT_OK)
            #expect(try p.count(7, .probePass) == 1)

            let a = PodEntry(ips: [IPAddress("10.244.1.9")!], index: 3, podIfindex: 2, hostIfindex: 0, flags: 0)
            let (added, removed) = try p.sync.reconcile([a])
            #expect(added == [IPAddress("10.244.1.9")!])
            #expect(Set(removed.map(\.description)) == ["10.244.1.2", "fd00:10:244:1::2"])
            #expect(try p.sync.reconcile([a]).added.isEmpty, "idempotent")
            #expect(try p.sync.freeIndex() == 1)
        }
    }
}
