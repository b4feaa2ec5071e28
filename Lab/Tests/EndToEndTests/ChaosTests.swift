import AgentAPI
import Foundation
import NodeLab
import SystemCalls
import Testing

@Suite("Crash consistency: kill -9 at random points of enrolment", .serialized)
struct ChaosTests {
    @Test("200 ADD/DEL cycles with kill -9 at random points: afterwards every pod's kernel state matches the state file")
    func killDuringEnrolment() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withAgentLab("ebpf") { lab throws in
            let node = lab.nodes[0]
            // Unlabelled pods: the CNI chain leaves them alone; the test drives the agent directly.
            let pods = try (0..<6).map { try lab.addPod(on: node, name: "n1-c\($0)") }
            var clean: [String: String] = [:]
            for p in pods { clean[p.name] = try podKernelState(lab, p) }
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
            let s = try status(node)
            let enrolled = Set(s.pods.map(\.uid))
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
            // Pins: one sk_lookup link per enrolled pod, nothing else.
            let links = (try? FileManager.default.contentsOfDirectory(atPath: "\(node.bpfPinRoot)/links")) ?? []
            #expect(Set(links.map { $0.replacingOccurrences(of: "-sklookup", with: "") }) == enrolled, "link pins \(links) vs enrolled \(enrolled)")
            #expect(s.pods.allSatisfy { $0.drift.isEmpty }, "\(s.pods.map(\.drift))")
            // Every enrolled pod is really captured: a connection from it goes through the proxy.
            if let p = pods.first(where: { enrolled.contains($0.identity.uid) }), let dst = pods.first(where: { $0 !== p })?.ipv4 {
                let before = try lab.proxyRecords(node).count
                _ = try? lab.request(from: p, to: SocketAddress(dst, Lab.httpPort))
                #expect(try lab.proxyRecords(node).count > before, "\(p.name) is captured")
            }
            print("chaos: \(cycles) cycles, \(kills) kills, \(enrolled.count) pods enrolled at the end, \(orphans.count) orphans")
            #expect(kills > 20, "the kills happened (\(kills))")
        }
    }
}
