import AgentAPI
import AgentCore
import Dataplane
import Foundation
import NodeLab
import SystemCalls
import Testing

/// Enrolment driven by the cluster's own state, as on a real cluster: the runtime passes only the
/// K8S_* arguments, the agents watch the lab's API server, and labels are set with the real kubectl.
@Suite("Enrolment from the Kubernetes API", .serialized)
struct KubeEnrolmentTests {
    /// A lab whose agents watch the stand-in API, with no pods yet.
    func withKubeLab(mode: DataplaneMode = .ebpf, nodes: Int = 2, startProxies: Bool = true, _ body: (Lab) throws -> Void) throws {
        try withLab({ o in
            o.agentDataplane = mode.rawValue
            o.kubeAPI = true
            o.podsPerNode = 0
            o.nodes = nodes
            o.startProxies = startProxies
        }, body)
    }

    /// The agent's enrolled pods on `node`, by name.
    func enrolled(_ node: LabNode) throws -> [String] {
        let r = try AgentClient.call(ControlRequest(op: "status"), socket: node.agentControlSocket)
        return (r.status?.pods ?? []).map { String($0.pod.split(separator: "/").last ?? "") }.sorted()
    }

    func annotation(_ lab: Lab, _ pod: LabPod) throws -> String {
        try lab.kubectl(["get", "pod", pod.name, "-n", pod.identity.namespace, "-o", "jsonpath={.metadata.annotations.ambient\\.istio\\.io/redirection}"])
    }

    @Test("kubectl label on a namespace enrols its running pod, on the pod takes it out again; the annotations follow", arguments: testedModes)
    func labelsDriveEnrolment(_ mode: DataplaneMode) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withKubeLab(mode: mode) { lab in
            let n1 = lab.nodes[0], n2 = lab.nodes[1]
            let app = try lab.addPod(on: n1, name: "shop-app", namespace: "shop")
            let peer = try lab.addPod(on: n2, name: "peer", namespace: "other")
            let dst = SocketAddress(try #require(peer.ipv4), Lab.httpPort)
            #expect(try enrolled(n1).isEmpty)
            #expect(try !reachesProxy(lab, from: app, to: dst), "not labelled: not captured")

            _ = try lab.kubectl(["label", "namespace", "shop", "istio.io/dataplane-mode=ambient"])
            try waitFor("the agent enrols the running pod", seconds: 30) { try enrolled(n1) == ["shop-app"] }
            #expect(try reachesProxy(lab, from: app, to: dst), "labelled namespace: captured")
            try waitFor("the pod's annotation says enabled", seconds: 30) { try annotation(lab, app) == "enabled" }

            // Istio's per-pod annotation, set with kubectl on the running pod: inbound goes direct.
            let inward = SocketAddress(try #require(app.ipv4), Lab.httpPort)
            func inboundCaptured() throws -> Bool { try reachesProxy(lab, from: peer, to: inward, listener: 15006, node: n1) }
            #expect(try inboundCaptured(), "the presence: inbound is captured")
            _ = try lab.kubectl(["annotate", "pod", "shop-app", "-n", "shop", "ambient.istio.io/bypass-inbound-capture=true"])
            try waitFor("inbound capture is bypassed", seconds: 30) { try !inboundCaptured() }
            #expect(try reachesProxy(lab, from: app, to: dst), "outbound still captured")

            // DNS capture is on by default; the pod's annotation turns it off and on again.
            func dnsCaptured() throws -> Bool {
                try dnsQuery(app, server: n1.clusterDNS, name: DNSCaptureTests.meshName)["answers"] as? [String] == [DNSCaptureTests.proxyAnswer4]
            }
            #expect(try dnsCaptured(), "the presence: DNS is captured")
            _ = try lab.kubectl(["annotate", "pod", "shop-app", "-n", "shop", "ambient.istio.io/dns-capture=false"])
            try waitFor("DNS capture is off", seconds: 30) { try !dnsCaptured() }
            _ = try lab.kubectl(["annotate", "--overwrite", "pod", "shop-app", "-n", "shop", "ambient.istio.io/dns-capture=true"])
            try waitFor("DNS capture is on again", seconds: 30) { try dnsCaptured() }

            // A pod created in the labelled namespace is enrolled at its ADD.
            let second = try lab.addPod(on: n1, name: "shop-app-2", namespace: "shop")
            #expect(try enrolled(n1) == ["shop-app", "shop-app-2"])
            #expect(try reachesProxy(lab, from: second, to: dst))

            _ = try lab.kubectl(["label", "pod", "shop-app", "-n", "shop", "istio.io/dataplane-mode=none"])
            try waitFor("the agent releases the pod", seconds: 30) { try enrolled(n1) == ["shop-app-2"] }
            #expect(try !reachesProxy(lab, from: app, to: dst), "opted out: not captured")
            try waitFor("the annotation is removed", seconds: 30) { try annotation(lab, app).isEmpty }

            _ = try lab.kubectl(["delete", "pod", "shop-app-2", "-n", "shop"])
            try waitFor("a pod deleted from the API is removed", seconds: 30) { try enrolled(n1).isEmpty }
        }
    }

    @Test("an ADD for a pod the API does not know fails, so the runtime retries and no meshed pod starts uncaptured")
    func unknownPodFailsAdd() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withKubeLab(nodes: 1) { lab in
            #expect(throws: (any Error).self, "the CNI chain fails") {
                try lab.addPod(on: lab.nodes[0], name: "ghost", namespace: "shop", inAPI: false)
            }
            let log = try String(contentsOfFile: try #require(lab.nodes[0].agent?.logPath), encoding: .utf8)
            #expect(log.contains("apiUnavailable") || log.contains("not known to the Kubernetes API"), "\(log.suffix(2000))")
        }
    }

