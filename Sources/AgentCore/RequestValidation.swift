import AgentAPI
import Dataplane
import Foundation
import SystemCalls

/// Limits on what one pod request may carry. Each has its own error code, so a runtime that
/// trips one is told which.
public struct RequestLimits: Sendable {
    /// Pod UID length (Kubernetes UIDs are 36-character UUIDs).
    public var uid = 128
    /// Pod name length (a DNS subdomain).
    public var name = 253
    /// Namespace length (a DNS label).
    public var namespace = 63
    /// Network namespace path length.
    public var netnsPath = 4096
    /// Addresses per family (dual-stack pods have one of each).
    public var addressesPerFamily = 4
    /// Labels per pod and per namespace.
    public var labels = 64
    /// Pods on the node (the BPF maps are sized for 16384).
    public var pods = 16384
    /// Creates the defaults.
    public init() {}
}

/// Turns an untrusted ``PodRequest`` into a ``PodSpec`` or a precise ``AgentError``: nothing
/// reaches the dataplane that has not passed here, and nothing here can trap.
public enum RequestValidation {
    /// The validated pod.
    public static func spec(from r: PodRequest, limits: RequestLimits = RequestLimits()) throws -> PodSpec {
        try check(r.uid, "uid", max: limits.uid, allowed: isUIDCharacter)
        try check(r.name, "name", max: limits.name, allowed: isDNSCharacter)
        try check(r.namespace, "namespace", max: limits.namespace, allowed: isDNSCharacter)
        try checkInterface(r.interface)
        try checkNetnsPath(r.netns, max: limits.netnsPath)
        try checkLabels(r.podLabels, "pod labels", max: limits.labels)
        try checkLabels(r.namespaceLabels, "namespace labels", max: limits.labels)
        let ips = try addresses(r.ips, perFamily: limits.addressesPerFamily)
        return PodSpec(uid: r.uid, name: r.name, namespace: r.namespace, netns: r.netns, ips: ips, interface: r.interface)
    }

    /// The interfaces named by `istio.io/reroute-virtual-interfaces` ("tap0,tap1"), each a valid
    /// interface name; at most 16.
    public static func rerouteInterfaces(_ annotation: String?) throws -> [String] {
        guard let annotation else { return [] }
        let names = annotation.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard names.count <= 16 else { throw AgentError(.tooManyValues, "\(rerouteVirtualInterfacesAnnotation): \(names.count) interfaces; at most 16") }
        do { for n in names { try checkInterface(n) } } catch let e as AgentError {
            throw AgentError(e.code, "\(rerouteVirtualInterfacesAnnotation): \(e.message)")
        }
        var unique: [String] = []
        for n in names where !unique.contains(n) { unique.append(n) }
        return unique
    }

    /// The pod's DNS capture setting from `ambient.istio.io/dns-capture`: the values Go's
    /// strconv.ParseBool takes ("true", "false", "1", "0", ...), as Istio reads it; anything else
    /// (or no annotation) leaves the node's setting.
    public static func dnsCapture(_ annotation: String?) -> Bool? {
        switch annotation {
        case "1", "t", "T", "TRUE", "true", "True": true
        case "0", "f", "F", "FALSE", "false", "False": false
        default: nil
        }
    }

    /// Parses and bounds the addresses: each a host address or `address/length`, none reserved,
    /// duplicates folded, at most `perFamily` of each family, at least one.
    static func addresses(_ texts: [String], perFamily: Int) throws -> [IPAddress] {
        // Refuse a huge list before parsing it; repeats of one address are folded below, so allow a few.
        let parseable = perFamily * 2 * 4
        guard texts.count <= parseable else { throw AgentError(.tooManyValues, "\(texts.count) addresses; a pod may have at most \(perFamily) per family") }
        var out: [IPAddress] = []
        for text in texts {
            guard let ip = IPPrefix(text)?.ip else { throw AgentError(.invalidRequest, "ips: \(quoted(text)) is not an IP address") }
            guard !ip.isReserved else { throw AgentError(.invalidRequest, "ips: \(ip) is unspecified, loopback, multicast or broadcast") }
            if !out.contains(ip) { out.append(ip) }
        }
        guard !out.isEmpty else { throw AgentError(.invalidRequest, "the pod has no IP address (prevResult has no ips)") }
        for v6 in [false, true] where out.filter({ $0.isIPv6 == v6 }).count > perFamily {
            throw AgentError(.tooManyValues, "more than \(perFamily) IPv\(v6 ? 6 : 4) addresses")
        }
        return out
    }

    static func check(_ value: String, _ field: String, max: Int, allowed: (Unicode.Scalar) -> Bool) throws {
        guard !value.isEmpty else { throw AgentError(.invalidRequest, "\(field) is required") }
        guard value.utf8.count <= max else { throw AgentError(.fieldTooLong, "\(field) is \(value.utf8.count) bytes; the limit is \(max)") }
        guard value.unicodeScalars.allSatisfy(allowed) else { throw AgentError(.invalidRequest, "\(field) \(quoted(value)) has characters it may not contain") }
    }

    static func checkInterface(_ name: String) throws {
        // IFNAMSIZ is 16 with the NUL; "." and ".." and "/" are refused by the kernel too.
        try check(name, "interface", max: 15) { $0.isASCII && $0.value > 0x20 && $0.value < 0x7f && $0 != "/" && $0 != ":" }
        guard name != ".", name != ".." else { throw AgentError(.invalidRequest, "interface \(quoted(name)) is not a valid name") }
    }

    static func checkNetnsPath(_ path: String, max: Int) throws {
        try check(path, "netns", max: max) { $0.value >= 0x20 && $0.value != 0x7f }
        guard path.hasPrefix("/"), !path.split(separator: "/").contains("..") else {
            throw AgentError(.invalidRequest, "netns \(quoted(path)) must be an absolute path without '..'")
        }
    }

    static func checkLabels(_ labels: [String: String], _ field: String, max: Int) throws {
        guard labels.count <= max else { throw AgentError(.tooManyValues, "\(labels.count) \(field); the limit is \(max)") }
        for (k, v) in labels {
            try check(k, "\(field) key", max: 317, allowed: isLabelCharacter)
            if !v.isEmpty { try check(v, "\(field) value of \(k)", max: 63, allowed: isLabelCharacter) }
        }
    }

    static func isUIDCharacter(_ c: Unicode.Scalar) -> Bool { c.isASCII && (c.properties.isAlphabetic || ("0"..."9").contains(c) || c == "-" || c == "_" || c == ".") }
    static func isDNSCharacter(_ c: Unicode.Scalar) -> Bool { ("a"..."z").contains(c) || ("0"..."9").contains(c) || c == "-" || c == "." }
    static func isLabelCharacter(_ c: Unicode.Scalar) -> Bool { isUIDCharacter(c) || c == "/" }

    /// A value for an error message: escaped and cut, so it cannot forge log lines.
    static func quoted(_ s: String) -> String { "'\(LogEscaping.escape(String(s.prefix(80))))\(s.count > 80 ? "..." : "")'" }
}

/// Escapes control characters so a value cannot start a new log line or hide in one.
public enum LogEscaping {
    /// `s` with control characters, backslashes and quotes escaped.
    public static func escape(_ s: String) -> String {
        var out = ""
        for c in s.unicodeScalars {
            switch c {
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            default:
                if c.value < 0x20 || c.value == 0x7f || (0x80...0x9f).contains(c.value) || c == "\u{2028}" || c == "\u{2029}" {
                    out += String(format: "\\u{%04x}", c.value)
                } else {
                    out.unicodeScalars.append(c)
                }
            }
        }
        return out
    }
}
