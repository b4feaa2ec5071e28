import SystemCalls

/// A Kubernetes label selector (matchLabels and matchExpressions).
public struct LabelSelector: Sendable, Equatable {
    /// One matchExpressions entry.
    public struct Requirement: Sendable, Equatable {
        /// Label key.
        public var key: String
        /// In, NotIn, Exists, DoesNotExist.
        public var op: String
        /// Values for In/NotIn.
        public var values: [String]
    }
    /// matchLabels.
    public var matchLabels: [String: String] = [:]
    /// matchExpressions.
    public var matchExpressions: [Requirement] = []

    /// `{}`: selects everything.
    public var isEmpty: Bool { matchLabels.isEmpty && matchExpressions.isEmpty }

    /// Whether a pod with `labels` is selected.
    public func matches(_ labels: [String: String]) -> Bool {
        for (k, v) in matchLabels where labels[k] != v { return false }
        for r in matchExpressions {
            switch r.op {
            case "In": if !(labels[r.key].map { r.values.contains($0) } ?? false) { return false }
            case "NotIn": if let v = labels[r.key], r.values.contains(v) { return false }
            case "Exists": if labels[r.key] == nil { return false }
            case "DoesNotExist": if labels[r.key] != nil { return false }
            default: return false
            }
        }
        return true
    }

    /// True when every pod this selector selects is certainly also selected by `other`
    /// (other is empty, identical, or only requires a subset of our labels).
    public func isCovered(by other: LabelSelector) -> Bool {
        if other.isEmpty || other == self { return true }
        guard other.matchExpressions.isEmpty else { return false }
        return other.matchLabels.allSatisfy { matchLabels[$0.key] == $0.value }
    }
}

/// One entry of a rule's `ports`.
public struct PolicyPort: Sendable, Equatable {
    /// A number or a named container port.
    public enum Port: Sendable, Equatable { case number(Int), named(String) }
    /// TCP, UDP or SCTP.
    public var proto: String
    /// nil: every port of the protocol.
    public var port: Port?
    /// Upper end of a range.
    public var endPort: Int?

    /// Whether TCP `p` is allowed. A named port never names 15008 (no app declares it).
    public func allowsTCP(_ p: Int) -> Bool {
        guard proto == "TCP" else { return false }
        switch port {
        case nil: return true
        case .number(let n)?: return endPort.map { n <= p && p <= $0 } ?? (n == p)
        case .named?: return false
        }
    }

    /// Readable, e.g. `TCP/9090`, `TCP/8000-8100`, `TCP/http`.
    public var text: String {
        switch port {
        case nil: return "\(proto)/*"
        case .number(let n)?: return endPort.map { "\(proto)/\(n)-\($0)" } ?? "\(proto)/\(n)"
        case .named(let s)?: return "\(proto)/\(s)"
        }
    }
}

/// An ipBlock peer.
public struct IPBlock: Sendable, Equatable {
    /// The allowed range.
    public var cidr: IPPrefix
    /// Ranges carved out of it.
    public var except: [IPPrefix]

    /// Whether `ip` is in cidr and in none of the excepts.
    public func contains(_ ip: IPAddress) -> Bool {
        cidr.contains(ip) && !except.contains { $0.contains(ip) }
    }
}

/// One entry of `from` or `to`.
public struct Peer: Sendable, Equatable {
    /// ipBlock.
    public var ipBlock: IPBlock?
    /// podSelector.
    public var podSelector: LabelSelector?
    /// namespaceSelector.
    public var namespaceSelector: LabelSelector?

    /// Readable.
    public var text: String {
        if let b = ipBlock { return "ipBlock \(b.cidr)" + (b.except.isEmpty ? "" : " except \(b.except.map(\.description).joined(separator: ","))") }
        var parts: [String] = []
        if let n = namespaceSelector { parts.append(n.isEmpty ? "all namespaces" : "namespaces \(n.matchLabels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ","))") }
        if let p = podSelector { parts.append(p.isEmpty ? "all pods" : "pods \(p.matchLabels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ","))") }
        return parts.joined(separator: " / ")
    }
}

/// An ingress or egress rule.
public struct Rule: Sendable, Equatable {
    /// Its index in the policy's list.
    public var index: Int
    /// `from`/`to`; empty means every source or destination.
    public var peers: [Peer]
    /// `ports`; empty means every port.
    public var ports: [PolicyPort]

    /// Whether TCP `port` is allowed by this rule (for its peers).
    public func allowsTCP(_ port: Int) -> Bool { ports.isEmpty || ports.contains { $0.allowsTCP(port) } }
    /// Whether the rule allows any TCP at all (a UDP-only rule carries nothing the mesh tunnels).
    public var allowsSomeTCP: Bool { ports.isEmpty || ports.contains { $0.proto == "TCP" } }
    /// Whether a non-pod source `ip` matches (pod and namespace selectors never match a node-side IP).
    public func allowsSource(_ ip: IPAddress) -> Bool { peers.isEmpty || peers.contains { $0.ipBlock?.contains(ip) ?? false } }
    /// Whether this rule's peers include all of `other`'s.
    public func peersCover(_ other: Rule) -> Bool { peers.isEmpty || peers == other.peers }
    /// Readable peers.
    public var peerText: String { peers.isEmpty ? "any source" : peers.map(\.text).joined(separator: "; ") }
    /// Readable ports.
    public var portText: String { ports.isEmpty ? "all ports" : ports.map(\.text).joined(separator: ", ") }
}

/// A NetworkPolicy as the check needs it, with the original object kept for `--fix`.
public struct NetworkPolicy {
    /// metadata.name.
    public var name: String
    /// metadata.namespace (`default` when absent).
    public var namespace: String
    /// spec.podSelector.
    public var podSelector: LabelSelector
    /// spec.ingress; nil when absent.
    public var ingress: [Rule]?
    /// spec.egress; nil when absent.
    public var egress: [Rule]?
    /// spec.policyTypes as written; nil when absent.
    public var policyTypes: [String]?
    /// The parsed YAML object.
    public var raw: [String: Any]
    /// Which input document it came from (1-based).
    public var document: Int

    /// Ingress isolation: policyTypes has Ingress, or is absent (then Ingress is implied).
    public var isolatesIngress: Bool { policyTypes.map { $0.contains("Ingress") } ?? true }
    /// Egress isolation: policyTypes has Egress, or is absent and spec.egress is present.
    public var isolatesEgress: Bool { policyTypes.map { $0.contains("Egress") } ?? (egress != nil) }
    /// `namespace/name`.
    public var id: String { "\(namespace)/\(name)" }
}

extension IPPrefix {
    /// Whether `ip` is inside this prefix.
    public func contains(_ other: IPAddress) -> Bool {
        guard other.isIPv6 == ip.isIPv6 else { return false }
        let a = ip.bytes, b = other.bytes
        var bits = length
        for i in 0..<a.count {
            if bits <= 0 { return true }
            let mask: UInt8 = bits >= 8 ? 0xff : ~(0xff >> UInt8(bits))
            if a[i] & mask != b[i] & mask { return false }
            bits -= 8
        }
        return true
    }
}
