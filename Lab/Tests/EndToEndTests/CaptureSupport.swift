import BPFLoader
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

/// The dataplanes the multi-mode suites run: both, unless `REDIRECT_TEST_DATAPLANES` names fewer
/// (the kernel matrix's VMs, where emulation makes every lab slow, run ebpf only: iptables mode uses
/// no BPF of ours, so what the matrix proves, the kernel's BPF, is all in ebpf mode).
let testedModes: [DataplaneMode] = {
    let all: [DataplaneMode] = [.iptables, .nftables, .ebpf]
    let named = ProcessInfo.processInfo.environment["REDIRECT_TEST_DATAPLANES"]?.split(separator: ",").compactMap { DataplaneMode(rawValue: String($0)) }
    guard let named, !named.isEmpty else { return all }
    return all.filter(named.contains)
}()

/// Every case of the conformance suite runs once per dataplane and enrolment path.
let conformanceSetups: [CaptureSetup] = [
    CaptureSetup(mode: .iptables, viaAgent: false), CaptureSetup(mode: .nftables, viaAgent: false), CaptureSetup(mode: .ebpf, viaAgent: false),
    CaptureSetup(mode: .iptables, viaAgent: true), CaptureSetup(mode: .nftables, viaAgent: true), CaptureSetup(mode: .ebpf, viaAgent: true),
].filter { testedModes.contains($0.mode) }

/// The dataplanes driven directly (for cases about the dataplane object itself).
let conformanceModes: [DataplaneMode] = testedModes

/// A lab with capture: 2 nodes, 2 enrolled pods each, and one pod per node that is not in the mesh.
struct CaptureLab {
    let lab: Lab
    let capture: LabCapture
    var meshed: [LabPod] { lab.pods.filter { !$0.name.hasSuffix("outsider") } }
    func outsider(_ node: LabNode) throws -> LabPod {
        guard let pod = lab.pod("\(node.name)-outsider") else { throw LabError("no outsider pod on \(node.name)") }
        return pod
    }
    var n1: LabNode { lab.nodes[0] }
    var n2: LabNode { lab.nodes[1] }

    /// Proxy records on `node` whose original destination is `dst`.
    func records(_ node: LabNode, listener: UInt16? = nil, to dst: SocketAddress? = nil) throws -> [ProxyRecord] {
        try lab.proxyRecords(node).filter { r in
            (listener.map { r.listener == $0 } ?? true) && (dst.map { r.originalDestination == $0.description } ?? true)
        }
    }

    /// Every proxy record on both nodes.
    var allRecords: [ProxyRecord] { get throws { try lab.nodes.flatMap { try lab.proxyRecords($0) } } }
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
                // The agent is told only the probe IPs; any other setting would silently not apply.
                var rest = c
                rest.probeIPv4 = CaptureConfig().probeIPv4
                rest.probeIPv6 = CaptureConfig().probeIPv6
                guard rest == CaptureConfig() else { throw LabError("a via-agent setup can only change the probe IPs, not \(c)") }
                if c != CaptureConfig() {
                    let r = try AgentClient.call(ControlRequest(op: "set-probe-ips", probeIPv4: c.probeIPv4.description, probeIPv6: c.probeIPv6.description),
                                                 socket: node.agentControlSocket)
                    #expect(r.ok)
                }
            }
        }
        for node in lab.nodes { try lab.addPod(on: node, name: "\(node.name)-outsider") }
        let made = try LabCapture(lab: lab, mode: setup.mode, viaAgent: setup.viaAgent, config: config)
        capture = made
        let cl = CaptureLab(lab: lab, capture: made)
        for pod in cl.meshed { if setup.viaAgent { made.adopt(pod) } else { try made.enroll(pod) } }
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

/// Everything of capture the kernel holds inside a pod's namespace, whichever dataplane made it:
/// on every interface its qdiscs, tc filters and accept_local; tcx and other attachments
/// (bpftool net); policy rules and table 100 in both families; the rules of both iptables
/// backends in both families. A tool that fails is recorded with its error, never swallowed into
/// an empty string, so an absence check cannot pass on nothing.
func podKernelState(_ lab: Lab, _ pod: LabPod) throws -> String {
    var queries: [(String, [String])] = []
    for dev in try interfaces(lab, pod.netns) {
        queries += [("tc", ["qdisc", "show", "dev", dev]), ("tc", ["filter", "show", "dev", dev, "ingress"]),
                    ("tc", ["filter", "show", "dev", dev, "egress"]), ("cat", ["/proc/sys/net/ipv4/conf/\(dev)/accept_local"])]
    }
    queries += [("bpftool", ["net", "show"]), ("ip", ["-4", "rule"]), ("ip", ["-6", "rule"]),
                ("ip", ["-4", "route", "show", "table", "100"]), ("ip", ["-6", "route", "show", "table", "100"]),
                ("iptables-nft-save", []), ("ip6tables-nft-save", []), ("iptables-legacy-save", []), ("ip6tables-legacy-save", []),
                ("nft", ["list", "tables"])]
    return try queries.map { tool, args in "## \(tool) \(args.joined(separator: " "))\n" + (try kernelQuery(pod.netns, tool, args)) }
        .joined(separator: "\n")
}

