import BPFLoader
import Dataplane
import Foundation
import NodeLab
import SystemCalls
import Testing

/// How another CNI's programs sit on the node side of every pod's veth (and on the node's uplink),
/// as Cilium and Calico in eBPF mode put theirs. The programs are `Lab/bpf/other_cni.bpf.c`.
enum OtherCNIPrograms: String, CaseIterable, Sendable, CustomTestStringConvertible {
    /// clsact, priority 1 (before every other filter), returning TC_ACT_OK: the chain ends there.
    case clsactFirst
    /// clsact, the last priority, after a filter that lets the next one run.
    case clsactLast
    /// tcx links, ingress and egress, returning TCX_PASS (Linux 6.6+).
    case tcx
    /// clsact ingress: forwarded packets leave by bpf_redirect_neigh after a FIB lookup, past the
    /// node's netfilter and bridge (Cilium's BPF host routing).
    case hostRouting
    /// The uplink's ingress: packets for a local pod go straight into it with bpf_redirect_peer,
    /// past the node's stack and the pod's veth (Cilium's and Calico's fast path).
    case redirectPeer

    var testDescription: String { rawValue }
}

/// The object and the pins of another CNI on one node.
struct OtherCNI {
    let object: BPFObject
    let programs: [String: BPFProgram]
    let node: LabNode
    var pins: String { "\(node.bpffsMount)/other-cni" }

    static var objectPath: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("bpf/other_cni.bpf.o").path
    }

    init(node: LabNode) throws {
        self.node = node
        let pins = "\(node.bpffsMount)/other-cni"
        try BPFFS.ensureMounted(node.bpffsMount) // the lab's teardown unmounts it, in either mode
        object = try BPFObject(path: Self.objectPath, mapPinDirectory: "\(pins)/maps")
        programs = try object.pinnedPrograms(in: "\(pins)/progs", names: ["other_pass", "other_continue", "other_host_routing", "other_to_endpoint"])
    }

    /// How many packets program step `what` (enum other_seen) saw.
    func seen(_ what: UInt32) throws -> UInt64 { try object.map("other_cni_seen").lookup(what, as: UInt64.self) ?? 0 }

    /// A clsact filter with the real `tc`, from the pinned program.
    func clsact(_ lab: Lab, dev: String, ingress: Bool, program: String, priority: Int) throws {
        _ = try lab.inNamespace(node.netns, "tc", ["qdisc", "replace", "dev", dev, "clsact"])
        _ = try lab.inNamespace(node.netns, "tc", ["filter", "add", "dev", dev, ingress ? "ingress" : "egress", "prio", "\(priority)",
                                                   "handle", "0x7", "bpf", "direct-action", "object-pinned", "\(pins)/progs/\(program)"])
    }

    /// A tcx link, pinned under the other CNI's folder.
    func tcx(dev: String, ingress: Bool, program: String) throws {
        let prog = try #require(programs[program])
        let pin = "\(pins)/links/\(dev)-\(ingress ? "ingress" : "egress")"
        try FileManager.default.createDirectory(atPath: "\(pins)/links", withIntermediateDirectories: true)
        try node.netns.run { try LinkAttach.tcx(prog, ifindex: try TCAttach.ifindex(dev), ingress: ingress, pinPath: pin) }
    }

    /// Lets the uplink program deliver to `pod` straight into its namespace.
    func addEndpoint(_ lab: Lab, _ pod: LabPod, hostVeth: (index: Int32, name: String)) throws {
        struct Endpoint: BitwiseCopyable { var ifindex: UInt32; var podMAC: MAC; var hostMAC: MAC }
        let key = pod.ip4.bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
        let value = Endpoint(ifindex: UInt32(hostVeth.index), podMAC: try mac(lab, pod.netns, "eth0"), hostMAC: try mac(lab, node.netns, hostVeth.name))
        try object.map("other_cni_endpoints").update(key, value)
    }
}

typealias MAC = (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8)

