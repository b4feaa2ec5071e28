import Foundation
import Yams

/// Writes corrected policies: port 15008 added beside the existing ports of each rule at fault,
/// and the probe IP allowed as an ingress rule of its own. Every existing restriction stays.
public struct PolicyFixer {
    /// The options the findings were made with.
    public var options: CheckOptions
    /// Creates a fixer.
    public init(options: CheckOptions) { self.options = options }

    /// The corrected objects of every policy with a finding, in input order.
    public func fix(_ policies: [NetworkPolicy], findings: [Finding]) -> [[String: Any]] {
        policies.compactMap { p in
            let mine = findings.filter { $0.policy == p.id && $0.document == p.document }
            return mine.isEmpty ? nil : fixed(p, mine)
        }
    }

    /// The corrected policies as YAML documents, ready for `kubectl apply -f -`.
    public func yaml(_ policies: [NetworkPolicy], findings: [Finding]) throws -> String {
        try fix(policies, findings: findings).map { try Yams.dump(object: $0, sortKeys: true) }.joined(separator: "---\n")
    }

    func fixed(_ p: NetworkPolicy, _ findings: [Finding]) -> [String: Any] {
        var obj = p.raw
        obj.removeValue(forKey: "status")
        if var meta = obj["metadata"] as? [String: Any] {
            for k in ["uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "selfLink"] { meta.removeValue(forKey: k) }
            if var ann = meta["annotations"] as? [String: Any] {
                ann.removeValue(forKey: "kubectl.kubernetes.io/last-applied-configuration")
                meta["annotations"] = ann.isEmpty ? nil : ann
            }
            obj["metadata"] = meta
        }
        var spec = obj["spec"] as? [String: Any] ?? [:]
        for f in findings where f.kind != .probeBlocked {
            let key = f.kind == .hboneIngress ? "ingress" : "egress"
            guard let rule = f.rule, let idx = Int(rule.split(separator: "[").last?.dropLast() ?? ""),
                  var rules = spec[key] as? [Any], idx < rules.count else { continue }
            var r = rules[idx] as? [String: Any] ?? [:]
            var ports = r["ports"] as? [Any] ?? []
            ports.append(["port": options.hbonePort, "protocol": "TCP"] as [String: Any])
            r["ports"] = ports
            rules[idx] = r
            spec[key] = rules
        }
        let probes = findings.filter { $0.kind == .probeBlocked }.compactMap(\.probeIP)
        if !probes.isEmpty {
            let from = probes.map { ip -> [String: Any] in ["ipBlock": ["cidr": "\(ip)/\(ip.contains(":") ? 128 : 32)"]] }
            var rules = spec["ingress"] as? [Any] ?? []
            rules.append(["from": from] as [String: Any])
            spec["ingress"] = rules
        }
        obj["spec"] = spec
        return obj
    }
}

/// Reads `--pod-labels`: a YAML list of `{namespace, name, labels}`, or Pod objects / a List of them.
public enum PodLabelsParser {
    /// Parses the file's text.
    public static func parse(_ yaml: String) throws -> [PodLabels] {
        let docs = try PolicyParser.documents(yaml).compactMap { $0 }
        var items: [Any] = []
        for d in docs {
            if let list = d as? [Any] { items += list }
            else if let o = d as? [String: Any], let its = o["items"] as? [Any] { items += its }
            else { items.append(d) }
        }
        return try items.enumerated().map { i, item in
            guard let o = item as? [String: Any] else { throw PolicyInputError(document: 1, field: "pods[\(i)]", message: "expected an object") }
            let meta = o["metadata"] as? [String: Any] ?? o
            guard let name = meta["name"] as? String else { throw PolicyInputError(document: 1, field: "pods[\(i)].name", message: "missing") }
            let labels = (meta["labels"] as? [String: Any] ?? [:]).mapValues { "\($0)" }
            return PodLabels(namespace: meta["namespace"] as? String ?? "default", name: name, labels: labels)
        }
    }
}
