import BPFLoader
import CShim
import MapSync
import SystemCalls
import Testing

/// Invariant 1 of docs/security.md: a packet to or from a meshed pod whose transport header the
/// programs cannot locate is dropped and counted, never passed. Every case runs on both pod
/// programs; "passed" (TC_ACT_OK) is the one verdict a TCP packet from an app or a peer must
/// never get here, since the stack would then deliver it without the proxy.
@Suite("BPF parser fails closed on crafted packets (BPF_PROG_TEST_RUN)", .serialized)
struct ParserTests {
    static let outbound = ("10.244.1.2:40000", "10.244.2.2:8080"), outbound6 = ("[fd00:10:244:1::2]:40000", "[fd00:10:244:2::2]:8080")
    static let inbound = ("10.244.2.2:40000", "10.244.1.2:8080"), inbound6 = ("[fd00:10:244:2::2]:40000", "[fd00:10:244:1::2]:8080")

    /// Runs `make(flow)` through egress (the pod's own address as source, pod index 7 or 8) and
    /// ingress (as destination); returns both verdicts and what each counted against `countedOn`
    /// (default: the pod; 0 collects what cannot be attributed to a pod).
    func both(_ p: LoadedPrograms, v6: Bool, countedOn: UInt32? = nil, _ make: (String, String) -> Packet) throws -> [(verdict: UInt32, counted: [Decision: UInt64])] {
        let pod: UInt32 = countedOn ?? (v6 ? 8 : 7)
        var out: [(UInt32, [Decision: UInt64])] = []
        for (prog, flow) in [("tc_pod_egress", v6 ? Self.outbound6 : Self.outbound), ("tc_pod_ingress", v6 ? Self.inbound6 : Self.inbound)] {
            let before = try p.sync.counters(podIndex: pod)
            let r = try p.run(prog, make(flow.0, flow.1))
            let after = try p.sync.counters(podIndex: pod)
            out.append((r.verdict, after.reduce(into: [:]) { $0[$1.key] = $1.value - (before[$1.key] ?? 0) }.filter { $0.value > 0 }))
        }
        return out
    }

    @Test("IPv6 extension chains of 0 to 12 headers: captured up to the bound, dropped past it, never passed",
          arguments: [false, true], 0...12)
    func extensionChains(withAH: Bool, length: Int) throws {
        if let why = bpfUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        let kinds: [UInt8] = withAH ? [51, 60, 43, 135] : [0, 60, 43, 60]
        try withPrograms { p throws in
            let runs = try both(p, v6: true) { s, d in
                var pkt = Packet(s, d)
                pkt.extHeaders = (0..<length).map { kinds[$0 % kinds.count] }
                return pkt
            }
            for (i, r) in runs.enumerated() {
                #expect(r.verdict != TC_ACT_OK, "\(i == 0 ? "egress" : "ingress"), \(length) headers: passed uncaptured")
                if length > Int(RA_MAX_EXT_HEADERS) {
                    #expect(r.verdict == TC_ACT_SHOT && r.counted == [.dropMalformed: 1], "past the bound: \(r)")
                } else if i == 0 {
                    #expect(r.verdict == TC_ACT_REDIRECT && r.counted.isEmpty, "within the bound the SYN is captured: \(r)")
                } else {
                    // No proxy listener in the test run's namespace: the capture path drops it.
                    #expect(r.counted == [.dropNoListener: 1], "within the bound the SYN takes the capture path: \(r)")
                }
            }
        }
    }

    @Test("IPv6 fragment header: offset 0 is a dropped fragment, a later fragment is malformed", arguments: [0, 1, 185] as [UInt16])
    func ipv6Fragments(offset: UInt16) throws {
        if let why = bpfUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withPrograms { p throws in
            let runs = try both(p, v6: true) { s, d in
                var pkt = Packet(s, d)
                pkt.extHeaders = [60, 44]
                pkt.fragmentOffset = offset
                return pkt
            }
            for r in runs {
                #expect(r.verdict == TC_ACT_SHOT)
                #expect(r.counted == [offset == 0 ? .dropFragment : .dropMalformed: 1], "\(r)")
            }
        }
    }

