import AgentAPI
import BPFLoader
import Dataplane
import Foundation
import NodeLab
import SystemCalls
import Testing

@Suite("Crash consistency: kill -9 at random points of enrolment", .serialized)
struct ChaosTests {
    @Test("200 ADD/DEL cycles with kill -9 at random points, traffic running: no connection fails or skips capture, every pod's kernel state matches the state file",
          arguments: ["ebpf", "iptables", "nftables"])
    func killDuringEnrolment(_ dataplane: String) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withAgentLab(dataplane) { lab throws in
            let node = lab.nodes[0]
            // Unlabelled pods: the CNI chain leaves them alone; the test drives the agent directly.
            let pods = try (0..<6).map { try lab.addPod(on: node, name: "n1-c\($0)") }
            var clean: [String: String] = [:]
            for p in pods { clean[p.name] = try podKernelState(lab, p) }
            // Two meshed pods (enrolled through the CNI chain) talk all through the chaos.
            let client = try lab.addMeshedPod(on: node, name: "n1-steady-a"), server = try lab.addMeshedPod(on: node, name: "n1-steady-b")
            let traffic = SteadyTraffic(client: client, target: "\(server.ip4):\(Lab.echoPort)")
            traffic.start()
            var rng = SystemRandomNumberGenerator()
            var kills = 0, cycles = 0
            for _ in 0..<200 {
                let pod = pods[Int.random(in: 0..<pods.count, using: &rng)]
                let op = Bool.random(using: &rng) ? "add" : "del"
                let req = lab.podRequest(pod, meshed: true), socket = node.agentControlSocket
                let answered = ResultSlot<Bool>()
                DedicatedThread.detach { answered.fill((try? AgentClient.call(ControlRequest(op: op, pod: req), socket: socket, timeout: 10)) != nil) }
                if Int.random(in: 0..<4, using: &rng) == 0 {
                    usleep(UInt32.random(in: 0...4000, using: &rng))
                    node.agent?.kill9()
                    kills += 1
                    _ = answered.wait()
                    try lab.startAgent(on: node)
                } else {
                    _ = answered.wait()
                }
                cycles += 1
            }
            let load = traffic.stop()
            #expect(load.runs > 1 && load.connections > 0 && load.failed == 0, "traffic during the chaos: \(load)")
            let proxied = try lab.proxyRecords(node).filter { $0.listener == 15001 && $0.originalDestination == traffic.target }.count
            #expect(proxied == load.connections, "every connection made during the chaos was captured: \(proxied) of \(load.connections)")
            let s = try status(node)
            let enrolled = Set(s.pods.map(\.uid)).subtracting([client.identity.uid, server.identity.uid])
            var orphans: [String] = []
            for p in pods {
                let kernel = try podKernelState(lab, p)
                if enrolled.contains(p.identity.uid) {
                    #expect(try AgentClient.call(ControlRequest(op: "check", pod: lab.podRequest(p, meshed: true)), socket: node.agentControlSocket).ok,
                            "\(p.name) is in the state file and passes CHECK")
                } else if kernel != clean[p.name] {
                    let was = (clean[p.name] ?? "").split(separator: "\n", omittingEmptySubsequences: false)
                    let diff = zip(was, kernel.split(separator: "\n", omittingEmptySubsequences: false)).filter { $0 != $1 }
                    orphans.append("\(p.name): \(diff)")
                }
            }
            #expect(orphans.isEmpty, "kernel state left in pods the state file does not list: \(orphans)")
            if dataplane == "ebpf" {
                // The node side: nothing of ours on any host veth (the primary CNI owns them), and
                // the node's socket programs linked once each.
                var qdiscs: [String] = [], filters: [String] = []
                for dev in try interfaces(lab, node.netns) {
                    if try lab.inNamespace(node.netns, "tc", ["qdisc", "show", "dev", dev]).contains("clsact") { qdiscs.append(dev) }
                    if try !lab.inNamespace(node.netns, "tc", ["filter", "show", "dev", dev, "ingress"]).isEmpty { filters.append(dev) }
                }
                #expect(qdiscs.isEmpty && filters.isEmpty, "host veths with clsact \(qdiscs), with filters \(filters)")
                let links = try nodeLinks(node)
                #expect(EBPFDataplane.nodePrograms.allSatisfy { links.contains("name \($0.name)") }, "\(links)")
            }
            // Pins (ebpf): per enrolled pod one sk_lookup link and, where the kernel has them, the two
            // egress guard links; nothing else.
            if dataplane == "ebpf" {
                let links = try FileManager.default.contentsOfDirectory(atPath: "\(node.bpfPinRoot)/links")
                let want = enrolled.union([client.identity.uid, server.identity.uid])
                let kinds = ["-sklookup"] + (BPFObject.netfilterProgramsSupported ? ["-nf-ipv4", "-nf-ipv6"] : [])
                for kind in kinds {
                    #expect(Set(links.filter { $0.hasSuffix(kind) }.map { String($0.dropLast(kind.count)) }) == want,
                            "\(kind) link pins \(links) vs enrolled \(enrolled) and the two steady pods")
                }
                #expect(links.count == want.count * kinds.count, "no other pin: \(links)")
            }
            #expect(s.pods.allSatisfy { $0.drift.isEmpty }, "\(s.pods.map(\.drift))")
            // Every pod left enrolled is really captured, and so is one enrolled now (the chaos may end
            // with none enrolled): a connection from each goes through the proxy under its own entry.
            if enrolled.isEmpty {
                #expect(try AgentClient.call(ControlRequest(op: "add", pod: lab.podRequest(pods[0], meshed: true)), socket: node.agentControlSocket).enrolled == true)
            }
            for p in pods where enrolled.isEmpty ? p === pods[0] : enrolled.contains(p.identity.uid) {
                let dst = SocketAddress(server.ip4, Lab.httpPort)
                #expect(try lab.request(from: p, to: dst).status == 200)
                #expect(try lab.proxyRecords(node).contains { $0.listener == 15001 && $0.pod == p.identity.uid && $0.originalDestination == dst.description },
                        "\(p.name) is captured")
            }
            print("chaos (\(dataplane)): \(cycles) cycles, \(kills) kills, \(enrolled.count) pods enrolled at the end, \(orphans.count) orphans; traffic \(load)")
            #expect(kills > 20, "the kills happened (\(kills))")
        }
    }
}

