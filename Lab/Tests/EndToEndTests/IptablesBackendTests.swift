import Dataplane
import Foundation
import NodeLab
import SystemCalls
import Testing

@Suite("iptables backends", .serialized)
struct IptablesBackendTests {
    @Test("existing legacy rules make detection pick legacy; capture then works through iptables-legacy")
    func legacy() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withLab({ $0.podsPerNode = 2 }) { lab throws in
            let n1 = lab.nodes[0], n2 = lab.nodes[1]
            let runner1 = ProcessRunner(defaultNetns: n1.netns.path)
            #expect(IptablesBackend.detect(runner: runner1).0 == .nft, "an empty node prefers nft")
            // The node already runs legacy iptables (kube-proxy in legacy mode, say).
            for node in lab.nodes {
                try lab.inNamespace(node.netns, "iptables-legacy", ["-t", "filter", "-A", "FORWARD", "-s", "192.0.2.0/24", "-j", "ACCEPT"])
            }
            let (backend, reason) = IptablesBackend.detect(runner: runner1)
            #expect(backend == .legacy && reason.contains("legacy"), "\(reason)")
            let planes = try lab.nodes.map { node -> IptablesDataplane in
                let dp = IptablesDataplane(config: CaptureConfig(), runner: ProcessRunner(defaultNetns: node.netns.path), lockDirectory: "\(node.directory)/xtables")
                try dp.prepareNode()
                return dp
            }
            #expect(planes.allSatisfy { $0.backend == .legacy })
            let a = try #require(lab.pods.first { $0.node === n1 }), b = try #require(lab.pods.first { $0.node === n2 })
            for pod in [a, b] {
                try planes[pod.node.index - 1].enroll(lab.podSpec(pod))
                try lab.enrollInProxy(pod, spoofSource: true)
            }
            let dst = SocketAddress(b.ip4, Lab.httpPort)
            #expect(try lab.request(from: a, to: dst).status == 200)
            #expect(try lab.proxyRecords(n1).filter { $0.listener == 15001 && $0.originalDestination == dst.description }.count == 1)
            #expect(try lab.probe(b).status == 200 && lab.appRecords(b).last?.client.hasPrefix("169.254.7.127:") == true)
            let legacyRules = try lab.inNamespace(a.netns, "iptables-legacy-save", [])
            let nftRules = try lab.inNamespace(a.netns, "iptables-nft-save", [])
            #expect(legacyRules.contains("ISTIO_OUTPUT") && !nftRules.contains("ISTIO"))
            #expect(try planes[0].verify(lab.podSpec(a)).isEmpty)
            try planes[0].remove(lab.podSpec(a))
            #expect(!(try lab.inNamespace(a.netns, "iptables-legacy-save", [])).contains("ISTIO"))
        }
    }
}
