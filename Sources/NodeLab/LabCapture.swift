import BPFLoader
import Dataplane
import Foundation
import SystemCalls

extension Lab {
    /// The dataplane's view of a lab pod.
    public func podSpec(_ pod: LabPod) -> PodSpec {
        PodSpec(uid: pod.identity.uid, name: pod.name, namespace: pod.identity.namespace, netns: pod.netns.path, ips: pod.addresses)
    }
}

/// Capture in the lab: one dataplane per node, run for that node's namespace, and the enrolment
/// steps an agent performs (dataplane first, then the proxy learns the pod).
public final class LabCapture: @unchecked Sendable {
    /// The lab.
    public let lab: Lab
    /// The mode.
    public let mode: DataplaneMode
    private var dataplanes: [String: Dataplane] = [:]
    private var configs: [String: CaptureConfig] = [:]
    private var enrolled: [String: LabPod] = [:]
    private let lock = NSLock()

    /// Creates a dataplane per node with `config(node)` and prepares each node.
    public init(lab: Lab, mode: DataplaneMode, config: (LabNode) -> CaptureConfig = { _ in CaptureConfig() }) throws {
        self.lab = lab
        self.mode = mode
        for node in lab.nodes {
            let c = config(node)
            let dp = try LabCapture.make(mode: mode, node: node, config: c)
            try dp.prepareNode()
            dataplanes[node.name] = dp
            configs[node.name] = c
        }
    }

    static func make(mode: DataplaneMode, node: LabNode, config: CaptureConfig) throws -> Dataplane {
        let runner = ProcessRunner(defaultNetns: node.netns.path)
        switch mode {
        case .iptables, .auto:
            return IptablesDataplane(config: config, runner: runner, lockDirectory: "\(node.directory)/xtables")
        case .ebpf:
            try BPFFS.ensureMounted(node.bpffsMount)
            var options = EBPFOptions(objectPath: try LabBinaries.bpfObject())
            options.pinRoot = node.bpfPinRoot
            options.nodeNetns = node.netns
            return try EBPFDataplane(config: config, options: options, runner: runner)
        }
    }

    /// Drops `node`'s dataplane and builds a new one from the same pins and config, as an agent
    /// restart does; the old instance's kernel objects stay attached while it goes.
    public func restartDataplane(_ node: LabNode) throws {
        lock.withLock { dataplanes[node.name] = nil }
        let dp = try LabCapture.make(mode: mode, node: node, config: configs[node.name]!)
        try dp.prepareNode()
        lock.withLock { dataplanes[node.name] = dp }
    }

    /// The dataplane of `node`.
    public func dataplane(_ node: LabNode) -> Dataplane { lock.withLock { dataplanes[node.name]! } }

    /// Captures `pod` and hands it to its node's proxy.
    public func enroll(_ pod: LabPod) throws {
        try dataplane(pod.node).enroll(lab.podSpec(pod))
        try lab.enrollInProxy(pod, spoofSource: true)
        lock.withLock { enrolled[pod.identity.uid] = pod }
    }

    /// Takes `pod` out of the mesh.
    public func remove(_ pod: LabPod) throws {
        try? lab.removeFromProxy(pod)
        try dataplane(pod.node).remove(lab.podSpec(pod))
        lock.withLock { _ = enrolled.removeValue(forKey: pod.identity.uid) }
    }

    /// Enrolled pods on `node`.
    public func enrolledPods(on node: LabNode) -> [LabPod] { lock.withLock { enrolled.values.filter { $0.node === node } } }

    /// Changes the probe IPs on `node` while it runs.
    public func setProbeIPs(on node: LabNode, v4: IPAddress, v6: IPAddress) throws {
        try dataplane(node).setProbeIPs(v4: v4, v6: v6, pods: enrolledPods(on: node).map(lab.podSpec))
    }

    /// Removes every pod's capture and the node-wide parts.
    public func teardown() {
        for pod in lock.withLock({ Array(enrolled.values) }) { try? remove(pod) }
        for dp in dataplanes.values { try? dp.uninstallNode() }
    }
}
