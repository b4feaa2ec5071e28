import Dataplane
import Foundation
import Glibc
import MapSync
import NodeLab
import SystemCalls
import Testing

/// The capture hardening invariants (docs/security.md), tried as an attacker would: crafted
/// segments from another pod, forged marks and hijacked ports inside a meshed pod, host processes
/// that are not the kubelet, SYN cookies. Every case runs in each dataplane; each absence check
/// first shows that the same observation sees a presence.
@Suite("Adversarial capture", .serialized)
struct AdversarialTests {
    @Test("an app that sets the proxy mark on its socket is still captured (with Istio's mark rule it is not)", arguments: conformanceSetups)
    func forgedMark(_ setup: CaptureSetup) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        for istioRule in [true, false] {
            try withCaptureLab(setup, options: { $0.identities = !istioRule }) { cl throws in
                let a = cl.meshed[0], dst = SocketAddress(try cl.outsider(cl.n2).ip4, Lab.httpPort)
                let r = try cl.lab.request(from: a, to: dst, mark: 0x539)
                #expect(r.status == 200 && clientIP(r.body) == a.ip4.description)
                let captured = try cl.records(a.node, listener: 15001, to: dst)
                if istioRule {
                    #expect(captured.isEmpty, "the presence this test looks for: Istio's rule lets a marked app through")
                } else {
                    #expect(captured.count == 1, "a forged mark does not skip capture: \(captured)")
                    if setup.mode == .ebpf, !setup.viaAgent {
                        let dp = try ebpfDataplane(cl, a.node)
                        #expect(try dp.counters(cl.lab.podSpec(a))[.forgedMark, default: 0] == 1)
                    }
                }
            }
        }
    }

    @Test("a host process that is not the kubelet is captured like any client; the kubelet's probe is not", arguments: conformanceSetups)
    func hostDaemonCaptured(_ setup: CaptureSetup) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(setup) { cl throws in
            let pod = cl.meshed[0]
            let dst = SocketAddress(pod.ip4, Lab.httpPort)
            let probe = try cl.lab.probe(pod)
            #expect(try probe.status == 200 && cl.lab.appRecords(pod).last?.client.hasPrefix("169.254.7.127:") == true)
            #expect(try cl.records(pod.node, listener: 15006, to: dst).isEmpty, "the kubelet's probe bypasses the proxy")
            // A daemon, then one that also sets on its socket every mark bit a dataplane could use to
            // carry "the kubelet's" (nftables mode's 0x1000 among them).
            for (n, mark) in [(1, nil), (2, UInt32(0xffff_ffff))] as [(Int, UInt32?)] {
                let daemon = try cl.lab.hostGet(pod, cgroup: pod.node.daemonCgroupPath, path: "/whoami", mark: mark)
                #expect(daemon.status == 200)
                let seen = try cl.records(pod.node, listener: 15006, to: dst)
                #expect(seen.count == n, "the daemon's connection went through the proxy (mark \(String(describing: mark))): \(seen)")
                #expect(clientIP(daemon.body) != "169.254.7.127", "not SNATed to the probe IP: \(daemon.body)")
            }
        }
    }

    @Test("a pod that sends from the probe IP does not skip capture (Istio's rules let it in)", arguments: conformanceModes)
    func spoofedProbeIP(_ mode: DataplaneMode) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(mode) { cl throws in
            let attacker = try cl.outsider(cl.n1), victim = cl.meshed[0]
            let dst = SocketAddress(victim.ip4, Lab.httpPort), probeIP = IPAddress("169.254.7.127")!
            // Let the attacker receive replies to the probe IP, so a handshake can complete.
            let restoreRouting = try routeProbeReplies(cl.lab, on: cl.n1, to: attacker, probe: probeIP)
            func attempt() -> MiniHTTP.Response? {
                try? attacker.netns.run {
                    let socket = try Socket(tcp: AF_INET)
                    defer { socket.close() }
                    try socket.setTransparent(ipv6: false)
                    try socket.bind(SocketAddress(probeIP, 0))
                    try socket.setTimeout(seconds: 1)
                    try socket.connect(dst)
                    return try MiniHTTP.get(socket, host: "victim", path: "/whoami")
                }
            }
            if mode != .ebpf {
                // The presence: without the node's guard (Istio's rules alone) the spoofed connection
                // reaches the app and the proxy never sees it.
                if mode == .nftables {
                    _ = try cl.lab.inNamespace(cl.n1.netns, "nft", ["delete", "chain", "inet", NftablesRules.nodeTable, "probe-guard"])
                } else {
                    _ = try cl.lab.inNamespace(cl.n1.netns, "iptables", ["-t", "raw", "-D", "PREROUTING", "-j", "ISTIO_PROBE_GUARD"])
                }
                #expect(attempt()?.status == 200)
                #expect(try cl.records(victim.node, listener: 15006, to: dst).isEmpty, "Istio's rule lets it through uncaptured")
                try cl.capture.dataplane(cl.n1).prepareNode()
                func guardDrops() throws -> Int {
                    if mode == .nftables { return try nftCounted(cl.lab, cl.n1.netns, table: NftablesRules.nodeTable, chain: "probe-guard") }
                    let out = try cl.lab.inNamespace(cl.n1.netns, "iptables", ["-t", "raw", "-L", "ISTIO_PROBE_GUARD", "-v", "-x", "-n"])
                    return out.split(separator: "\n").filter { $0.contains("DROP") }.compactMap { Int($0.split(separator: " ").first ?? "") }.reduce(0, +)
                }
                let before = try cl.lab.appRecords(victim).count, dropped = try guardDrops()
                #expect(attempt() == nil, "the node drops it")
                #expect(try guardDrops() > dropped, "dropped by the guard, not lost for another reason")
                #expect(try cl.lab.appRecords(victim).count == before)
            } else {
                #expect(attempt()?.status == 200)
                #expect(try cl.records(victim.node, listener: 15006, to: dst).count == 1, "captured: \((try? cl.records(victim.node)) ?? [])")
            }
            // The kubelet's own probes still pass, uncaptured.
            try restoreRouting()
            let probes = try cl.records(victim.node, listener: 15006, to: dst).count
            #expect(try cl.lab.probe(victim).status == 200)
            #expect(try cl.records(victim.node, listener: 15006, to: dst).count == probes)
        }
    }

    @Test("an app's new connection to the probe IP is captured (Istio lets it out)", arguments: conformanceModes)
    func appToProbeIP(_ mode: DataplaneMode) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(mode) { cl throws in
            let a = cl.meshed[0]
            let dst = SocketAddress(IPAddress("169.254.7.127")!, Lab.httpPort)
            _ = try? cl.lab.request(from: a, to: dst, timeout: 1)
            // The proxy writes its record once its own upstream attempt fails (up to 5 s).
            try? waitFor("the proxy's record", seconds: 8) { try !cl.records(a.node, listener: 15001, to: dst).isEmpty }
            #expect(try cl.records(a.node, listener: 15001, to: dst).count == 1, "\((try? cl.records(a.node)) ?? [])")
        }
    }

    @Test("an app that binds the proxy's inbound or outbound port first gets no captured connection",
          arguments: conformanceModes, [false, true])
    func hijackedListener(_ mode: DataplaneMode, _ marked: Bool) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(mode) { cl throws in
            // A pod the proxy does not serve (enrolled in the dataplane only), where an app holds
            // 15006 and 15001, with or without the proxy's mark, before any proxy could.
            let victim = try cl.lab.addPod(on: cl.n1, name: "n1-hijack")
            try cl.capture.dataplane(victim.node).enroll(cl.lab.podSpec(victim))
            defer { try? cl.capture.dataplane(victim.node).remove(cl.lab.podSpec(victim)) }
            let mark: UInt32? = marked ? 0x539 : nil
            let fakeIn = try victim.netns.run { try Socket.listening(on: SocketAddress(IPAddress("0.0.0.0")!, 15006), transparent: true, mark: mark) }
            let fakeOut = try victim.netns.run { try Socket.listening(on: SocketAddress(IPAddress("0.0.0.0")!, 15001), transparent: true, mark: mark) }
            defer { fakeIn.close(); fakeOut.close() }
            try fakeIn.setNonBlocking()
            try fakeOut.setNonBlocking()
            // Inbound from another node's pod, and outbound from the pod's own app (another container).
            let inbound = try? cl.lab.request(from: cl.outsider(cl.n2), to: SocketAddress(victim.ip4, Lab.httpPort), timeout: 1)
            let outbound = try? cl.lab.request(from: victim, to: SocketAddress(cl.outsider(cl.n2).ip4, Lab.httpPort), timeout: 1)
            let stolenIn = try fakeIn.acceptAvailable(), stolenOut = try fakeOut.acceptAvailable()
            defer { stolenIn?.close(); stolenOut?.close() }
            if mode == .iptables && marked {
                // xtables cannot ask which cgroup a listener belongs to, only its mark: the kernel completes
                // the handshake for a marked listener (CAP_NET_RAW on 5.17+). Not a byte flows either way.
                #expect(inbound == nil && outbound == nil, "no answer came through a hijacked connection")
                func drops(_ chain: String) throws -> Int {
                    let mangle = try cl.lab.inNamespace(victim.netns, "iptables-nft-save", ["-c", "-t", "mangle"])
                    let rule = try #require(mangle.split(separator: "\n").first { $0.contains("-A \(chain)") && $0.contains("-m cgroup ! --path") })
                    return Int(rule.dropFirst().prefix { $0 != ":" }) ?? -1
                }
                #expect(try drops("ISTIO_INPUT") > 0, "the requests to the app's sockets were dropped")
                // Over eth0 early demux gives the arriving packets their socket; over loopback the route
                // is already attached, so there is no early demux and the app's socket on 15001 reads its
                // own pod's request (what CAP_NET_RAW can read from loopback anyway), but cannot answer.
                let got = try stolenIn.flatMap { try $0.setNonBlocking(); return try $0.readAvailable() }
                #expect(got == nil, "the app's 15006 received nothing: \(String(describing: got.map { String(decoding: $0, as: UTF8.self) }))")
                for stolen in [stolenIn, stolenOut].compactMap({ $0 }) {
                    let before = try drops("ISTIO_OUTPUT")
                    try stolen.writeAll("HTTP/1.1 200 OK\r\n\r\n")
                    try waitFor("the app's answer to be dropped") { try drops("ISTIO_OUTPUT") > before }
                }
                #expect(stolenIn != nil || stolenOut != nil, "the handshake completes for a marked listener (else this case shows nothing)")
                return
            }
            #expect(stolenIn == nil && inbound == nil, "the app's 15006 received a captured connection")
            #expect(stolenOut == nil && outbound == nil, "the app's 15001 received the pod's outbound connection")
            if mode == .ebpf {
                let counters = try ebpfDataplane(cl, victim.node).counters(cl.lab.podSpec(victim))
                let refused = counters[.dropNotProxy, default: 0] + counters[.dropNoListener, default: 0]
                #expect(refused >= 2, "\(counters.filter { $0.value > 0 })")
            } else if mode == .nftables {
                // nft asks the listener's cgroup, not its mark: a marked app listener gets no SYN either.
                let dropped = try nftCounted(cl.lab, victim.netns, table: NftablesRules.mangleTable, chain: NftablesRules.proxySocketChain)
                #expect(dropped >= 2, "the listener guard dropped the SYNs: \(dropped)")
            } else {
                let mangle = try cl.lab.inNamespace(victim.netns, "iptables-nft-save", ["-c", "-t", "mangle"])
                let drops = mangle.split(separator: "\n").first { $0.contains("ISTIO_INPUT") && $0.contains("-j DROP") && $0.contains("tcp") }
                #expect(drops.map { !$0.hasPrefix("[0:") } == true, "the listener guard dropped the SYNs: \(drops ?? "no rule")")
            }
        }
    }

    @Test("a crafted in-window segment into the proxy's connection to the app never reaches the app", arguments: conformanceModes)
    func injection(_ mode: DataplaneMode) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(mode) { cl throws in
            let victim = cl.meshed[0], attacker = try cl.outsider(cl.n2)
            // Without timestamps, a crafted segment needs only the right sequence numbers (with them,
            // it would also need the peer's current clock, which an attacker who sniffs has too).
            try cl.lab.inNamespace(victim.netns, "sysctl", ["-qw", "net.ipv4.tcp_timestamps=0"])
            let conn = try attacker.netns.run { try Socket(tcp: AF_INET) }
            defer { conn.close() }
            try conn.setTimeout(seconds: 2)
            try conn.connect(SocketAddress(victim.ip4, Lab.echoPort))
            let clientPort = try conn.localAddress().port
            func line(_ step: String) throws -> String? {
                do { return try conn.readLine() } catch { throw LabError("\(step): \(error)") }
            }
            try conn.writeAll("hello\n")
            #expect(try line("hello") == "hello")
            // The proxy's connection to the app: same client address, another port.
            let inner = try proxySidePort(cl.lab, victim, client: attacker.ip4, excluding: clientPort)
            let src = "\(attacker.ip4):\(inner)", dst = "\(victim.ip4):\(Lab.echoPort)"
            // Learn the sequence numbers from the wire inside the victim.
            let sniffer = try ManagedProcess("/usr/bin/nsenter", ["--net=\(victim.netns.path)", "/usr/bin/python3", craftScript,
                                                                    "sniff", "--iface", "lo", "--src", src, "--dst", dst],
                                             logPath: "\(cl.lab.directory)/sniff-\(mode.rawValue).log")
            defer { sniffer.stop() }
            try waitFor("sniffer ready") { sniffer.log().contains("READY") }
            try conn.writeAll("ping\n")
            #expect(try line("ping") == "ping")
            try waitFor("a sniffed segment") { sniffer.log().contains("\"seq\"") }
            let sniffed = try #require(sniffer.log().split(separator: "\n").last { $0.contains("\"seq\"") })
            let seen = try #require(try JSONSerialization.jsonObject(with: Data(sniffed.utf8)) as? [String: Int], "\(sniffed)")
            let s0 = try #require(seen["seq"]), a0 = try #require(seen["ack"]), len = try #require(seen["len"])
            var seq = s0 + len, ack = a0 + len
            let diag = { (try? cl.lab.inNamespace(victim.netns, "ss", ["-tnie"])) ?? "" }
            let received = { try bytesReceived(cl.lab, victim, local: dst, peer: src) }
            let before = try received()
            // The attack: from the attacker's pod, which owns the claimed source address.
            try craft(in: attacker.netns, src: src, dst: dst, seq: seq, ack: ack, payload: "evil\n")
            usleep(200_000)
            #expect(try received() == before, "the app's socket took no byte from outside")
            try conn.writeAll("after\n")
            #expect(try line("after") == "after", "the connection is intact")
            seq += 6; ack += 6
            // The presence: the same kind of segment, sent inside the victim, does reach the app's
            // socket (which then falls out of step with the proxy: that is what the attack wanted).
            try craft(in: victim.netns, src: src, dst: dst, seq: seq, ack: ack, payload: "inside\n")
            do { try waitFor("the app's socket to take the crafted bytes") { (try? received()) == before + 6 + 7 } } catch {
                Issue.record("\(error): before \(before), now \((try? received()) ?? -1)\n\(diag())\n\((try? cl.lab.inNamespace(victim.netns, "nstat", ["-az"])) ?? "")")
            }
            if mode == .ebpf {
                let dp = try ebpfDataplane(cl, victim.node)
                #expect(try dp.counters(cl.lab.podSpec(victim))[.dropNotProxy, default: 0] >= 1)
            }
        }
    }

    @Test("a process in a meshed pod cannot send past tc: AF_PACKET with PACKET_QDISC_BYPASS and AF_XDP are refused in ebpf mode (iptables mode, like Istio, lets raw frames out)",
          arguments: conformanceModes)
    func sendsPastTC(_ mode: DataplaneMode) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(mode) { cl throws in
            let victim = cl.meshed[0], outsider = try cl.outsider(victim.node)
            let peer = SocketAddress(try cl.outsider(cl.n2).ip4, Lab.httpPort)
            // A segment of no connection, as a userspace TCP stack would send it: the frame goes to
            // the node's bridge (the pods' gateway), and is looked for on the pod's host-side veth.
            func attempt(from pod: LabPod, bypass: Bool) throws -> (answer: [String: Any], seen: Bool) {
                let src = "\(pod.ip4):40\(bypass ? 1 : 2)\(mode == .ebpf ? 1 : 2)", dst = peer.description
                let sniffer = try sniff(cl.lab, on: pod, src: src, dst: dst, timeout: 2)
                defer { sniffer.stop() }
                let answer = try craftJSON(in: pod.netns, ["frame", "--iface", "eth0", "--dst-mac", try gatewayMAC(pod), "--src", src, "--dst", dst,
                                                           "--payload", "raw\n"] + (bypass ? ["--qdisc-bypass"] : []))
                try waitFor("the sniffer's verdict", seconds: 10) { sniffer.log().contains("\"seq\"") || sniffer.log().contains("\"error\"") }
                return (answer, sniffer.log().contains("\"seq\""))
            }
            let presence = try attempt(from: outsider, bypass: true)
            #expect(presence.answer["sent"] != nil && presence.seen, "the presence: a pod outside the mesh sends past its qdisc, and the frame is seen: \(presence)")
            #expect(try craftJSON(in: outsider.netns, ["xsk"])["opened"] as? Bool == true, "outside the mesh AF_XDP is untouched")

            let bypassing = try attempt(from: victim, bypass: true), plain = try attempt(from: victim, bypass: false)
            let xsk = try craftJSON(in: victim.netns, ["xsk"])
            switch mode {
            case .ebpf:
                #expect(plain.answer["sent"] != nil, "AF_PACKET itself stays usable in a meshed pod: \(plain)")
                #expect(!plain.seen, "a frame through the qdisc meets tc_pod_egress and does not leave")
                let dp = try ebpfDataplane(cl, victim.node)
                if let why = dp.securityHooksOffReason {
                    if ProcessInfo.processInfo.environment["REDIRECT_EXPECT_BPF_LSM"] == "1" {
                        Issue.record("the kernel matrix's kernels run BPF LSM, yet: \(why)")
                    }
                    // A kernel that cannot run BPF LSM programs (this host's: lockdown refuses tracing
                    // programs): the known remaining bypass (docs/security.md), and status says so.
                    print("sendsPastTC: no security hooks on this kernel (\(why)); the kernel matrix runs the refusal")
                    #expect(bypassing.seen && xsk["opened"] as? Bool == true, "\(bypassing) \(xsk)")
                    #expect(dp.describeNode().summary.contains("sends past tc not refused: \(why)"))
                } else {
                    #expect(bypassing.answer["refused"] as? String == "setsockopt" && bypassing.answer["errno"] as? Int == Int(EPERM), "\(bypassing)")
                    #expect(!bypassing.seen)
                    #expect(xsk["refused"] as? String == "socket" && xsk["errno"] as? Int == Int(EPERM), "\(xsk)")
                    #expect(try dp.counters(cl.lab.podSpec(victim))[.refusedTCBypass, default: 0] == 2)
                    #expect(dp.describeNode().summary.contains("AF_PACKET qdisc bypass and AF_XDP refused in meshed pods"))
                }
            default:
                // Istio's rules are netfilter rules, which AF_PACKET never meets: both frames leave.
                #expect(bypassing.seen && plain.seen, "iptables mode lets raw frames out, as Istio does: \(bypassing) \(plain)")
                #expect(xsk["opened"] as? Bool == true)
            }
        }
    }

    @Test("with SYN cookies always on in the pods, captured connections still complete, in and out", arguments: conformanceModes)
    func synCookies(_ mode: DataplaneMode) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(mode) { cl throws in
            let a = cl.meshed[0], b = cl.meshed[2]
            for pod in [a, b] { try cl.lab.inNamespace(pod.netns, "sysctl", ["-qw", "net.ipv4.tcp_syncookies=2"]) }
            let before = try syncookiesSent(cl.lab, [a, b])
            let dst = SocketAddress(b.ip4, Lab.httpPort)
            func counters() -> String {
                guard mode == .ebpf else { return "" }
                return [a, b].map { p in "\(p.name): \(((try? (try ebpfDataplane(cl, p.node)).counters(cl.lab.podSpec(p))) ?? [:]).filter { $0.value > 0 })" }.joined(separator: "; ")
            }
            let r: MiniHTTP.Response
            do { r = try cl.lab.request(from: a, to: dst) } catch { throw LabError("outbound: \(error) \(counters()) \(try cl.allRecords)") }
            #expect(r.status == 200 && clientIP(r.body) == a.ip4.description)
            #expect(try cl.records(a.node, listener: 15001, to: dst).count == 1)
            let outsider = try cl.outsider(cl.n2)
            #expect(try cl.lab.request(from: outsider, to: SocketAddress(a.ip4, Lab.httpPort)).status == 200)
            #expect(try cl.records(a.node, listener: 15006).count == 1)
            #expect(try syncookiesSent(cl.lab, [a, b]) >= before + 2, "the handshakes did use cookies")
        }
    }
}

