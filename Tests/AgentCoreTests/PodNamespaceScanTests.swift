import AgentCore
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
    }
}
