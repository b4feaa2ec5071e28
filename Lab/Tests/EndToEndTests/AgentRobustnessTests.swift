import AgentAPI
import Dataplane
import AgentCore
import Foundation
import HostileInput
import NodeLab
import PropertyBased
import SystemCalls
import Testing

/// A control request straight to the agent's socket (what a hostile runtime can send).
func control(_ node: LabNode, _ op: String, _ pod: PodRequest) throws -> ControlResponse {
    try AgentClient.call(ControlRequest(op: op, pod: pod), socket: node.agentControlSocket, timeout: 10)
}

@Suite("Agent robustness: hostile requests, isolation, bounded control plane", .serialized)
struct AgentRobustnessTests {
    @Test("hostile add/del/check requests get their error codes; the agent lives and the enrolled pod's kernel state is untouched",
          arguments: ["ebpf", "iptables", "nftables"])
    func hostileRequests(_ dataplane: String) async throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withAgentLab(dataplane) { lab throws in
            let node = lab.nodes[0]
            let a = try lab.addMeshedPod(on: node, name: "n1-pod1")
            let b = try lab.addPod(on: node, name: "n1-plain")
            let before = try podKernelState(lab, a)
            // Presence first: the snapshot sees the capture it must later find unchanged.
            #expect(before.contains(["ebpf": "tc_pod_ingress", "iptables": "ISTIO_PRERT", "nftables": "istio-ambient-nat"][dataplane] ?? "?"), "\(before)")
            #expect(before.contains("fwmark 0x111/0xfff lookup 100"))
            let aReq = lab.podRequest(a, meshed: true), bReq = lab.podRequest(b, meshed: true)
            func expectCode(_ op: String, _ r: PodRequest, _ code: AgentError.Code, _ why: String) throws {
                let resp = try control(node, op, r)
                #expect(!resp.ok && resp.code == code.rawValue, "\(why): \(resp.code ?? "ok") \(resp.error ?? "")")
            }
            var r = bReq; r.ips = [""]
            try expectCode("add", r, .invalidRequest, "empty address")
            r.ips = ["/"]
            try expectCode("add", r, .invalidRequest, "slash address")
            r = bReq; r.ips = aReq.ips
            try expectCode("add", r, .conflict, "another pod's address")
            r = bReq; r.netns = a.netns.path; r.ips = ["10.244.1.250"]
            try expectCode("add", r, .conflict, "another pod's namespace")
            for own in ["/proc/\(node.agent?.pid ?? 1)/ns/net", node.netns.path] {
                r = bReq; r.netns = own
                try expectCode("add", r, .conflict, "the node's own namespace \(own)")
            }
            // The host's init namespace: refused as the node's, or as unreadable where pid 1 is hidden.
            r = bReq; r.netns = "/proc/1/ns/net"
            let host = try control(node, "add", r)
            #expect(!host.ok && [AgentError.Code.conflict.rawValue, AgentError.Code.invalidRequest.rawValue].contains(host.code ?? ""), "\(host)")
            r = bReq; r.ips = (1...32766).map { "10.\($0 / 65536 + 100).\($0 / 256 % 256).\($0 % 256)" }
            try expectCode("add", r, .tooManyValues, "32766 addresses")
            r = bReq; r.interface = "nope0"
            try expectCode("add", r, .invalidRequest, "an interface the pod does not have")
            r = bReq; r.uid = "x\0y"
            try expectCode("add", r, .invalidRequest, "a NUL in the UID")
            r = bReq; r.name = "p\nlevel=info msg=forged"
            try expectCode("add", r, .invalidRequest, "a newline in the name")
            // A DEL for a UID nobody enrolled that names A's namespace and addresses changes nothing.
            r = aReq; r.uid = "someone-else"
            #expect(try control(node, "del", r).ok)
            #expect(try podKernelState(lab, a) == before, "a stranger's DEL stripped the pod")
            let log = node.agent?.log() ?? ""
            #expect(!log.contains("\nlevel=info msg=forged"), "a pod name forged a log line")
            #expect(node.agent?.isRunning == true)
            #expect(try podKernelState(lab, a) == before)
            let s = try status(node)
            #expect(s.pods.map(\.uid) == [aReq.uid] && s.pods[0].drift.isEmpty, "\(s.pods)")
            // B still enrolls normally afterwards: nothing was left half-claimed.
            #expect(try control(node, "add", bReq).enrolled == true)
            #expect(try control(node, "del", bReq).ok)
        }
    }

    @Test("random hostile requests (property-based) never crash the agent or touch the enrolled pod")
    func randomHostileRequests() async throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try await withVictimLab { lab, node, a, before, real async throws in
            // Hostile fields mixed with the victim's real namespace and addresses, never its UID.
            let netns = Gen<String>.oneOf(Hostile.text.eraseToAnySequence(), Gen.always(real.netns).eraseToAnySequence(),
                                          Gen.always("/proc/1/ns/net").eraseToAnySequence())
            let ips = Gen<[String]>.oneOf(Hostile.ips.eraseToAnySequence(), Gen.always(real.ips).eraseToAnySequence())
            let ops = Gen<String?>.element(of: ["add", "del", "check", "status", "set-probe-ips", "", "ADD\n"]).map { $0 ?? "" }
            await propertyCheck(count: 120, input: ops, Hostile.text, Hostile.text, netns, ips, Hostile.text) { op, uid, name, ns, addrs, iface in
                let req = PodRequest(uid: uid == real.uid ? uid + "x" : uid, name: name, namespace: "default", netns: ns, ips: addrs,
                                     interface: iface, podLabels: ["istio.io/dataplane-mode": "ambient"])
                let resp = try? AgentClient.call(ControlRequest(op: op, pod: req, probeIPv4: name, probeIPv6: iface), socket: node.agentControlSocket, timeout: 10)
                #expect(resp != nil, "the agent answers every request")
            }
            #expect(node.agent?.isRunning == true)
            #expect(try podKernelState(lab, a) == before)
            #expect(try status(node).pods.map(\.uid) == [real.uid])
        }
    }

    @Test("random hostile CNI configurations and environments (property-based): the plugin always answers CNI JSON, the agent and the enrolled pod are untouched")
    func randomHostileCNI() async throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try await withVictimLab { lab, node, a, before, real async throws in
            // JSON values of every type, hostile strings among them, for each configuration field.
            let value = Gen<String>.oneOf(
                Hostile.text.map { Self.jsonString($0) }.eraseToAnySequence(),
                Gen<String?>.element(of: ["\"1.0.0\"", "\"0.4.0\"", "\"9.9.9\"", "5", "1.0", "null", "true", "[]", "{}", "-1", "1e308", "0", "0.001",
                                          "[\"1.0.0\"]", "{\"a\":1}", String(repeating: "[", count: 20_000)]).map { $0 ?? "null" }.eraseToAnySequence())
            // Valid values often enough that requests get past the plugin to the agent.
            let version = Gen<String>.oneOf(Gen.always("\"1.0.0\"").eraseToAnySequence(), value.eraseToAnySequence())
            let timeout = Gen<String>.oneOf(Gen.always("5").eraseToAnySequence(), value.eraseToAnySequence())
            let socket = Gen<String>.oneOf(Gen.always(Self.jsonString(node.agentControlSocket)).eraseToAnySequence(), value.eraseToAnySequence())
            let ips = Hostile.ips.map { list in "[" + list.map { "{\"address\":\(Self.jsonString($0))}" }.joined(separator: ",") + "]" }
            let prev = Gen<String>.oneOf(ips.map { "{\"cniVersion\":\"1.0.0\",\"ips\":\($0)}" }.eraseToAnySequence(), value.eraseToAnySequence())
            let netns = Gen<String>.oneOf(Hostile.text.eraseToAnySequence(), Gen.always(real.netns).eraseToAnySequence())
            let commands = Gen<String?>.element(of: ["ADD", "DEL", "CHECK", "VERSION", "GC", "", "add"]).map { $0 ?? "" }
            var answered = 0
            var codes: [Int: Int] = [:]
            // 300 cases: about 1 in 20 reaches the agent and is refused there (code 100); with 150
            // a run once saw none, and the coverage check below failed by chance.
            await propertyCheck(count: 300, input: commands, version, socket, prev, timeout, netns, Hostile.text) { command, version, sock, prevResult, timeout, ns, text in
                let conf = "{\"cniVersion\":\(version),\"name\":\"lab-pods\",\"type\":\"redirect-cni\",\"agentSocket\":\(sock)," +
                    "\"agentTimeoutSeconds\":\(timeout),\"prevResult\":\(prevResult)}"
                // Never the enrolled pod's UID: a hostile request may not change that pod.
                let uid = text == real.uid ? text + "x" : text
                let env = ["CNI_COMMAND": command, "CNI_CONTAINERID": text, "CNI_IFNAME": text, "CNI_NETNS": ns,
                           "CNI_ARGS": "K8S_POD_NAME=\(text);K8S_POD_NAMESPACE=\(text);K8S_POD_UID=\(uid);POD_LABELS=istio.io/dataplane-mode:ambient"]
                // A quarter of the time the configuration itself is raw hostile text.
                let stdin = text.count % 4 != 1 ? conf : text + conf.prefix(text.count)
                let (status, out, stdout) = try rawPlugin(env, stdin: stdin)
                #expect(status == 0 || status == 1, "the plugin exits 0 or 1, never by a signal: \(status) for \(env) \(stdin.prefix(300))")
                // A successful DEL or CHECK prints nothing (the spec); everything else prints one JSON object.
                let silent = status == 0 && (command == "DEL" || command == "CHECK") && stdout.isEmpty
                #expect(out != nil || silent, "stdout is one JSON object: \(stdout.prefix(200)) for \(env) \(stdin.prefix(300))")
                if status == 1 { #expect(out?["code"] is Int && out?["msg"] is String, "a CNI error: \(out ?? [:])") }
                codes[status == 0 ? 0 : out?["code"] as? Int ?? -1, default: 0] += 1
                answered += 1
            }
            #expect(answered >= 300)
            // The generator reached every layer: success, a bad configuration, an unsupported version,
            // and the agent itself refusing (so hostile requests did arrive at the agent).
            for code in [0, 1, 6, 100] { #expect(codes[code, default: 0] > 0, "outcome \(code) never seen: \(codes)") }
            print("hostile CNI outcomes (exit 0, or CNI error code: count): \(codes.sorted { $0.key < $1.key })")
            #expect(node.agent?.isRunning == true)
            #expect(try podKernelState(lab, a) == before)
            #expect(try status(node).pods.map(\.uid) == [real.uid])
        }
    }

    /// `s` as a JSON string literal.
    static func jsonString(_ s: String) -> String {
        String(decoding: (try? JSONSerialization.data(withJSONObject: [s], options: [.fragmentsAllowed])) ?? Data("[\"\"]".utf8), as: UTF8.self)
            .dropFirst().dropLast().description
    }

    @Test("enrolling twice, then removing, leaves the pod's namespace as it was: pre-existing qdiscs stay, ours go, accept_local restored")
    func repeatedEnrolment() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withAgentLab("ebpf") { lab throws in
            let node = lab.nodes[0]
            let owned = try lab.addPod(on: node, name: "n1-owned"), fresh = try lab.addPod(on: node, name: "n1-fresh")
            // Another component already owns a clsact qdisc on one pod's interface.
            try lab.inNamespace(owned.netns, "tc", ["qdisc", "add", "dev", "eth0", "clsact"])
            for pod in [owned, fresh] {
                let clean = try podKernelState(lab, pod)
                let req = lab.podRequest(pod, meshed: true)
                #expect(try control(node, "add", req).enrolled == true)
                let enrolled = try podKernelState(lab, pod)
                expectCaptured(enrolled, .ebpf)
                #expect(try control(node, "add", req).enrolled == true, "a repeated ADD succeeds")
                #expect(try control(node, "check", req).ok)
                #expect(try control(node, "del", req).ok)
                #expect(try control(node, "del", req).ok, "a repeated DEL succeeds")
                let after = try podKernelState(lab, pod)
                let diff = zip(clean.split(separator: "\n", omittingEmptySubsequences: false), after.split(separator: "\n", omittingEmptySubsequences: false)).filter { $0 != $1 }
                #expect(after == clean, "\(pod.name) after DEL differs from before ADD: \(diff)")
            }
        }
    }

    @Test("control socket, ZDS socket, state directory and state file have exact modes under umask 000")
    func fileModes() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withAgentLab("ebpf", wrapper: ["/bin/sh", "-c", "umask 000; exec \"$@\"", "sh"]) { lab throws in
            let node = lab.nodes[0]
            _ = try lab.addMeshedPod(on: node, name: "n1-pod1")
            func mode(_ path: String) throws -> Int { ((try FileManager.default.attributesOfItem(atPath: path))[.posixPermissions] as? Int) ?? -1 }
            #expect(try mode(node.agentDirectory) == 0o700)
            #expect(try mode(node.agentControlSocket) == 0o600)
            #expect(try mode(node.agentZDSSocket) == 0o600)
            #expect(try mode("\(node.agentDirectory)/state.json") == 0o600)
            #expect(try mode("\(node.agentDirectory)/state.json.journal") == 0o600, "the ADD went to the journal")
        }
    }

    @Test("thousands of idle and slow connections: the agent's threads stay bounded and valid requests are answered")
    func connectionFlood() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withAgentLab("ebpf") { lab throws in
            let node = lab.nodes[0]
            let threadsBefore = try threadCount(node)
            // Pods first: spawning CNI plugins with thousands of descriptors open is the test's problem, not the agent's.
            let pods = try (0..<20).map { try lab.addPod(on: node, name: "n1-f\($0)") }
            var idle: [Socket] = []
            defer { for s in idle { s.close() } }
            for _ in 0..<3000 { if let s = try? UnixSocket.connect(path: node.agentControlSocket, timeout: 2) { idle.append(s) } }
            // Slow writers: a byte at a time, never a newline.
            let slow = (0..<50).compactMap { _ in try? UnixSocket.connect(path: node.agentControlSocket, timeout: 2) }
            defer { for s in slow { s.close() } }
            for s in slow { try? s.writeAll("{") }
            var latencies: [Double] = []
            for (i, pod) in pods.enumerated() {
                let start = Monotonic.now()
                let resp = try control(node, "add", lab.podRequest(pod, meshed: true))
                latencies.append(Monotonic.now() - start)
                #expect(resp.enrolled == true, "ADD \(i) under the flood: \(resp.error ?? "")")
                for s in slow { try? s.writeAll(" ") }
            }
            #expect(idle.count > 2000, "the flood connected (\(idle.count))")
            let threads = try threadCount(node)
            #expect(threads < threadsBefore + 16, "threads \(threadsBefore) -> \(threads) under \(idle.count) connections")
            #expect(try status(node).pods.count == 20)
            let sorted = latencies.sorted()
            print("flood: \(idle.count) idle + \(slow.count) slow connections; ADD p50 \(Int(sorted[10] * 1000)) ms, max \(Int((sorted.last ?? 0) * 1000)) ms; agent threads \(threadsBefore) -> \(threads)")
        }
    }

    func threadCount(_ node: LabNode) throws -> Int {
        let text = try String(contentsOfFile: "/proc/\(node.agent?.pid ?? 0)/status", encoding: .utf8)
        return text.split(separator: "\n").first { $0.hasPrefix("Threads:") }.flatMap { Int($0.split(separator: "\t").last ?? "") } ?? -1
    }
}

