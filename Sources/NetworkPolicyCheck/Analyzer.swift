import Foundation
import SystemCalls
import Yams

/// What the check knows about the cluster.
public struct CheckOptions: Sendable {
    /// The IPv4 probe source (169.254.7.127, or the node IP with HOST_PROBE_SNAT_IP).
    public var probeIPv4: IPAddress? = IPAddress("169.254.7.127")
    /// The IPv6 probe source; checked only when set.
    public var probeIPv6: IPAddress?
    /// The tunnel port.
    public var hbonePort = 15008
    /// Namespaces labelled for ambient; empty: every namespace is assumed to join the mesh.
    public var ambientNamespaces: Set<String> = []
    /// Pods with their labels, when known: selectors are then evaluated exactly.
    public var pods: [PodLabels]?
    /// Creates the defaults.
    public init() {}
}

/// A pod's namespace and labels.
public struct PodLabels: Sendable, Equatable {
    /// Namespace.
    public var namespace: String
    /// Name.
    public var name: String
    /// Labels.
    public var labels: [String: String]
    /// Creates one.
    public init(namespace: String, name: String, labels: [String: String]) { self.namespace = namespace; self.name = name; self.labels = labels }
}

/// Something that will break once the selected pods are in the mesh.
public struct Finding: Sendable, Codable, Equatable {
    /// The kinds of breakage.
    public enum Kind: String, Sendable, Codable { case hboneIngress = "hbone-ingress", hboneEgress = "hbone-egress", probeBlocked = "probe-blocked" }
    /// `namespace/name`.
    public var policy: String
    /// Input document.
    public var document: Int
    /// What breaks.
    public var kind: Kind
    /// The rule, as `spec.ingress[1]`, when one rule is at fault.
    public var rule: String?
    /// The probe IP, for probe findings.
    public var probeIP: String?
    /// What will break and why.
    public var message: String
}

/// The verdicts for a set of policies.
public struct CheckReport: Sendable, Codable {
    /// Policies read.
    public var policiesChecked: Int
    /// Policies that can select meshed pods.
    public var policiesSelectingMeshedPods: [String]
    /// What will break.
    public var findings: [Finding]
    /// Assumptions the verdicts rest on.
    public var notes: [String]
    /// True when nothing will break.
    public var clean: Bool { findings.isEmpty }
}

/// Finds NetworkPolicies that will break meshed pods: HBONE (15008) not allowed where app ports
/// are, and kubelet probes, which come from the probe IP once pods are in the mesh, not allowed.
/// Policies combine as Kubernetes unions them: a rule elsewhere that already allows 15008 (or the
/// probe IP) for the same pods and peers clears the finding.
public struct PolicyAnalyzer {
    /// The options.
    public var options: CheckOptions
    /// Creates an analyzer.
    public init(options: CheckOptions) { self.options = options }

    /// Checks `policies`.
    public func check(_ policies: [NetworkPolicy]) -> CheckReport {
        var findings: [Finding] = []
        var selecting: [String] = []
        for p in policies where selectsMeshedPods(p) {
            selecting.append(p.id)
            let peers = policies.filter { $0.namespace == p.namespace && covers($0, p) }
            if p.isolatesIngress {
                findings += probeFindings(p, peers: peers)
                findings += hboneFindings(p, rules: p.ingress ?? [], peers: peers.compactMap(\.ingress).flatMap { $0 }, kind: .hboneIngress)
            }
            if p.isolatesEgress {
                findings += hboneFindings(p, rules: p.egress ?? [], peers: peers.filter(\.isolatesEgress).compactMap(\.egress).flatMap { $0 }, kind: .hboneEgress)
            }
        }
        var notes: [String] = []
        if options.ambientNamespaces.isEmpty { notes.append("no --ambient-namespace given: every namespace is assumed to join the mesh") }
        if options.pods == nil { notes.append("no --pod-labels given: a policy counts for the same pods as another only when its podSelector is certainly broader") }
        return CheckReport(policiesChecked: policies.count, policiesSelectingMeshedPods: selecting, findings: findings, notes: notes)
    }

    // MARK: selection

    func isMeshed(_ pod: PodLabels) -> Bool {
        let mode = pod.labels["istio.io/dataplane-mode"]
        if mode == "none" { return false }
        return mode == "ambient" || options.ambientNamespaces.isEmpty || options.ambientNamespaces.contains(pod.namespace)
    }

    func meshedPods(of p: NetworkPolicy) -> [PodLabels] {
        (options.pods ?? []).filter { $0.namespace == p.namespace && isMeshed($0) && p.podSelector.matches($0.labels) }
    }

    /// Whether `p` can select a pod that is in the mesh.
    public func selectsMeshedPods(_ p: NetworkPolicy) -> Bool {
        if options.pods != nil { return !meshedPods(of: p).isEmpty }
        let nsAmbient = options.ambientNamespaces.isEmpty || options.ambientNamespaces.contains(p.namespace)
        if p.podSelector.matchLabels["istio.io/dataplane-mode"] == "none" { return false }
        return nsAmbient || p.podSelector.matchLabels["istio.io/dataplane-mode"] == "ambient"
    }

    /// Whether `q` certainly applies to every meshed pod `p` selects.
    func covers(_ q: NetworkPolicy, _ p: NetworkPolicy) -> Bool {
        if options.pods != nil {
            let mine = meshedPods(of: p).map(\.name)
            return mine.allSatisfy { n in meshedPods(of: q).contains { $0.name == n } }
        }
        return p.podSelector.isCovered(by: q.podSelector)
    }

    // MARK: checks

    func probeFindings(_ p: NetworkPolicy, peers: [NetworkPolicy]) -> [Finding] {
        let rules = peers.filter(\.isolatesIngress).compactMap(\.ingress).flatMap { $0 }
        return [options.probeIPv4, options.probeIPv6].compactMap { $0 }.compactMap { ip in
            if rules.contains(where: { $0.allowsSource(ip) }) { return nil }
            let why = (p.ingress ?? []).isEmpty ? "it denies all ingress" : "its ingress rules allow only \((p.ingress ?? []).map(\.peerText).joined(separator: "; "))"
            return Finding(policy: p.id, document: p.document, kind: .probeBlocked, rule: nil, probeIP: ip.description,
                           message: "kubelet health probes will fail: in the mesh they come from \(ip) (SNATed on the node), and no ingress rule of any policy selecting these pods allows that source; \(why)")
        }
    }

    func hboneFindings(_ p: NetworkPolicy, rules: [Rule], peers: [Rule], kind: Finding.Kind) -> [Finding] {
        let port = options.hbonePort
        let field = kind == .hboneIngress ? "spec.ingress" : "spec.egress"
        return rules.compactMap { r in
            guard r.allowsSomeTCP, !r.allowsTCP(port) else { return nil }
            if peers.contains(where: { $0.allowsTCP(port) && $0.peersCover(r) }) { return nil }
            let msg = kind == .hboneIngress
                ? "connections from meshed clients will be blocked: \(field)[\(r.index)] allows \(r.portText) from \(r.peerText), but meshed traffic arrives through the mesh tunnel on TCP \(port), which no rule allows from those sources"
                : "connections from these pods to meshed destinations will be blocked: \(field)[\(r.index)] allows \(r.portText) to \(r.peerText), but in the mesh they leave as TCP \(port) to the destination pod, which no rule allows"
            return Finding(policy: p.id, document: p.document, kind: kind, rule: "\(field)[\(r.index)]", probeIP: nil, message: msg)
        }
    }
}
