import ArgumentParser
import Foundation
import NodeLab
import SystemCalls

/// `redirect-lab demo`: 2 nodes x 2 pods, traffic and probes, what flowed, teardown.
struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Bring up 2 nodes x 2 pods, run traffic and kubelet probes, print what flowed, tear down.")
    @Flag(help: "No IPv6 addresses.") var noIPv6 = false

    func run() throws {
        var options = LabOptions()
        options.ipv6 = !noIPv6
        let lab = Lab(options: options)
        let signals = tearDownOnSignal(lab)
        defer { lab.teardown(); _ = signals }
        say("lab \(options.runID): 2 nodes x 2 pods through CNI (bridge + host-local, loopback)")
        try lab.up()
        for pod in lab.pods {
            say("  \(pod.node.name)/\(pod.name)  \(pod.addresses.map(\.description).joined(separator: ", "))  netns \(pod.netnsName)")
            try lab.enrollInProxy(pod, spoofSource: false)
        }
        let p = lab.pods
        say("\ntraffic (no capture):")
        for (from, to) in [(p[0], p[1]), (p[0], p[2]), (p[3], p[0])] {
            let target = SocketAddress(to.ipv4!, Lab.httpPort)
            let direct = try lab.request(from: from, to: target)
            say("  direct      \(from.name) -> \(to.name) \(target): \(direct.status) \(direct.body.trimmed)")
            let proxied = try lab.requestViaProxy(from: from, to: target)
            say("  via proxy   \(from.name) -> \(to.name) \(target): \(proxied.status) \(proxied.body.trimmed)")
        }
        if let v6 = p[2].ipv6 {
            let r = try lab.request(from: p[0], to: SocketAddress(v6, Lab.httpPort))
            say("  direct IPv6 \(p[0].name) -> \(p[2].name): \(r.status) \(r.body.trimmed)")
        }
        say("\nkubelet probes (from each node's namespace):")
        for pod in lab.pods {
            let r = try lab.probe(pod)
            let seen = lab.appRecords(pod).last { $0.path == "/healthz" }?.client ?? "?"
            say("  \(pod.node.name) -> \(pod.name) /healthz: \(r.status) \(r.body.trimmed)  (app saw source \(seen))")
        }
        say("\nproxy records:")
        for node in lab.nodes {
            for r in lab.proxyRecords(node) {
                say("  \(node.name) :\(r.listener) \(r.client) -> \(r.originalDestination) [\(r.method)] upstream \(r.upstream)\(r.error.map { " ERROR \($0)" } ?? "")")
            }
        }
        say("\ntearing down")
    }
}

func say(_ s: String) { print(s); fflush(stdout) }

extension String {
    var trimmed: String { trimmingCharacters(in: .whitespacesAndNewlines) }
}