/// The Ethernet address of `dev` in `netns`.
func mac(_ lab: Lab, _ netns: NetworkNamespace, _ dev: String) throws -> MAC {
    let line = try lab.inNamespace(netns, "ip", ["-o", "link", "show", "dev", dev])
    let text = try #require(line.range(of: #"link/ether ([0-9a-f:]{17})"#, options: .regularExpression).map { String(line[$0].dropFirst(11)) })
    let b = text.split(separator: ":").compactMap { UInt8($0, radix: 16) }
    try #require(b.count == 6)
    return (b[0], b[1], b[2], b[3], b[4], b[5])
}

/// The node side of `pod`'s veth: its index and name in the node's namespace.
func hostVeth(_ pod: LabPod) throws -> (index: Int32, name: String) {
    let index = try pod.netns.run { try Netlink.link(named: "eth0").linkIndex }
    let name = try pod.node.netns.run { try Netlink.links().first { $0.index == index }?.name }
    return (index, try #require(name))
}

/// Capture and kubelet probes beside another CNI's programs on the node side of each pod's veth:
/// the ebpf dataplane runs nothing there (probes get their source from socket programs on the
/// node's cgroup), so nothing that runs there, first, last or instead of the node's stack, can
/// skip it. The iptables and nftables dataplanes depend on the node's stack for their probe SNAT
/// (see `hostRoutingNetfilter`).
@Suite("Coexistence with another CNI's programs", .serialized)
struct CoexistenceTests {
    @Test("probes reach meshed pods from the probe IP uncaptured and capture stays intact beside another CNI's programs",
          arguments: testedModes.flatMap { mode in
              [OtherCNIPrograms.clsactFirst, .clsactLast, .hostRouting, .redirectPeer].map { (mode, $0) }
          }.filter { !($0.0 != .ebpf && $0.1 == .hostRouting) }) // iptables and nftables beside host routing: their own case below
    func beside(_ mode: DataplaneMode, _ other: OtherCNIPrograms) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(mode) { cl throws in
            let cni = try install(other, cl)
            try expectProbesAndCapture(cl)
            try expectRan(other, cni)
        }
    }

    @Test("the same beside tcx links on the node side of each pod's veth",
          .enabled(if: tcxUnavailableReason() == nil, "tcx needs Linux 6.6 or later"), arguments: testedModes)
    func besideTcx(_ mode: DataplaneMode) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(mode) { cl throws in
            let cni = try install(.tcx, cl)
            try expectProbesAndCapture(cl)
            try expectRan(.tcx, cni)
        }
    }

    @Test("iptables and nftables modes beside BPF host routing: probe replies skip the node's reverse SNAT and are lost; with the node's IP as probe IP they arrive",
          arguments: testedModes.filter { $0 != .ebpf })
    func hostRoutingNetfilter(_ mode: DataplaneMode) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(mode) { cl throws in
            let cni = try install(.hostRouting, cl)
            let pod = cl.meshed[0]
            #expect(throws: (any Error).self, "the reply to 169.254.7.127 is routed away before conntrack can undo the SNAT") {
                _ = try cl.lab.probe(pod, timeout: 2)
            }
            #expect(try cni[0].seen(3) > 0, "the other CNI redirected packets")
            // Istio's advice for such platforms, HOST_PROBE_SNAT_IP: the node's own IP is local, so
            // the FIB lookup leaves the reply to the node's stack.
            try cl.capture.setProbeIPs(on: pod.node, v4: pod.node.address, v6: pod.node.addressV6)
            #expect(try cl.lab.probe(pod).status == 200)
            #expect(try cl.lab.appRecords(pod).last?.client.hasPrefix("\(pod.node.address):") == true)
            #expect(try cl.records(pod.node, listener: 15006).isEmpty, "the probe was not captured")
        }
    }

    /// Loads the other CNI on both nodes and attaches it to every pod's host veth (or the uplink);
    /// gives node n1 a default route through n2, as a real node has one.
    private func install(_ other: OtherCNIPrograms, _ cl: CaptureLab) throws -> [OtherCNI] {
        try cl.lab.ip(["-n", cl.n1.netnsName, "route", "add", "default", "via", cl.n2.address.description])
        let cnis = try cl.lab.nodes.map { try OtherCNI(node: $0) }
        for (node, cni) in zip(cl.lab.nodes, cnis) {
            for pod in cl.lab.pods where pod.node === node {
                let veth = try hostVeth(pod)
                switch other {
                case .clsactFirst:
                    for ingress in [true, false] { try cni.clsact(cl.lab, dev: veth.name, ingress: ingress, program: "other_pass", priority: 1) }
                case .clsactLast:
                    for ingress in [true, false] {
                        try cni.clsact(cl.lab, dev: veth.name, ingress: ingress, program: "other_continue", priority: 1)
                        try cni.clsact(cl.lab, dev: veth.name, ingress: ingress, program: "other_pass", priority: 65000)
                    }
                case .tcx:
                    for ingress in [true, false] { try cni.tcx(dev: veth.name, ingress: ingress, program: "other_pass") }
                case .hostRouting:
                    try cni.clsact(cl.lab, dev: veth.name, ingress: true, program: "other_host_routing", priority: 1)
                case .redirectPeer:
                    try cni.addEndpoint(cl.lab, pod, hostVeth: veth)
                }
            }
            if other == .redirectPeer {
                let peer = cl.lab.nodes.first { $0 !== node }.map { "to-\($0.name)" }
                try cni.clsact(cl.lab, dev: try #require(peer), ingress: true, program: "other_to_endpoint", priority: 1)
            }
        }
        return cnis
    }

    /// Kubelet probes to every meshed pod pass uncaptured from the probe IP; a meshed pod's
    /// outbound (same node and cross-node) and an outsider's inbound from the other node are captured.
    private func expectProbesAndCapture(_ cl: CaptureLab) throws {
        for pod in cl.meshed where pod.node === cl.n1 {
            for v6 in [false, true] {
                #expect(try cl.lab.probe(pod, ipv6: v6).status == 200, "\(pod.name) probed over IPv\(v6 ? 6 : 4)")
                let seen = try #require(cl.lab.appRecords(pod).last { $0.path == "/healthz" })
                #expect(seen.client.hasPrefix(v6 ? "[fd16:9254:7127:1337:ffff:ffff:ffff:ffff]:" : "169.254.7.127:"), "\(pod.name) saw \(seen.client)")
            }
        }
        #expect(try cl.allRecords.isEmpty, "probes bypass the proxy: \(String(describing: (try? cl.allRecords) ?? []))")
        let a = cl.meshed[0]
        for target in [cl.meshed[1], cl.meshed[2]] {
            let dst = SocketAddress(target.ip4, Lab.httpPort)
            #expect(try cl.lab.request(from: a, to: dst).status == 200)
            #expect(try cl.records(a.node, listener: 15001, to: dst).count == 1, "outbound to \(target.name) captured")
            #expect(try cl.records(target.node, listener: 15008, to: dst).count == 1, "tunnelled into \(target.name)")
        }
        let outsider = try cl.outsider(cl.n2), victim = cl.meshed[0]
        let dst = SocketAddress(victim.ip4, Lab.httpPort)
        #expect(try cl.lab.request(from: outsider, to: dst).status == 200)
        #expect(try cl.records(victim.node, listener: 15006, to: dst).count == 1, "inbound from another node captured")
    }

    /// The other CNI's programs saw the traffic (and redirected it, where that is what they do):
    /// the test saw them run, so it can fail when they skip our capture.
    private func expectRan(_ other: OtherCNIPrograms, _ cnis: [OtherCNI]) throws {
        let n1 = cnis[0]
        switch other {
        case .clsactFirst, .tcx: #expect(try n1.seen(0) > 0)
        case .clsactLast: #expect(try n1.seen(1) > 0 && n1.seen(0) > 0)
        case .hostRouting: #expect(try n1.seen(2) > 0 && n1.seen(3) > 0)
        case .redirectPeer: #expect(try n1.seen(4) > 0 && n1.seen(5) > 0, "packets from n2 went straight into n1's pods")
        }
    }
}

/// Why tcx links cannot be made here, or nil.
func tcxUnavailableReason() -> String? {
    let v = KernelRelease.version
    return KernelRelease.atLeast(6, 6) ? nil : "tcx needs Linux 6.6 (this is \(v.major).\(v.minor))"
}
