import Foundation
import SystemCalls
import Yams

/// Input that is not a valid NetworkPolicy: which document, which field, what is wrong.
public struct PolicyInputError: Error, CustomStringConvertible, Equatable {
    /// 1-based document number in the input.
    public var document: Int
    /// The field path, e.g. `spec.ingress[0].ports[1].port`.
    public var field: String
    /// What is wrong.
    public var message: String
    /// One line.
    public var description: String { "document \(document)\(field.isEmpty ? "" : ", \(field)"): \(message)" }
}

/// Reads NetworkPolicy objects from YAML: several documents, `kind: List` (what `kubectl get
/// networkpolicy -A -o yaml` prints) or NetworkPolicyList. Anything else is an error, never skipped.
public enum PolicyParser {
    /// Parses every policy in `yaml`.
    public static func parse(_ yaml: String) throws -> [NetworkPolicy] {
        let docs = try documents(yaml)
        var out: [NetworkPolicy] = []
        for (i, doc) in docs.enumerated() {
            guard let doc else { continue } // an empty document between separators
            guard let obj = doc as? [String: Any] else {
                throw PolicyInputError(document: i + 1, field: "", message: "expected an object, got \(type(of: doc))")
            }
            let kind = obj["kind"] as? String ?? ""
            if kind == "List" || kind == "NetworkPolicyList" {
                guard let items = obj["items"] as? [Any] else { throw PolicyInputError(document: i + 1, field: "items", message: "a \(kind) needs an items list") }
                for (j, item) in items.enumerated() {
                    guard let o = item as? [String: Any] else { throw PolicyInputError(document: i + 1, field: "items[\(j)]", message: "expected an object") }
                    out.append(try policy(o, document: i + 1, path: "items[\(j)]."))
                }
            } else {
                out.append(try policy(obj, document: i + 1, path: ""))
            }
        }
        return out
    }

    /// Every YAML document of `yaml`, root by root: the lazy `load_all` sequence would stop
    /// silently at a syntax error.
    static func documents(_ yaml: String) throws -> [Any?] {
        var docs: [Any?] = []
        do {
            let parser = try Parser(yaml: yaml)
            while let node = try parser.nextRoot() { docs.append(Constructor.default.any(from: node)) }
        } catch {
            throw PolicyInputError(document: docs.count + 1, field: "", message: "not valid YAML: \(error)")
        }
        return docs
    }

    static func policy(_ o: [String: Any], document d: Int, path: String) throws -> NetworkPolicy {
        func fail(_ field: String, _ msg: String) -> PolicyInputError { PolicyInputError(document: d, field: path + field, message: msg) }
        let kind = o["kind"] as? String
        guard kind == "NetworkPolicy" else {
            throw fail("kind", "expected NetworkPolicy, got \(kind.map { "'\($0)'" } ?? "nothing")")
        }
        if let v = o["apiVersion"] as? String, v != "networking.k8s.io/v1" { throw fail("apiVersion", "expected networking.k8s.io/v1, got '\(v)'") }
        guard let meta = o["metadata"] as? [String: Any], let name = meta["name"] as? String, !name.isEmpty else {
            throw fail("metadata.name", "missing")
        }
        guard let spec = o["spec"] as? [String: Any] else { throw fail("spec", "missing") }
        let selector = try labelSelector(spec["podSelector"] ?? [String: Any](), fail: { fail("spec.podSelector" + $0, $1) })
        var types: [String]? = nil
        if let t = spec["policyTypes"] {
            guard let list = t as? [Any], list.allSatisfy({ ($0 as? String).map { ["Ingress", "Egress"].contains($0) } ?? false }) else {
                throw fail("spec.policyTypes", "expected a list of Ingress and Egress")
            }
            types = list.map { $0 as! String }
        }
        return NetworkPolicy(
            name: name, namespace: meta["namespace"] as? String ?? "default", podSelector: selector,
            ingress: try rules(spec["ingress"], peerKey: "from", field: "spec.ingress", fail: fail),
            egress: try rules(spec["egress"], peerKey: "to", field: "spec.egress", fail: fail),
            policyTypes: types, raw: o, document: d)
    }