    @Test("while the API is down capture stays as it is and the agent catches up when it returns; an agent restart keeps what it knew")
    func outageAndRestart() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withKubeLab(nodes: 1) { lab in
            let node = lab.nodes[0], server = try #require(lab.kube?.server)
            _ = try lab.addPod(on: node, name: "a", namespace: "shop")
            func label(_ value: String) throws {
                try server.store.patch(.pod, namespace: "shop", name: "a", .object(["metadata": .object(["labels": .object([
                    "istio.io/dataplane-mode": .string(value)])])]))
            }
            try label("ambient")
            try waitFor("enrolled", seconds: 30) { try enrolled(node) == ["a"] }

            server.stop()
            // A membership pass while the API is unreachable: a proxy's new snapshot wakes one,
            // which says the API is unreachable (once the informers have noticed).
            let log = { (try? String(contentsOfFile: node.agent?.logPath ?? "", encoding: .utf8)) ?? "" }
            try waitFor("the agent notices the outage", seconds: 30) { log().contains("Kubernetes API unavailable, retrying") }
            node.proxy?.stop()
            try lab.startProxy(on: node)
            try waitFor("a membership pass during the outage", seconds: 30) { log().contains("the Kubernetes API is unreachable: enrolled pods stay") }
            #expect(try enrolled(node) == ["a"], "an unreachable API removes nothing")
            try label("none") // a change the agent cannot see yet
            try server.start()
            try waitFor("the agent catches up once the API is back", seconds: 30) { try enrolled(node).isEmpty }

            try label("ambient")
            try waitFor("enrolled again", seconds: 30) { try enrolled(node) == ["a"] }
            node.agent?.stop()
            try label("none")
            try lab.startAgent(on: node)
            try waitFor("a change made while the agent was down applies after its restart", seconds: 30) { try enrolled(node).isEmpty }
            node.agent?.stop()
            try label("ambient")
            try lab.startAgent(on: node)
            try waitFor("the restarted agent still knows the running pod, and enrols it", seconds: 30) { try enrolled(node) == ["a"] }
        }
    }

    @Test("a membership pass that waits on the API about one pod holds up no request; the pod is released once the API says it is gone")
    func slowAPIHoldsNothingUp() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withKubeLab(nodes: 1) { lab in
            let node = lab.nodes[0], server = try #require(lab.kube?.server)
            try server.store.create(.namespace, namespace: nil, .object(["metadata": .object([
                "name": .string("shop"), "labels": .object(["istio.io/dataplane-mode": .string("ambient")])])]))
            _ = try lab.addPod(on: node, name: "a", namespace: "shop")
            #expect(try enrolled(node) == ["a"])
            // The watch says the pod is gone; the agent asks the API directly before it lets go,
            // and the API is slow to answer that one question.
            let path = "/api/v1/namespaces/shop/pods/a"
            server.hold(path)
            defer { server.release(path) }
            _ = try server.store.delete(.pod, namespace: "shop", name: "a")
            try waitFor("the agent asks the API about the pod", seconds: 30) { server.heldRequests > 0 }
            // Meanwhile requests are answered at once, not after that GET's 5 s timeout.
            let answer = try AgentClient.call(ControlRequest(op: "status"), socket: node.agentControlSocket, timeout: 3)
            #expect(answer.status?.pods.map(\.pod) == ["shop/a"], "still enrolled while the API has not confirmed it gone")
            _ = try lab.addPod(on: node, name: "b", namespace: "shop")
            #expect(try enrolled(node).contains("b"))
            server.release(path)
            // The next pass (b's arrival started one; another comes every 30 s) hears it is gone.
            try waitFor("released once the API confirms it gone", seconds: 45) { try enrolled(node) == ["b"] }
        }
    }

    @Test("a running pod the agent has no record of is found by its processes' cgroup when it is labelled")
    func unrecordedPod() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withKubeLab(nodes: 1) { lab in
            let node = lab.nodes[0]
            let pod = try lab.addPod(on: node, name: "old", namespace: "shop")
            // As if the agent had been installed after the pod started: no record of its ADD.
            node.agent?.stop()
            StateStore(path: node.agentDirectory + "/state.json").remove()
            try lab.startAgent(on: node)
            _ = try lab.kubectl(["label", "namespace", "shop", "istio.io/dataplane-mode=ambient"])
            try waitFor("the agent finds and enrols the pod", seconds: 30) { try enrolled(node) == ["old"] }
            let status = try AgentClient.call(ControlRequest(op: "status"), socket: node.agentControlSocket).status
            #expect(status?.pods.first?.ips.contains(try #require(pod.ipv4).description) == true, "its addresses read from its namespace")
            let log = try String(contentsOfFile: try #require(node.agent?.logPath), encoding: .utf8)
            #expect(log.contains("found by its processes"), "enrolled through the scan, not a record: \(log.suffix(1500))")
        }
    }

    @Test("a pod's annotation says pending until a proxy has it, then enabled as soon as the proxy's snapshot is through")
    func pendingUntilProxy() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withKubeLab(nodes: 1, startProxies: false) { lab in
            let node = lab.nodes[0]
            let pod = try lab.addPod(on: node, name: "p", namespace: "shop", labels: ["istio.io/dataplane-mode": "ambient"])
            #expect(try enrolled(node) == ["p"], "enrolled at its ADD, with no proxy yet")
            try waitFor("pending without a proxy", seconds: 30) { try annotation(lab, pod) == "pending" }
            try lab.startProxy(on: node)
            // Well under the agent's 30 s periodic pass: the proxy's snapshot itself triggers one.
            try waitFor("enabled once the proxy has its snapshot", seconds: 10) { try annotation(lab, pod) == "enabled" }
        }
    }
}
