import AgentCore
import KubeClient
import Testing

/// Which /proc/PID/cgroup texts place a process in a pod, in both of the kubelet's layouts.
@Suite("pod namespace scan")
struct PodNamespaceScanTests {
    let uid = "3f2a1c4e-9b7d-4e21-8c55-0a1b2c3d4e5f"

    @Test("cgroupfs and systemd layouts name the pod; other pods, prefixes and containers alone do not")
    func layouts() {
        #expect(PodNamespaceScan.names(pod: uid, cgroupText: "0::/kubepods/besteffort/pod\(uid)/abc123\n"))
        #expect(PodNamespaceScan.names(pod: uid, cgroupText: "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod\(uid.replacingOccurrences(of: "-", with: "_")).slice/cri-containerd-abc.scope\n"))
        #expect(PodNamespaceScan.names(pod: uid, cgroupText: "12:memory:/x\n0::/kubepods/pod\(uid)\n"))
        #expect(!PodNamespaceScan.names(pod: uid, cgroupText: "0::/kubepods/besteffort/pod\(uid)x/abc\n"), "a longer UID is another pod")
        #expect(!PodNamespaceScan.names(pod: uid, cgroupText: "0::/kubepods/besteffort/podffffffff-9b7d-4e21-8c55-0a1b2c3d4e5f\n"))
        #expect(!PodNamespaceScan.names(pod: uid, cgroupText: "0::/system.slice/kubelet.service\n"))
        // A group a process of another pod made below its own: the first pod-level component decides.
        let other = "0b0b0b0b-1111-2222-3333-444444444444"
        #expect(!PodNamespaceScan.names(pod: uid, cgroupText: "0::/kubepods/besteffort/pod\(other)/ctr/pod\(uid)\n"))
        #expect(!PodNamespaceScan.names(pod: uid, cgroupText: "0::/kubepods.slice/kubepods-pod\(other.replacingOccurrences(of: "-", with: "_")).slice/x/pod\(uid)\n"))
    }
}

/// istio-cni's selection rules over the API's objects.
@Suite("mesh rules")
struct MeshRulesTests {
    func pod(_ labels: [String: String] = [:], annotations: [String: String] = [:], namespace: String = "shop",
             hostNetwork: Bool = false, phase: String = "Running") -> Pod {
        Pod(metadata: ObjectMeta(name: "p", namespace: namespace, uid: "u", labels: labels, annotations: annotations),
            spec: Pod.Spec(nodeName: "n1", hostNetwork: hostNetwork), status: Pod.Status(phase: phase))
    }
    func ns(_ labels: [String: String] = [:], name: String = "shop") -> Namespace { Namespace(metadata: ObjectMeta(name: name, labels: labels)) }

    @Test("ambient on the pod or its namespace; none opts out; the exclusions win")
    func rules() {
        let r = MeshRules(), ambient = ["istio.io/dataplane-mode": "ambient"], none = ["istio.io/dataplane-mode": "none"]
        #expect(r.decide(pod(), namespace: ns()).inMesh == false)
        #expect(r.decide(pod(ambient), namespace: ns()).inMesh == true)
        #expect(r.decide(pod(), namespace: ns(ambient)).inMesh == true)
        #expect(r.decide(pod(none), namespace: ns(ambient)).inMesh == false)
        #expect(r.decide(pod(ambient, hostNetwork: true), namespace: ns()).inMesh == false)
        #expect(r.decide(pod(ambient, annotations: ["sidecar.istio.io/status": "{}"]), namespace: ns()).inMesh == false)
        #expect(r.decide(pod(ambient, annotations: ["ambient.istio.io/redirection": "disabled"]), namespace: ns()).inMesh == false)
        #expect(r.decide(pod(ambient, namespace: "kube-system"), namespace: ns(name: "kube-system")).inMesh == false)
        #expect(r.decide(pod(ambient, phase: "Succeeded"), namespace: ns()).inMesh == false)
        var custom = MeshRules()
        custom.excludedNamespaces = ["shop"]
        #expect(custom.decide(pod(ambient), namespace: ns()).inMesh == false)
    }

    @Test("a pod being deleted stays in the mesh until it has finished; an unknown namespace is no decision, unless the pod decides")
    func deletionAndUnknownNamespace() {
        let r = MeshRules(), ambient = ["istio.io/dataplane-mode": "ambient"]
        var deleting = pod(ambient)
        deleting.metadata.deletionTimestamp = "2026-12-07T12:00:00Z"
        #expect(r.decide(deleting, namespace: ns()).inMesh == true, "its author decides how long it runs after the delete")
        #expect(r.decide(pod(), namespace: nil).inMesh == nil, "the namespace's label would decide: no guess")
        #expect(r.decide(pod(ambient), namespace: nil).inMesh == true)
        #expect(r.decide(pod(["istio.io/dataplane-mode": "none"]), namespace: nil).inMesh == false)
    }
}