/// The same for a node's namespace: the probe SNAT and its guard in both backends, the ipsets, and
/// what is attached to the node's interfaces (the host side of every pod's veth).
func nodeKernelState(_ lab: Lab, _ node: LabNode) throws -> String {
    var queries: [(String, [String])] = [("ipset", ["list", "-name"]), ("bpftool", ["net", "show"]),
                                         ("iptables-nft-save", []), ("ip6tables-nft-save", []),
                                         ("iptables-legacy-save", []), ("ip6tables-legacy-save", []), ("nft", ["list", "tables"])]
    for dev in try interfaces(lab, node.netns) { queries.append(("tc", ["filter", "show", "dev", dev, "ingress"])) }
    queries.append(("ip", ["-o", "address", "show", "dev", "lo"])) // where the ebpf dataplane holds the probe IPs
    let netns = try queries.map { tool, args in "## \(tool) \(args.joined(separator: " "))\n" + (try kernelQuery(node.netns, tool, args)) }
    return (netns + [try nodeLinks(node)]).joined(separator: "\n")
}

/// The node's pinned cgroup links (the ebpf dataplane's socket programs) and the programs they run,
/// by name: the cgroup root is shared by every lab node, so they are found through the node's pins.
func nodeLinks(_ node: LabNode) throws -> String {
    let dir = "\(node.bpfPinRoot)/node"
    guard FileManager.default.fileExists(atPath: dir) else { return "## node links\nnone" }
    var out = ["## node links"]
    for pin in try FileManager.default.contentsOfDirectory(atPath: dir).sorted() {
        let id = try LinkAttach.pinnedLinkProgramID("\(dir)/\(pin)")
        let prog = try Command.run("bpftool", ["prog", "show", "id", "\(id)"])
        out.append("\(pin): " + (prog.split(separator: "\n").first.map(String.init) ?? ""))
    }
    return out.joined(separator: "\n")
}

/// The non-loopback interfaces of a namespace, by name.
func interfaces(_ lab: Lab, _ netns: NetworkNamespace) throws -> [String] {
    try lab.inNamespace(netns, "ip", ["-o", "link", "show"]).split(separator: "\n").compactMap { line in
        let name = line.split(separator: ":").dropFirst().first?.trimmingCharacters(in: .whitespaces)
        return name.map { String($0.split(separator: "@")[0]) }
    }.filter { $0 != "lo" }
}

