import Foundation
import SystemCalls

/// A pod as the CNI plugin describes it to the agent.
public struct PodRequest: Codable, Sendable, Equatable {
    /// Pod UID (K8S_POD_UID).
    public var uid: String
    /// Pod name (K8S_POD_NAME).
    public var name: String
    /// Kubernetes namespace (K8S_POD_NAMESPACE).
    public var namespace: String
    /// CNI_NETNS.
    public var netns: String
    /// Addresses from prevResult.
    public var ips: [String]
    /// CNI_IFNAME.
    public var interface: String
    /// Pod labels passed in CNI_ARGS (POD_LABELS=k:v,k:v), if any.
    public var podLabels: [String: String]
    /// Namespace labels passed in CNI_ARGS (NAMESPACE_LABELS=...), if any.
    public var namespaceLabels: [String: String]
    /// Creates a request.
    public init(uid: String, name: String, namespace: String, netns: String, ips: [String], interface: String = "eth0",
                podLabels: [String: String] = [:], namespaceLabels: [String: String] = [:]) {
        self.uid = uid; self.name = name; self.namespace = namespace; self.netns = netns; self.ips = ips
        self.interface = interface; self.podLabels = podLabels; self.namespaceLabels = namespaceLabels
    }
}

/// One call to the agent's control socket.
public struct ControlRequest: Codable, Sendable {
    /// `add`, `del`, `check`, `status`, `set-probe-ips`.
    public var op: String
    /// The pod, for add/del/check.
    public var pod: PodRequest?
    /// For set-probe-ips.
    public var probeIPv4: String?
    /// For set-probe-ips.
    public var probeIPv6: String?
    /// Creates a request.
    public init(op: String, pod: PodRequest? = nil, probeIPv4: String? = nil, probeIPv6: String? = nil) {
        self.op = op; self.pod = pod; self.probeIPv4 = probeIPv4; self.probeIPv6 = probeIPv6
    }
}

/// The agent's answer.
public struct ControlResponse: Codable, Sendable {
    /// Success.
    public var ok: Bool
    /// An AgentError code on failure.
    public var code: String?
    /// The message on failure.
    public var error: String?
    /// For add: whether the pod is now in the mesh (false: not selected, nothing done).
    public var enrolled: Bool?
    /// For status: the JSON status document.
    public var status: AgentStatus?
    /// Creates a response.
    public init(ok: Bool, code: String? = nil, error: String? = nil, enrolled: Bool? = nil, status: AgentStatus? = nil) {
        self.ok = ok; self.code = code; self.error = error; self.enrolled = enrolled; self.status = status
    }
}

/// What `redirect-agent status` shows, read from the kernel by the agent.
public struct AgentStatus: Codable, Sendable {
    /// ebpf or iptables.
    public var dataplane: String
    /// Why that dataplane.
    public var reason: String
    /// Kernel features found (name -> yes/no).
    public var features: [String: Bool]
    /// What keeps ebpf from running, if anything.
    public var ebpfMissing: String?
    /// Probe IPs in force.
    public var probeIPv4: String
    /// IPv6 probe IP.
    public var probeIPv6: String
    /// Whether a proxy is connected over ZDS.
    public var proxyConnected: Bool
    /// Who counts as the proxy: `cgroup PATH (id N)`, or `mark only` (forgeable, as Istio).
    public var proxyIdentity: String?
    /// Whose connections get the probe IP as source: `cgroup PATH (id N)`, or `any host process` (as Istio).
    public var probeSource: String?
    /// How they get it on this node (ebpf: socket programs and the probe device; iptables: SNAT).
    public var probePath: String?
    /// What is wrong with the node-wide part of capture (empty: intact).
    public var nodeDrift: [String]?
    /// The enrolled pods.
    public var pods: [PodStatus]

    /// One pod.
    public struct PodStatus: Codable, Sendable {
        /// UID.
        public var uid: String
        /// namespace/name.
        public var pod: String
        /// Addresses.
        public var ips: [String]
        /// Where capture is attached, as the kernel reports it.
        public var attachment: String
        /// What is missing (empty: intact).
        public var drift: [String]
        /// Decisions counted by the BPF programs (ebpf mode).
        public var counters: [String: UInt64]
        /// Creates one.
        public init(uid: String, pod: String, ips: [String], attachment: String, drift: [String], counters: [String: UInt64]) {
            self.uid = uid; self.pod = pod; self.ips = ips; self.attachment = attachment; self.drift = drift; self.counters = counters
        }
    }

    /// Creates a status.
    public init(dataplane: String, reason: String, features: [String: Bool], ebpfMissing: String?, probeIPv4: String, probeIPv6: String, proxyConnected: Bool, pods: [PodStatus]) {
        self.dataplane = dataplane; self.reason = reason; self.features = features; self.ebpfMissing = ebpfMissing
        self.probeIPv4 = probeIPv4; self.probeIPv6 = probeIPv6; self.proxyConnected = proxyConnected; self.pods = pods
    }
}

/// Talks to the agent over its control socket: one JSON request, one JSON response per connection.
public enum AgentClient {
    /// The default control socket.
    public static let defaultSocket = "/run/redirect-agent/control.sock"

    /// Sends `request` and returns the answer; the whole exchange (connect, send, answer) takes at
    /// most `timeout` seconds, then it fails with ETIMEDOUT.
    public static func call(_ request: ControlRequest, socket path: String = defaultSocket, timeout: Double = 30) throws -> ControlResponse {
        let deadline = Monotonic.now() + timeout
        let s = try UnixSocket.connect(path: path, timeout: timeout)
        var data = try JSONEncoder().encode(request)
        data.append(0x0a)
        try s.writeAll([UInt8](data))
        s.shutdownWrite()
        let reply = try s.readToEnd(limit: 16 << 20, deadline: deadline)
        return try JSONDecoder().decode(ControlResponse.self, from: Data(reply))
    }
}