    @Test("IPv4 options of every length are parsed through; a header length under 5 words is malformed", arguments: 0...10)
    func ipv4Options(words: Int) throws {
        if let why = bpfUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withPrograms { p throws in
            let runs = try both(p, v6: false) { s, d in
                var pkt = Packet(s, d)
                pkt.ipv4Options = words * 4
                return pkt
            }
            #expect(runs[0].verdict == TC_ACT_REDIRECT && runs[0].counted.isEmpty, "egress with \(words * 4) option bytes: \(runs[0])")
            #expect(runs[1].counted == [.dropNoListener: 1], "ingress with \(words * 4) option bytes: \(runs[1])")
            if words < 5 {
                let bad = try both(p, v6: false) { s, d in
                    var pkt = Packet(s, d)
                    pkt.ihl = UInt8(words)
                    return pkt
                }
                for r in bad { #expect(r.verdict == TC_ACT_SHOT && r.counted == [.dropMalformed: 1], "ihl \(words): \(r)") }
            }
        }
    }

    @Test("truncated headers and TCP data offsets under 5 words are malformed", arguments: [false, true])
    func truncated(v6: Bool) throws {
        if let why = bpfUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        let l4 = 14 + (v6 ? 40 : 20)
        try withPrograms { p throws in
            // Cut at the TCP header's start and inside it (BPF_PROG_TEST_RUN refuses frames cut inside
            // the IP header; the parser answers those as malformed too); then bad data offsets.
            var cases: [(String, (inout Packet) -> Void)] = [l4, l4 + 10, l4 + 19].map { (n: Int) in ("cut at \(n)", { $0.truncate = n }) }
            cases += (0..<5).map { d in ("data offset \(d)", { $0.tcpDataOffset = UInt8(d) }) }
            if v6 { cases.append(("chain runs past the end", { $0.extHeaders = [60, 60]; $0.truncate = l4 + 12 })) }
            for (name, change) in cases {
                let runs = try both(p, v6: v6) { s, d in
                    var pkt = Packet(s, d)
                    change(&pkt)
                    return pkt
                }
                for r in runs { #expect(r.verdict == TC_ACT_SHOT && r.counted == [.dropMalformed: 1], "\(name): \(r)") }
            }
        }
    }

    @Test("transports the programs do not handle are dropped; UDP and ICMP pass", arguments: [false, true])
    func protocols(v6: Bool) throws {
        if let why = bpfUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withPrograms { p throws in
            // SCTP, no next header, ESP, GRE, IP-in-IP, IPv6-in-IP, DCCP, UDP-Lite
            for proto: UInt8 in [132, 59, 50, 47, 4, 41, 33, 136] {
                let runs = try both(p, v6: v6) { s, d in
                    var pkt = Packet(s, d)
                    pkt.proto = proto
                    return pkt
                }
                for r in runs { #expect(r.verdict == TC_ACT_SHOT && r.counted == [.dropProtocol: 1], "protocol \(proto): \(r)") }
            }
            for proto: UInt8 in [17, v6 ? 58 : 1] {
                let runs = try both(p, v6: v6) { s, d in
                    var pkt = Packet(s, d)
                    pkt.proto = proto
                    return pkt
                }
                for r in runs { #expect(r.verdict == TC_ACT_OK && r.counted.isEmpty, "protocol \(proto): \(r)") }
            }
        }
    }

    @Test("a VLAN tag cannot hide what follows; IPv4 fragments are dropped, later ones as malformed")
    func tagsAndIPv4Fragments() throws {
        if let why = bpfUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withPrograms { p throws in
            for v6 in [false, true] {
                // The tag hides the addresses too: the drop is counted on the unattributed index 0.
                let runs = try both(p, v6: v6, countedOn: 0) { s, d in
                    var pkt = Packet(s, d)
                    pkt.vlan = 0
                    return pkt
                }
                for r in runs { #expect(r.verdict == TC_ACT_SHOT && r.counted == [.dropMalformed: 1], "tagged, v6 \(v6): \(r)") }
            }
            for (offset, expected) in [(0, Decision.dropFragment), (1, .dropMalformed), (100, .dropMalformed)] as [(UInt16, Decision)] {
                let runs = try both(p, v6: false) { s, d in
                    var pkt = Packet(s, d)
                    pkt.fragment = true
                    pkt.fragmentOffset = offset
                    return pkt
                }
                for r in runs { #expect(r.verdict == TC_ACT_SHOT && r.counted == [expected: 1], "IPv4 fragment at \(offset): \(r)") }
            }
        }
    }
}
