import SystemCalls

/// A pod as the dataplane needs it.
public struct PodSpec: Sendable, Codable, Hashable {
    /// Pod UID: the key everything of the pod's is stored under.
    public var uid: String
    /// Pod name.
    public var name: String
    /// Kubernetes namespace.
    public var namespace: String
    /// Path of the pod's network namespace.
    public var netns: String
    /// The pod's addresses.
    public var ips: [IPAddress]
    /// The pod's interface (inside its namespace).
    public var interface: String
    /// Interfaces whose inbound TCP is treated as the pod's outbound traffic (Istio's
    /// `istio.io/reroute-virtual-interfaces`: a KubeVirt VM's tap device, for example).
    public var rerouteInterfaces: [String]
    /// Inbound traffic is not captured, only outbound (Istio's `ambient.istio.io/bypass-inbound-capture: "true"`,
    /// for pods such as ingress gateways that take outside traffic themselves).
    public var bypassInboundCapture: Bool
    /// DNS capture for this pod (Istio's `ambient.istio.io/dns-capture`: "true" or "false"); nil:
    /// the node's setting (``CaptureConfig/dnsCapture``).
    public var dnsCapture: Bool?

    /// Creates a spec.
    public init(uid: String, name: String, namespace: String, netns: String, ips: [IPAddress], interface: String = "eth0",
                rerouteInterfaces: [String] = [], bypassInboundCapture: Bool = false, dnsCapture: Bool? = nil) {
        self.uid = uid; self.name = name; self.namespace = namespace; self.netns = netns; self.ips = ips; self.interface = interface
        self.rerouteInterfaces = rerouteInterfaces
        self.bypassInboundCapture = bypassInboundCapture
        self.dnsCapture = dnsCapture
    }

    private enum CodingKeys: String, CodingKey { case uid, name, namespace, netns, ips, interface, rerouteInterfaces, bypassInboundCapture, dnsCapture }

    /// Decodes a spec; state files written before `rerouteInterfaces` existed have none.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(uid: try c.decode(String.self, forKey: .uid), name: try c.decode(String.self, forKey: .name),
                  namespace: try c.decode(String.self, forKey: .namespace), netns: try c.decode(String.self, forKey: .netns),
                  ips: try c.decode([IPAddress].self, forKey: .ips), interface: try c.decode(String.self, forKey: .interface),
                  rerouteInterfaces: try c.decodeIfPresent([String].self, forKey: .rerouteInterfaces) ?? [],
                  bypassInboundCapture: try c.decodeIfPresent(Bool.self, forKey: .bypassInboundCapture) ?? false,
                  dnsCapture: try c.decodeIfPresent(Bool.self, forKey: .dnsCapture))
    }

    /// Whether the pod has an IPv6 address.
    public var hasIPv6: Bool { ips.contains { $0.isIPv6 } }
    /// Whether the pod has an IPv4 address.
    public var hasIPv4: Bool { ips.contains { !$0.isIPv6 } }
}

/// A capture dataplane: the behaviour every mode must have, whatever it is made of.
public protocol Dataplane: AnyObject, Sendable {
    /// Which mode this is.
    var mode: DataplaneMode { get }
    /// The configuration in force.
    var config: CaptureConfig { get }
    /// Installs the node-wide part (probe SNAT). Idempotent.
    func prepareNode() throws
    /// Captures `pod`'s traffic. Idempotent; on failure nothing of the pod is left half-done.
    func enroll(_ pod: PodSpec) throws
    /// Removes everything of `pod`'s. Idempotent; a pod whose namespace is gone is cleaned on the node.
    func remove(_ pod: PodSpec) throws
    /// What is missing or wrong in `pod`'s capture (empty when all is in place).
    func verify(_ pod: PodSpec) throws -> [String]
    /// Changes the probe source IPs on a running node, for every enrolled pod in `pods`.
    func setProbeIPs(v4: IPAddress, v6: IPAddress, pods: [PodSpec]) throws
    /// Makes `cgroup` the proxy's (learned from its ZDS connection), and `draining` the cgroups of
    /// replaced proxies that still run, for every enrolled pod in `pods`; nil: no proxy, no socket
    /// is the proxy's. The configuration changes only once the kernel has the change.
    func setProxyCgroup(_ cgroup: Cgroup?, draining: [Cgroup], pods: [PodSpec]) throws
    /// Removes the node-wide part.
    func uninstallNode() throws
    /// Where the pod's capture is attached, as the kernel reports it (for `status`).
    func describe(_ pod: PodSpec) -> String
    /// Removes node-side state of pods not in `keep` (after a crash or a missed DEL); returns what it removed.
    func removeStale(keep: [PodSpec]) throws -> [String]
    /// Takes up an enrolled pod whose kernel state is intact (after an agent restart): whatever
    /// this process must keep doing for it, such as watching for new interfaces.
    func resume(_ pod: PodSpec) throws
    /// Periodic housekeeping: forgets the kept connections (``KeptConnection``) of `pods` that have
    /// closed, and those of pods not in `pods` (and turns off per-pod handling no pod needs any
    /// more); returns how many connections are still kept.
    @discardableResult
    func pruneKept(pods: [PodSpec]) throws -> Int
}

extension Dataplane {
    /// Makes `cgroup` the proxy's, with no draining proxy.
    public func setProxyCgroup(_ cgroup: Cgroup?, pods: [PodSpec]) throws { try setProxyCgroup(cgroup, draining: [], pods: pods) }

    /// Nothing to resume: the kernel state is all there is.
    public func resume(_ pod: PodSpec) throws {}
    /// Nothing to prune: the kernel forgets closed connections by itself (conntrack).
    @discardableResult
    public func pruneKept(pods: [PodSpec]) throws -> Int { 0 }
}

/// A dataplane operation failed: which, for which pod, and why.
public struct DataplaneError: Error, CustomStringConvertible {
    /// Stable codes for callers and metrics.
    public enum Code: String, Sendable { case invalidPod, netnsMissing, applyFailed, removeFailed, unsupported }
    /// The code.
    public var code: Code
    /// The pod, if any.
    public var pod: String?
    /// The message.
    public var message: String
    /// Creates an error.
    public init(_ code: Code, pod: String? = nil, _ message: String) { self.code = code; self.pod = pod; self.message = message }
    /// One line.
    public var description: String { "\(code.rawValue)\(pod.map { " (pod \($0))" } ?? ""): \(message)" }
}