/// The lab's crafting helper (Python, standard library only).
let craftScript = "\(repoRoot)/scripts/tcp-craft.py"

/// Sends one crafted segment from inside `netns`.
func craft(in netns: NetworkNamespace, src: String, dst: String, seq: Int, ack: Int, payload: String) throws {
    try Command.run("/usr/bin/nsenter", ["--net=\(netns.path)", "/usr/bin/python3", craftScript, "send",
                                         "--src", src, "--dst", dst, "--seq", "\(seq)", "--ack", "\(ack)", "--payload", payload])
}

/// Runs the crafting helper inside `netns` and returns the JSON object it printed last.
func craftJSON(in netns: NetworkNamespace, _ args: [String]) throws -> [String: Any] {
    let r = try Command.capture("/usr/bin/nsenter", ["--net=\(netns.path)", "/usr/bin/python3", craftScript] + args)
    guard let line = r.stdout.split(separator: "\n").last,
          let json = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
        throw LabError("tcp-craft \(args.first ?? ""): exit \(r.status): \(r.stdout)\(r.stderr)")
    }
    return json
}

/// A sniffer on `pod`'s host-side veth (in its node's namespace: what left the pod) for the first
/// segment with payload from `src` to `dst`; its log ends in {"seq": ...} or {"error": ...}.
func sniff(_ lab: Lab, on pod: LabPod, src: String, dst: String, timeout: Double) throws -> ManagedProcess {
    let sniffer = try ManagedProcess("/usr/bin/nsenter", ["--net=\(pod.node.netns.path)", "/usr/bin/python3", craftScript, "sniff",
                                                          "--iface", try hostVeth(pod).name, "--src", src, "--dst", dst, "--timeout", "\(timeout)"],
                                     logPath: "\(lab.directory)/sniff-\(pod.name)-\(src.replacingOccurrences(of: ":", with: "-")).log")
    try waitFor("sniffer ready") { sniffer.log().contains("READY") }
    return sniffer
}

