import AgentAPI
import Dataplane
import Foundation
import MeshProxy
import NodeLab
import SystemCalls
import Testing

/// How a conformance lab enrols its pods.
struct CaptureSetup: CustomTestStringConvertible, Sendable {
    /// The dataplane.
    let mode: DataplaneMode
    /// true: pods are created through the CNI chain with redirect-cni, enrolled by a redirect-agent
    /// per node, and the proxy learns them over ZDS. false: the test drives the dataplane directly.
    let viaAgent: Bool
    var testDescription: String { "\(mode.rawValue)\(viaAgent ? " via CNI+agent+ZDS" : "")" }
}

/// Every case of the conformance suite runs once per dataplane and enrolment path.
let conformanceSetups: [CaptureSetup] = [
    CaptureSetup(mode: .iptables, viaAgent: false), CaptureSetup(mode: .ebpf, viaAgent: false),
    CaptureSetup(mode: .iptables, viaAgent: true), CaptureSetup(mode: .ebpf, viaAgent: true),
]

/// The dataplanes driven directly (for cases about the dataplane object itself).
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

/// Builds a capture lab for `setup`, runs `body`, and always tears it down.
func withCaptureLab(_ setup: CaptureSetup, config: @escaping (LabNode) -> CaptureConfig = { _ in CaptureConfig() },
                    options: (inout LabOptions) -> Void = { _ in }, _ body: (CaptureLab) throws -> Void) throws {
    try withLab({ o in
        options(&o)
        if setup.viaAgent {
            o.podsPerNode = 0
            o.agentDataplane = setup.mode.rawValue
        }
    }) { lab in
        var capture: LabCapture?
        defer { capture?.teardown() }
        if setup.viaAgent {
            for node in lab.nodes {
                for i in 1...2 { try lab.addMeshedPod(on: node, name: "\(node.name)-pod\(i)") }
                let c = config(node)
                if c != CaptureConfig() {
                    let r = try AgentClient.call(ControlRequest(op: "set-probe-ips", probeIPv4: c.probeIPv4.description, probeIPv6: c.probeIPv6.description),
                                                 socket: node.agentControlSocket)
                    #expect(r.ok)
                }
            }
        }
        for node in lab.nodes { try lab.addPod(on: node, name: "\(node.name)-outsider") }
        capture = try LabCapture(lab: lab, mode: setup.mode, viaAgent: setup.viaAgent, config: config)
        let cl = CaptureLab(lab: lab, capture: capture!)
        for pod in cl.meshed { if setup.viaAgent { capture!.adopt(pod) } else { try capture!.enroll(pod) } }
        try body(cl)
    }
}

/// Builds a lab with the dataplane driven directly.
func withCaptureLab(_ mode: DataplaneMode, config: @escaping (LabNode) -> CaptureConfig = { _ in CaptureConfig() },
                    _ body: (CaptureLab) throws -> Void) throws {
    try withCaptureLab(CaptureSetup(mode: mode, viaAgent: false), config: config, body)
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
