import AgentAPI
import BPFLoader
import Dataplane
import Foundation
import Synchronization
import SystemCalls

extension Lab {
    /// `config` with the node's proxy and kubelet cgroups filled in where it names none (when the
    /// lab runs them in cgroups of their own).
    public func identities(_ config: CaptureConfig, _ node: LabNode) throws -> CaptureConfig {
        guard options.identities else { return config }
        var c = config
        if c.proxyCgroup == nil { c.proxyCgroup = try Cgroup(path: node.proxyCgroupPath) }
        if c.kubeletCgroup == nil { c.kubeletCgroup = try Cgroup(path: node.kubeletCgroupPath) }
        return c
    }

    /// The dataplane's view of a lab pod.
    public func podSpec(_ pod: LabPod) -> PodSpec {
        PodSpec(uid: pod.identity.uid, name: pod.name, namespace: pod.identity.namespace, netns: pod.netns.path, ips: pod.addresses)
    }
}

/// Capture in the lab: one dataplane per node, run for that node's namespace, and the enrolment
/// steps an agent performs (dataplane first, then the proxy learns the pod).
public final class LabCapture: Sendable {
    /// The lab.
    public let lab: Lab
    /// The mode.
    public let mode: DataplaneMode
    private struct Nodes {
        var dataplanes: [String: any Dataplane] = [:]
        var configs: [String: CaptureConfig] = [:]
        var enrolled: [String: LabPod] = [:]
    }
    private let nodes = Mutex(Nodes())

    /// Whether pods are enrolled by the node agents (through the CNI plugin and ZDS) rather than
    /// by this object calling the dataplane itself.
    public let viaAgent: Bool

    /// Creates a dataplane per node with `config(node)` and prepares each node. With `viaAgent`,
    /// the node agents own the dataplanes: these instances only observe the same kernel objects
    /// (same pins) and write nothing, not even the node's configuration, so a test passes only if
    /// the agent did the work; enrolment goes through the agent's control socket.
    public init(lab: Lab, mode: DataplaneMode, viaAgent: Bool = false, config: (LabNode) -> CaptureConfig = { _ in CaptureConfig() }) throws {
        self.lab = lab
        self.mode = mode
        self.viaAgent = viaAgent
        for node in lab.nodes {
            let c = try lab.identities(config(node), node)
            let dp = try LabCapture.make(mode: mode, node: node, config: c)
            if !viaAgent { try dp.prepareNode() }
            nodes.withLock { $0.dataplanes[node.name] = dp; $0.configs[node.name] = c }
        }
    }

    static func make(mode: DataplaneMode, node: LabNode, config: CaptureConfig) throws -> Dataplane {
        let runner = ProcessRunner(defaultNetns: node.netns.path)
        switch mode {
        case .iptables, .auto:
            return IptablesDataplane(config: config, runner: runner, lockDirectory: "\(node.directory)/xtables")
        case .nftables:
            return try NftablesDataplane(config: config, runner: runner)
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
        let config = nodes.withLock { n in
            n.dataplanes[node.name] = nil
            return n.configs[node.name] ?? CaptureConfig()
        }
        let dp = try LabCapture.make(mode: mode, node: node, config: config)
        if !viaAgent { try dp.prepareNode() }
        nodes.withLock { $0.dataplanes[node.name] = dp }
    }

    /// The dataplane of `node`.
    public func dataplane(_ node: LabNode) -> any Dataplane {
        guard let dp = nodes.withLock({ $0.dataplanes[node.name] }) else { preconditionFailure("no dataplane for \(node.name): the lab was not set up") }
        return dp
    }

    /// Captures `pod` and hands it to its node's proxy.
    public func enroll(_ pod: LabPod) throws {
        if viaAgent {
            let r = try AgentClient.call(ControlRequest(op: "add", pod: lab.podRequest(pod, meshed: true)), socket: pod.node.agentControlSocket)
            guard r.ok else { throw LabError("agent refused \(pod.name): \(r.error ?? "?")") }
            nodes.withLock { $0.enrolled[pod.identity.uid] = pod }
            return
        }
        try dataplane(pod.node).enroll(lab.podSpec(pod))
        try lab.enrollInProxy(pod, spoofSource: true)
        nodes.withLock { $0.enrolled[pod.identity.uid] = pod }
    }

    /// Takes `pod` out of the mesh.
    public func remove(_ pod: LabPod) throws {
        if viaAgent {
            let r = try AgentClient.call(ControlRequest(op: "del", pod: lab.podRequest(pod, meshed: true)), socket: pod.node.agentControlSocket)
            guard r.ok else { throw LabError("agent refused to remove \(pod.name): \(r.error ?? "?")") }
            nodes.withLock { _ = $0.enrolled.removeValue(forKey: pod.identity.uid) }
            return
        }
        try? lab.removeFromProxy(pod)
        try dataplane(pod.node).remove(lab.podSpec(pod))
        nodes.withLock { _ = $0.enrolled.removeValue(forKey: pod.identity.uid) }
    }

    /// Enrolled pods on `node`.
    public func enrolledPods(on node: LabNode) -> [LabPod] { nodes.withLock { $0.enrolled.values.filter { $0.node === node } } }

    /// Changes the probe IPs on `node` while it runs.
    public func setProbeIPs(on node: LabNode, v4: IPAddress, v6: IPAddress) throws {
        if viaAgent {
            let r = try AgentClient.call(ControlRequest(op: "set-probe-ips", probeIPv4: v4.description, probeIPv6: v6.description), socket: node.agentControlSocket)
            guard r.ok else { throw LabError("agent refused the probe IPs: \(r.error ?? "?")") }
            return
        }
        try dataplane(node).setProbeIPs(v4: v4, v6: v6, pods: enrolledPods(on: node).map(lab.podSpec))
        // A later restartDataplane starts from what the node runs now, as an agent restart does.
        nodes.withLock { n in
            n.configs[node.name]?.probeIPv4 = v4
            n.configs[node.name]?.probeIPv6 = v6
        }
    }

    /// Records a pod the agent enrolled on its own (through the CNI plugin).
    public func adopt(_ pod: LabPod) { nodes.withLock { $0.enrolled[pod.identity.uid] = pod } }

    /// Removes every pod's capture and the node-wide parts (the agents' own when they run).
    public func teardown() {
        if viaAgent { return } // pods leave through CNI DEL; the agents are stopped with the lab
        for pod in nodes.withLock({ Array($0.enrolled.values) }) { try? remove(pod) }
        for dp in nodes.withLock({ Array($0.dataplanes.values) }) { try? dp.uninstallNode() }
    }
}

extension Lab {
    /// The request the CNI plugin would send for `pod`.
    public func podRequest(_ pod: LabPod, meshed: Bool) -> PodRequest {
        PodRequest(uid: pod.identity.uid, name: pod.name, namespace: pod.identity.namespace, netns: pod.netns.path,
                   ips: pod.addresses.map(\.description), podLabels: meshed ? ["istio.io/dataplane-mode": "ambient"] : pod.identity.labels)
    }
}