/// One query's output with what changes by itself removed (save tools' timestamped comments and
/// packet counters), or its exit status and error.
private func kernelQuery(_ netns: NetworkNamespace, _ tool: String, _ args: [String]) throws -> String {
    let r = try Command.capture("nsenter", ["--net=\(netns.path)", "--", try Command.resolve(tool)] + args)
    // The kernel keeps a FIB table once created, empty after its last route goes: "no table" and
    // "empty table" are the same state.
    let noTable = r.status != 0 && r.stderr.contains("FIB table does not exist")
    let text = r.status == 0 || noTable ? r.stdout : "exit \(r.status): \(r.stderr)"
    return text.split(separator: "\n").filter { !$0.hasPrefix("#") }
        .map { $0.replacingOccurrences(of: #"\[\d+:\d+\]"#, with: "[0:0]", options: .regularExpression) }
        .joined(separator: "\n")
}

/// The marks of our capture found in a kernel state dump: iptables chains, BPF programs, the
/// policy rule and its table, a raised accept_local. Empty for a pod with nothing of ours.
func captureMarks(_ state: String) -> [String] {
    var marks: [String] = []
    for needle in ["ISTIO", "istio-ambient", "tc_pod_", "lookup 100", "local default", "fwmark 0x"] where state.contains(needle) { marks.append(needle) }
    // An accept_local of 1 directly under its heading.
    if state.range(of: #"accept_local\n1"#, options: .regularExpression) != nil { marks.append("accept_local 1") }
    return marks
}

/// An absence check: none of our marks, and every tool answered (a failed dump shows nothing).
func expectClean(_ state: String, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(captureMarks(state).isEmpty, "capture left behind: \(captureMarks(state)) in \(state)", sourceLocation: sourceLocation)
    let failures = state.split(separator: "\n").filter { $0.hasPrefix("exit ") }
    #expect(failures.isEmpty, "a dump tool failed, so absence proves nothing: \(failures)", sourceLocation: sourceLocation)
}

/// What a capture-state check expects of an enrolled pod in `mode`: proves the dump can see us
/// before any check relies on not seeing us.
func expectCaptured(_ state: String, _ mode: DataplaneMode, sourceLocation: SourceLocation = #_sourceLocation) {
    let marks = captureMarks(state)
    let expected = switch mode {
    case .ebpf: ["tc_pod_", "lookup 100", "accept_local 1"]
    case .nftables: ["istio-ambient", "lookup 100"]
    case .iptables, .auto: ["ISTIO", "lookup 100"]
    }
    #expect(Set(expected).isSubset(of: Set(marks)), "an enrolled pod's state lacks \(Set(expected).subtracting(marks)): \(state)",
            sourceLocation: sourceLocation)
}

/// Kept for the conformance suite's wording: the same dump as ``podKernelState(_:_:)``.
func captureState(_ lab: Lab, _ pod: LabPod) throws -> String { try podKernelState(lab, pod) }

/// Whether the node still treats `ip` as in the mesh (the ipset in iptables mode, the nft set in
/// nftables mode, ra_pods in ebpf mode).
func nodeHasMember(_ cl: CaptureLab, _ node: LabNode, _ ip: IPAddress) throws -> Bool {
    switch cl.capture.dataplane(node) {
    case let ebpf as EBPFDataplane: return try ebpf.maps.pod(ip) != nil
    case is NftablesDataplane:
        let set = CaptureConfig().ipsetName(ipv6: ip.isIPv6)
        let listed = try cl.lab.inNamespace(node.netns, "nft", ["-j", "list", "set", "inet", NftablesRules.nodeTable, set])
        return listed.contains("\"\(ip)\"")
    default: return try cl.lab.inNamespace(node.netns, "ipset", ["list"]).contains(ip.description)
    }
}

extension LabPod {
    /// The pod's IPv4 address; a pod without one fails the test with a recorded issue instead of
    /// crashing the runner (a crash skips every teardown).
    var ip4: IPAddress {
        if let ipv4 { return ipv4 }
        Issue.record("\(name) has no IPv4 address")
        return IPAddress("192.0.2.1")!
    }

    /// The pod's IPv6 address; see ``ip4``.
    var ip6: IPAddress {
        if let ipv6 { return ipv6 }
        Issue.record("\(name) has no IPv6 address")
        return IPAddress("2001:db8::1")!
    }
}

/// `node`'s dataplane as the eBPF one, or an error (never a crashing cast).
func ebpfDataplane(_ cl: CaptureLab, _ node: LabNode) throws -> EBPFDataplane {
    guard let dp = cl.capture.dataplane(node) as? EBPFDataplane else { throw LabError("\(node.name) does not run the ebpf dataplane") }
    return dp
}

/// Routes `node`'s traffic to `probe` (the pods' replies to it) to `attacker`, which then holds the
/// probe IP itself: an attacker on the path that can complete a handshake from the probe IP. The
/// ebpf dataplane holds the probe IP on the node, so the node's local table moves behind the rule
/// that forwards to the attacker. Returns what puts the node back (before a genuine probe).
func routeProbeReplies(_ lab: Lab, on node: LabNode, to attacker: LabPod, probe: IPAddress) throws -> () throws -> Void {
    let n = ["-n", node.netnsName]
    try lab.ip(n + ["route", "add", "\(probe)/32", "via", attacker.ip4.description, "table", "201"])
    try lab.ip(n + ["rule", "add", "pref", "10", "to", "\(probe)/32", "lookup", "201"])
    try lab.ip(n + ["rule", "add", "pref", "100", "lookup", "local"])
    try lab.ip(n + ["rule", "del", "pref", "0", "lookup", "local"])
    try lab.ip(["-n", attacker.netnsName, "route", "add", "local", "\(probe)/32", "dev", "lo"])
    return {
        try lab.ip(n + ["rule", "add", "pref", "0", "lookup", "local"])
        try lab.ip(n + ["rule", "del", "pref", "10"])
        try lab.ip(n + ["rule", "del", "pref", "100"])
    }
}

/// Packets counted by the `counter` statements of an nft chain in `netns`.
func nftCounted(_ lab: Lab, _ netns: NetworkNamespace, table: String, chain: String) throws -> Int {
    let text = try lab.inNamespace(netns, "nft", ["-j", "list", "chain", "inet", table, chain])
    let root = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    var packets = 0
    for o in root["nftables"] as? [[String: Any]] ?? [] {
        for e in (o["rule"] as? [String: Any])?["expr"] as? [[String: Any]] ?? [] {
            packets += ((e["counter"] as? [String: Any])?["packets"] as? Int) ?? 0
        }
    }
    return packets
}
