import Dataplane
import Foundation
import MeshProxy
import NodeLab
import SystemCalls
import Testing

/// The dataplanes the conformance suite runs against: every case runs once per mode.
let conformanceModes: [DataplaneMode] = [.iptables, .ebpf]

/// A lab with capture: 2 nodes, 2 enrolled pods each, and one pod per node that is not in the mesh.
struct CaptureLab {
    let lab: Lab
    let capture: LabCapture
    var meshed: [LabPod] { lab.pods.filter { !$0.name.hasSuffix("outsider") } }
    func outsider(_ node: LabNode) -> LabPod { lab.pod("\(node.name)-outsider")! }
    var n1: LabNode { lab.nodes[0] }
    var n2: LabNode { lab.nodes[1] }

    /// Proxy records on `node` whose original destination is `dst`.
    func records(_ node: LabNode, listener: UInt16? = nil, to dst: SocketAddress? = nil) -> [ProxyRecord] {
        lab.proxyRecords(node).filter { r in
            (listener == nil || r.listener == listener!) && (dst == nil || r.originalDestination == dst!.description)
        }
    }

    /// Every proxy record on both nodes.
    var allRecords: [ProxyRecord] { lab.nodes.flatMap { lab.proxyRecords($0) } }
}

/// Builds a capture lab for `mode`, runs `body`, and always tears it down.
func withCaptureLab(_ mode: DataplaneMode, config: @escaping (LabNode) -> CaptureConfig = { _ in CaptureConfig() },
                    _ body: (CaptureLab) throws -> Void) throws {
    try withLab { lab in
        var capture: LabCapture?
        defer { capture?.teardown() }
        for node in lab.nodes { try lab.addPod(on: node, name: "\(node.name)-outsider") }
        capture = try LabCapture(lab: lab, mode: mode, config: config)
        let cl = CaptureLab(lab: lab, capture: capture!)
        for pod in cl.meshed { try capture!.enroll(pod) }
        try body(cl)
    }
}

/// The part of a `/whoami` body naming the client, e.g. `10.244.1.2`.
func clientIP(_ body: String) -> String? {
    guard let r = body.range(of: "\"client\":\"") else { return nil }
    let rest = body[r.upperBound...]
    let addr = String(rest[..<(rest.firstIndex(of: "\"") ?? rest.endIndex)])
    return SocketAddress(parsing: addr)?.ip.description
}

/// The capture state of ours visible inside a pod: iptables chains, ip rules, table 100 routes.
func captureState(_ lab: Lab, _ pod: LabPod) throws -> String {
    var out = ""
    for prog in ["iptables-save", "ip6tables-save"] {
        out += (try? lab.inNamespace(pod.netns, prog, [])) ?? ""
    }
    out += try lab.inNamespace(pod.netns, "ip", ["-4", "rule", "show"])
    out += try lab.inNamespace(pod.netns, "ip", ["-6", "rule", "show"])
    out += (try? lab.inNamespace(pod.netns, "ip", ["-4", "route", "show", "table", "100"])) ?? ""
    out += (try? lab.inNamespace(pod.netns, "ip", ["-6", "route", "show", "table", "100"])) ?? ""
    // Drop what changes by itself: iptables-save's timestamped comments and packet counters.
    return out.split(separator: "\n")
        .filter { !$0.hasPrefix("#") }
        .map { $0.replacingOccurrences(of: #"\[\d+:\d+\]"#, with: "[0:0]", options: .regularExpression) }
        .joined(separator: "\n")
}

/// Whether the node still treats `ip` as in the mesh (the ipset in iptables mode, ra_pods in ebpf mode).
func nodeHasMember(_ cl: CaptureLab, _ node: LabNode, _ ip: IPAddress) throws -> Bool {
    switch cl.capture.dataplane(node) {
    case let ebpf as EBPFDataplane: return try ebpf.maps.pod(ip) != nil
    default: return try cl.lab.inNamespace(node.netns, "ipset", ["list"]).contains(ip.description)
    }
}