/// A load client run again and again (2 s each) from `client` to `target` until stopped, with its
/// totals summed: the traffic spans whatever happens meanwhile.
final class SteadyTraffic: @unchecked Sendable {
    struct Totals: CustomStringConvertible {
        var runs = 0, ok = 0, failed = 0, connections = 0
        var errors: [String] = []
        var description: String { "\(runs) runs, \(connections) connections, \(ok) ok, \(failed) failed \(errors.prefix(3))" }
    }
    let client: LabPod
    let target: String
    private let lock = NSLock()
    private var totals = Totals()
    private var stopping = false
    private let done = DispatchSemaphore(value: 0)

    init(client: LabPod, target: String) { self.client = client; self.target = target }

    func start() {
        DedicatedThread.detach { [self] in
            while !lock.withLock({ stopping }) { runOnce() }
            done.signal()
        }
    }

    /// Stops after the current run and returns the totals.
    func stop() -> Totals {
        lock.withLock { stopping = true }
        done.wait()
        return lock.withLock { totals }
    }

    private func runOnce() {
        let args = ["client", "--netns", client.netns.path, "--target", target, "--mode", "short", "--duration", "2"]
        do {
            let out = try Command.run(try LabBinaries.path("lab-app"), args)
            let j = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any] ?? [:]
            lock.withLock {
                totals.runs += 1
                totals.ok += j["ok"] as? Int ?? 0
                totals.failed += j["failed"] as? Int ?? 0
                totals.connections += j["connections"] as? Int ?? 0
                if let e = j["error"] as? String { totals.errors.append(e) }
            }
        } catch {
            lock.withLock { totals.runs += 1; totals.failed += 1; totals.errors.append("\(error)") }
        }
    }
}