/// ``withAgentLab(_:wrapper:extra:nodes:_:)`` for async bodies (property checks are async).
/// An ebpf agent lab with one enrolled pod (the victim of hostile input): its node, the pod, its
/// kernel state and its real request, for checking afterwards that nothing of it changed.
func withVictimLab(_ body: (Lab, LabNode, LabPod, String, PodRequest) async throws -> Void) async throws {
    try await withAgentLabAsync("ebpf") { lab in
        let node = lab.nodes[0]
        let a = try lab.addMeshedPod(on: node, name: "n1-pod1")
        try await body(lab, node, a, try podKernelState(lab, a), lab.podRequest(a, meshed: true))
    }
}

func withAgentLabAsync(_ dataplane: String, _ body: (Lab) async throws -> Void) async throws {
    var options = LabOptions()
    options.podsPerNode = 0
    options.nodes = 1
    options.agentDataplane = dataplane
    let lab = Lab(options: options)
    defer { lab.teardown() }
    try lab.up()
    try await body(lab)
}

@Suite("Agent concurrency: many runtimes' requests at once", .serialized)
struct AgentConcurrencyTests {
    @Test("20 concurrent ADDs, CHECKs and DELs: every pod enrolled once, captured, then left as it was", arguments: ["ebpf", "iptables", "nftables"])
    func concurrentAdds(_ dataplane: String) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withAgentLab(dataplane) { lab throws in
            let node = lab.nodes[0]
            // Unlabelled pods: the CNI chain leaves them alone; the test plays 20 runtimes at once.
            let pods = try (0..<20).map { try lab.addPod(on: node, name: "n1-c\($0)") }
            var clean: [String: String] = [:]
            for p in pods { clean[p.name] = try podKernelState(lab, p) }
            func all(_ op: String) -> [String: ControlResponse?] {
                let answers = ConcurrentAnswers()
                let group = DispatchGroup()
                for p in pods {
                    let req = lab.podRequest(p, meshed: true), socket = node.agentControlSocket
                    group.enter()
                    DedicatedThread.detach {
                        do { answers.set(p.name, try AgentClient.call(ControlRequest(op: op, pod: req), socket: socket, timeout: 30)) } catch {
                            answers.set(p.name, ControlResponse(ok: false, error: "\(error)"))
                        }
                        group.leave()
                    }
                }
                #expect(group.wait(timeout: .now() + 120) == .success, "every \(op) answered within 120 s")
                let got = answers.value
                #expect(got.count == pods.count, "\(op): \(got.count) answers")
                return got
            }
            let added = all("add")
            #expect(added.count == 20 && added.values.allSatisfy { $0?.enrolled == true }, "\(added.filter { $0.value?.enrolled != true })")
            let s = try status(node)
            #expect(Set(s.pods.map(\.uid)) == Set(pods.map(\.identity.uid)) && s.pods.allSatisfy { $0.drift.isEmpty }, "\(s.pods.map(\.drift))")
            for p in pods { expectCaptured(try podKernelState(lab, p), DataplaneMode(rawValue: dataplane) ?? .auto) }
            let checked = all("check")
            #expect(checked.values.allSatisfy { $0?.ok == true }, "\(checked.filter { $0.value?.ok != true })")
            // Every pod is really captured: one connection each to its neighbour goes through the proxy.
            for (i, p) in pods.enumerated() {
                let dst = SocketAddress(pods[(i + 1) % pods.count].ip4, Lab.httpPort)
                #expect(try lab.request(from: p, to: dst).status == 200)
                let mine = try lab.proxyRecords(node).filter { $0.listener == 15001 && $0.pod == p.identity.uid && $0.originalDestination == dst.description }
                #expect(mine.count == 1, "\(p.name)'s connection was captured by its own proxy entry")
            }
            let removed = all("del")
            #expect(removed.values.allSatisfy { $0?.ok == true }, "\(removed.filter { $0.value?.ok != true })")
            #expect(try status(node).pods.isEmpty)
            for p in pods {
                let after = try podKernelState(lab, p)
                #expect(after == clean[p.name], "\(p.name) after DEL differs from before ADD")
            }
        }
    }
}

/// Answers collected from many threads.
private final class ConcurrentAnswers: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: [String: ControlResponse?] = [:]
    var value: [String: ControlResponse?] { lock.withLock { stored } }
    func set(_ k: String, _ v: ControlResponse?) { lock.withLock { stored[k] = v } }
}

/// Runs the plugin with exactly `env` (and PATH); returns its exit status, its stdout as a JSON
/// object (nil when stdout is not one), and stdout itself.
func rawPlugin(_ env: [String: String], stdin: String) throws -> (Int32, [String: Any]?, String) {
    var full = env
    full["PATH"] = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    let r = try Command.capture(try LabBinaries.path("redirect-cni"), [], environment: full, input: stdin, timeout: 60)
    return (r.status, (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8))) as? [String: Any], r.stdout)
}
