import Foundation
import Glibc
import NodeLab
import SystemCalls
import Testing

@Suite("The node lab: real CNI pods, mesh proxy, kubelet probes", .serialized)
struct LabTests {
    @Test("pods get addresses from host-local in their node's subnet, both families")
    func addresses() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withLab { lab in
            #expect(lab.pods.count == 4)
            for pod in lab.pods {
                let v4 = try #require(pod.ipv4)
                #expect(v4.description.hasPrefix("10.244.\(pod.node.index).") && v4.description != "10.244.\(pod.node.index).1")
                let v6 = try #require(pod.ipv6)
                #expect(v6.description.hasPrefix("fd00:10:244:\(pod.node.index)::"))
                let ipam = try FileManager.default.contentsOfDirectory(atPath: "\(pod.node.directory)/ipam/lab-pods")
                #expect(ipam.contains(v4.description), "host-local keeps its lease file")
            }
            #expect(Set(lab.pods.compactMap(\.ipv4)).count == 4)
        }
    }

    @Test("pods reach each other same-node and cross-node, IPv4 and IPv6; the app sees the real client")
    func podToPod() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withLab { lab in
            let a = lab.pods[0], sameNode = lab.pods[1], otherNode = lab.pods[2]
            for target in [sameNode, otherNode] {
                for ip in target.addresses {
                    let r = try lab.request(from: a, to: SocketAddress(ip, Lab.httpPort))
                    #expect(r.status == 200)
                    #expect(r.body.contains("\"pod\":\"\(target.name)\""))
                    let client = ip.isIPv6 ? "[\(a.ip6)]" : a.ip4.description
                    #expect(r.body.contains("\"client\":\"\(client):"), "the app sees the pod's own address: \(r.body)")
                }
            }
        }
    }

    @Test("the kubelet stand-in probes every pod's /healthz from the node")
    func probes() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withLab { lab in
            for pod in lab.pods {
                let r = try lab.probe(pod)
                #expect(r.status == 200 && r.body == "ok\n")
                let seen = try #require(lab.appRecords(pod).last { $0.path == "/healthz" })
                // Without capture, a probe comes from the node's bridge address.
                #expect(seen.client.hasPrefix("10.244.\(pod.node.index).1:"))
            }
            let r6 = try lab.probe(lab.pods[0], ipv6: true)
            #expect(r6.status == 200)
        }
    }

    @Test("the proxy forwards a connection handed to it explicitly, same-node and cross-node")
    func explicitProxy() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withLab { lab in
            for pod in lab.pods { try lab.enrollInProxy(pod, spoofSource: false) }
            let a = lab.pods[0]
            for target in [lab.pods[1], lab.pods[2]] {
                let dst = SocketAddress(target.ip4, Lab.httpPort)
                let r = try lab.requestViaProxy(from: a, to: dst)
                #expect(r.status == 200 && r.body.contains(target.name))
                let out = try lab.proxyRecords(a.node).filter { $0.listener == 15001 && $0.originalDestination == dst.description }
                #expect(out.count == 1 && out.first?.method == "explicit" && out.first?.upstream == "\(target.ip4):15008")
                let inbound = try lab.proxyRecords(target.node).filter { $0.listener == 15008 && $0.originalDestination == dst.description }
                #expect(inbound.count == 1 && inbound.first?.error == nil)
            }
        }
    }

    @Test("the load client measures short and long connections through real pods")
    func loadClient() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withLab { lab in
            let a = lab.pods[0], b = lab.pods[2]
            for mode in ["short", "long"] {
                let out = try Command.run(try LabBinaries.path("lab-app"), [
                    "client", "--netns", a.netns.path, "--target", "\(b.ip4):\(Lab.echoPort)",
                    "--mode", mode, "--duration", "0.3", "--limit", "50",
                ])
                let json = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
                #expect((json["ok"] as? Int ?? 0) > 0 && (json["failed"] as? Int) == 0, "\(mode): \(out)")
            }
        }
    }

    @Test("redirect-lab up leaves a lab running that status, exec and the agent's tools reach; down removes all of it")
    func keptLab() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        let cli = try LabBinaries.path("redirect-lab")
        let up = try Command.capture(cli, ["up", "--dataplane", "ebpf"])
        defer { _ = try? Command.capture(cli, ["down"]) }
        #expect(up.status == 0, "\(up.stdout)\(up.stderr)")
        let kept = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "/run/redirect-lab/kept-lab.json"))) as? [String: Any])
        let runID = try #require(kept["runID"] as? String), keeper = try #require(kept["pid"] as? Int)
        #expect(up.stdout.contains("n1-pod1") && up.stdout.contains("redirect-lab exec"), "\(up.stdout)")
        #expect(kill(Int32(keeper), 0) == 0, "the keeper outlives `up`")
        let status = try Command.run(cli, ["status"])
        #expect(status.contains("agent on n1: ebpf, 2 pods, proxy connected"), "\(status)")
        // A command in a pod: its connection is captured by the lab's own proxy.
        let outsider = try #require((kept["pods"] as? [[String: Any]])?.first { $0["name"] as? String == "n2-outsider" })
        let target = "\(try #require((outsider["addresses"] as? [String])?.first)):\(Lab.httpPort)"
        let got = try Command.run(cli, ["exec", "n1-pod1", "--", try LabBinaries.path("lab-app"), "get", "--target", target, "--path", "/whoami"])
        #expect(got.contains("\"status\":200"), "\(got)")
        let records = try String(contentsOfFile: "/run/redirect-lab/\(runID)/n1/proxy-connections.jsonl", encoding: .utf8)
        #expect(records.contains("\"originalDestination\":\"\(target)\""), "\(records)")
        let maps = try Command.run(try LabBinaries.path("redirect-agent"), ["maps", "--pin-root", "/run/redirect-lab/\(runID)/n1/bpffs/redirect-agent",
                                                                           "--control-socket", "/run/redirect-lab/\(runID)/n1/agent/control.sock"])
        #expect(maps.contains("default/n1-pod1"), "\(maps)")

        let down = try Command.run(cli, ["down"])
        #expect(down.contains("is down"))
        let cmdline = FileManager.default.contents(atPath: "/proc/\(keeper)/cmdline") ?? Data()
        #expect(!String(decoding: cmdline, as: UTF8.self).contains(runID), "the keeper is gone (at most a zombie its reaper has not collected)")
        #expect(!FileManager.default.fileExists(atPath: "/run/redirect-lab/\(runID)") && !FileManager.default.fileExists(atPath: "/run/redirect-lab/kept-lab.json"))
        #expect(try !Command.run("ip", ["netns", "list"]).contains(runID))
        #expect(try Command.capture(cli, ["status"]).status != 0, "nothing is up")
    }

    @Test("teardown leaves no namespace, link or process, also after a failure inside the lab")
    func teardownLeavesNothing() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        var runID = ""
        struct Boom: Error {}
        #expect(throws: Boom.self) {
            try withLab { lab in
                runID = lab.options.runID
                #expect(try namespaces(prefix: runID).count == 6)
                #expect(try processes(mentioning: lab.directory).count >= 6)
                throw Boom()
            }
        }
        #expect(try namespaces(prefix: runID).isEmpty)
        #expect(try processes(mentioning: "\(Lab.runRoot)/\(runID)").isEmpty)
        #expect(!FileManager.default.fileExists(atPath: "\(Lab.runRoot)/\(runID)"))
        let links = try Command.run("ip", ["-o", "link", "show"])
        #expect(!links.contains("to-n"), "no inter-node veth leaked into the root namespace")
    }
}