/// The MAC address of `pod`'s gateway (its node's bridge, as the bridge plugin reported it).
func gatewayMAC(_ pod: LabPod) throws -> String {
    let interfaces = pod.cniResult["interfaces"] as? [[String: Any]] ?? []
    return try #require(interfaces.first { $0["name"] as? String == "cni0" }?["mac"] as? String, "no bridge in \(pod.cniResult)")
}

/// The client port of the app's accepted connection from `client` that is not `excluding` (the
/// one the proxy opened to the app, not the client's own connection to the proxy).
func proxySidePort(_ lab: Lab, _ pod: LabPod, client: IPAddress, excluding: UInt16) throws -> UInt16 {
    let out = try lab.inNamespace(pod.netns, "ss", ["-Htn", "state", "established", "( sport = :\(Lab.echoPort) )"])
    for line in out.split(separator: "\n") {
        guard let peer = line.split(separator: " ").last, peer.hasPrefix("\(client):"),
              let port = UInt16(peer.split(separator: ":").last ?? ""), port != excluding else { continue }
        return port
    }
    throw LabError("no proxy-side connection from \(client) in \(pod.name): \(out)")
}

/// Bytes the socket `local` <-> `peer` in `pod` has received (its kernel counter, from `ss -i`).
func bytesReceived(_ lab: Lab, _ pod: LabPod, local: String, peer: String) throws -> Int {
    let out = try lab.inNamespace(pod.netns, "ss", ["-Htni", "state", "established"])
    let lines = out.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    // Fields: Recv-Q Send-Q Local Peer; the proxy's own end of the same connection has them swapped.
    for (i, l) in lines.enumerated() where Array(l.split(separator: " ").dropFirst(2).prefix(2)) == [Substring(local), Substring(peer)] {
        let info = i + 1 < lines.count ? lines[i + 1] : ""
        guard let r = info.range(of: "bytes_received:") else { return 0 }
        return Int(info[r.upperBound...].prefix { $0.isNumber }) ?? 0
    }
    throw LabError("no socket \(local) <-> \(peer) in \(pod.name): \(out)")
}

/// SYN cookies the pods' stacks sent (TcpExtSyncookiesSent, read in each pod).
func syncookiesSent(_ lab: Lab, _ pods: [LabPod]) throws -> Int {
    try pods.map { pod in
        let text = try lab.inNamespace(pod.netns, "cat", ["/proc/net/netstat"])
        let lines = text.split(separator: "\n").filter { $0.hasPrefix("TcpExt:") }
        guard lines.count == 2 else { throw LabError("no TcpExt in \(pod.name)") }
        let names = lines[0].split(separator: " "), values = lines[1].split(separator: " ")
        guard let i = names.firstIndex(of: "SyncookiesSent") else { throw LabError("no SyncookiesSent") }
        return Int(values[i]) ?? 0
    }.reduce(0, +)
}

/// Polls `condition` for up to `seconds`.
func waitFor(_ what: String, seconds: Double = 5, _ condition: () throws -> Bool) throws {
    let deadline = Monotonic.now() + seconds
    while Monotonic.now() < deadline {
        if try condition() { return }
        usleep(10_000)
    }
    throw LabError("timed out waiting for \(what)")
}