    static func rules(_ v: Any?, peerKey: String, field: String, fail: (String, String) -> PolicyInputError) throws -> [Rule]? {
        guard let v, !(v is NSNull) else { return nil }
        guard let list = v as? [Any] else { throw fail(field, "expected a list of rules") }
        return try list.enumerated().map { i, r in
            let f = "\(field)[\(i)]"
            guard let rule = r as? [String: Any] else {
                if r is NSNull { return Rule(index: i, peers: [], ports: []) }
                throw fail(f, "expected a rule object")
            }
            let peers = try (rule[peerKey] as? [Any] ?? []).enumerated().map { j, p in try peer(p, fail: { fail("\(f).\(peerKey)[\(j)]" + $0, $1) }) }
            if let raw = rule[peerKey], !(raw is [Any]), !(raw is NSNull) { throw fail("\(f).\(peerKey)", "expected a list") }
            let ports = try (rule["ports"] as? [Any] ?? []).enumerated().map { j, p in try port(p, fail: { fail("\(f).ports[\(j)]" + $0, $1) }) }
            if let raw = rule["ports"], !(raw is [Any]), !(raw is NSNull) { throw fail("\(f).ports", "expected a list") }
            return Rule(index: i, peers: peers, ports: ports)
        }
    }

    static func peer(_ v: Any, fail: (String, String) -> PolicyInputError) throws -> Peer {
        guard let o = v as? [String: Any] else { throw fail("", "expected a peer object") }
        var p = Peer()
        if let b = o["ipBlock"] {
            guard let bo = b as? [String: Any], let c = bo["cidr"] as? String else { throw fail(".ipBlock.cidr", "missing") }
            guard let cidr = IPPrefix(c), c.contains("/") else { throw fail(".ipBlock.cidr", "'\(c)' is not a CIDR") }
            let except = try (bo["except"] as? [Any] ?? []).enumerated().map { i, e -> IPPrefix in
                guard let s = e as? String, let x = IPPrefix(s) else { throw fail(".ipBlock.except[\(i)]", "'\(e)' is not a CIDR") }
                return x
            }
            p.ipBlock = IPBlock(cidr: cidr, except: except)
        }
        if let s = o["podSelector"] { p.podSelector = try labelSelector(s, fail: { fail(".podSelector" + $0, $1) }) }
        if let s = o["namespaceSelector"] { p.namespaceSelector = try labelSelector(s, fail: { fail(".namespaceSelector" + $0, $1) }) }
        if p.ipBlock == nil && p.podSelector == nil && p.namespaceSelector == nil { throw fail("", "a peer needs ipBlock, podSelector or namespaceSelector") }
        if p.ipBlock != nil && (p.podSelector != nil || p.namespaceSelector != nil) { throw fail("", "ipBlock cannot be combined with selectors") }
        return p
    }

    static func port(_ v: Any, fail: (String, String) -> PolicyInputError) throws -> PolicyPort {
        guard let o = v as? [String: Any] else { throw fail("", "expected a port object") }
        let proto = (o["protocol"] as? String) ?? "TCP"
        guard ["TCP", "UDP", "SCTP"].contains(proto) else { throw fail(".protocol", "expected TCP, UDP or SCTP, got '\(proto)'") }
        var p = PolicyPort(proto: proto, port: nil, endPort: nil)
        switch o["port"] {
        case nil, is NSNull: break
        case let n as Int:
            guard (1...65535).contains(n) else { throw fail(".port", "\(n) is not a port number") }
            p.port = .number(n)
        case let s as String:
            if let n = Int(s) { p.port = .number(n) } else { p.port = .named(s) }
        default: throw fail(".port", "expected a number or a port name")
        }
        if let e = o["endPort"] {
            guard let n = e as? Int, case .number(let start)? = p.port, n >= start else { throw fail(".endPort", "needs a numeric port not above it") }
            p.endPort = n
        }
        return p
    }

    static func labelSelector(_ v: Any, fail: (String, String) -> PolicyInputError) throws -> LabelSelector {
        if v is NSNull { return LabelSelector() }
        guard let o = v as? [String: Any] else { throw fail("", "expected a label selector") }
        var s = LabelSelector()
        if let ml = o["matchLabels"] {
            guard let m = ml as? [String: Any] else { throw fail(".matchLabels", "expected a map") }
            s.matchLabels = m.mapValues { "\($0)" }
        }
        for (i, e) in (o["matchExpressions"] as? [Any] ?? []).enumerated() {
            guard let eo = e as? [String: Any], let key = eo["key"] as? String, let op = eo["operator"] as? String,
                  ["In", "NotIn", "Exists", "DoesNotExist"].contains(op) else {
                throw fail(".matchExpressions[\(i)]", "needs key and an operator In, NotIn, Exists or DoesNotExist")
            }
            s.matchExpressions.append(.init(key: key, op: op, values: (eo["values"] as? [Any] ?? []).map { "\($0)" }))
        }
        return s
    }
}
