import AgentCore
import Dataplane
import Foundation
import NodeLab
import SystemCalls
import Testing

/// Pods made by a real container runtime: containerd's CRI plugin, told over CRI to run each pod's
/// sandbox as the kubelet tells it. containerd makes the namespace, picks the CNI configuration
/// install-cni left, passes its own CNI_ARGS and calls ADD and DEL; the agents watch the lab's API.
@Suite("Pods made by containerd over CRI", .serialized)
struct RuntimeEnrolmentTests {
    @Test("containerd's own ADD enrols a sandbox of a labelled namespace and capture works; one elsewhere is left alone; StopPodSandbox's DEL releases it",
          arguments: testedModes)
    func containerdPods(_ mode: DataplaneMode) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withLab({ o in
            o.agentDataplane = mode.rawValue
            o.kubeAPI = true
            o.podsPerNode = 0
            o.runtime = .containerd
        }) { lab in
            let n1 = lab.nodes[0], n2 = lab.nodes[1], store = try #require(lab.kube?.server.store)
            try store.create(.namespace, namespace: nil, .object(["metadata": .object([
                "name": .string("shop"), "labels": .object(["istio.io/dataplane-mode": .string("ambient")])])]))
            let peer = try lab.addPod(on: n2, name: "peer", namespace: "other")
            let plain = try lab.addPod(on: n1, name: "plain", namespace: "other")
            let app = try lab.addPod(on: n1, name: "app", namespace: "shop")
            let dst = SocketAddress(try #require(peer.ipv4), Lab.httpPort)

            // What the agent recorded came from containerd's ADD: its namespace, its pod.
            let state = try StateStore(path: "\(n1.agentDirectory)/state.json").load()
            let enrolled = try #require(state.pods[app.identity.uid]?.spec, "the runtime's ADD enrolled the pod: \(state.pods.keys)")
            #expect(app.netnsName.hasPrefix("cni-") && enrolled.netns.hasSuffix("/\(app.netnsName)"), "containerd's namespace: \(enrolled.netns)")
            #expect(enrolled.name == "app" && enrolled.namespace == "shop")
            #expect(state.pods[plain.identity.uid] == nil && state.known.values.contains { $0.uid == plain.identity.uid },
                    "a pod outside the mesh is known, not enrolled")

            #expect(try reachesProxy(lab, from: app, to: dst, listener: 15001), "outbound from the meshed sandbox is captured")
            #expect(try !reachesProxy(lab, from: plain, to: dst, listener: 15001), "the other sandbox is left alone")
            #expect(try reachesProxy(lab, from: peer, to: SocketAddress(try #require(app.ipv4), Lab.httpPort), listener: 15006, node: n1),
                    "inbound to the meshed sandbox is captured")

            try lab.removePod(app) // StopPodSandbox: containerd's DEL
            let after = try StateStore(path: "\(n1.agentDirectory)/state.json").load()
            #expect(after.pods[app.identity.uid] == nil, "the runtime's DEL released the pod")
        }
    }
}
