import AgentAPI
import BPFLoader
import Dataplane
import Foundation
import MapSync
import NodeLab
import SystemCalls
import Testing

/// Invariant 2 (docs/security.md): every interface of a meshed pod is captured, including one
/// that appears after enrolment, as a meta plugin's net1 does.
@Suite("Capture on every interface", .serialized)
struct InterfaceCaptureTests {
    /// A second link between a meshed pod and an outsider pod, created inside the meshed pod after
    /// it was enrolled: `net1` on both ends, 192.168.254.1/30 in the meshed pod, .2 in the outsider.
    struct SecondLink {
        let lab: Lab
        let meshed: LabPod
        static let meshedIP = IPAddress("192.168.254.1")!
        static let outsiderIP = IPAddress("192.168.254.2")!

        /// `index`: the meshed end's ifindex (the kernel picks one by default).
        init(lab: Lab, meshed: LabPod, outsider: LabPod, index: Int32? = nil) throws {
            self.lab = lab
            self.meshed = meshed
            let peer = (outsider.netns.path as NSString).lastPathComponent
            let fixed = index.map { ["index", "\($0)"] } ?? []
            _ = try lab.inNamespace(meshed.netns, "ip", ["link", "add", "net1"] + fixed + ["type", "veth", "peer", "name", "net1", "netns", peer])
            _ = try lab.inNamespace(meshed.netns, "ip", ["addr", "add", "\(Self.meshedIP)/30", "dev", "net1"])
            _ = try lab.inNamespace(meshed.netns, "ip", ["link", "set", "net1", "up"])
            _ = try lab.inNamespace(outsider.netns, "ip", ["addr", "add", "\(Self.outsiderIP)/30", "dev", "net1"])
            _ = try lab.inNamespace(outsider.netns, "ip", ["link", "set", "net1", "up"])
        }

        /// Deletes both ends.
        func remove() { _ = try? lab.inNamespace(meshed.netns, "ip", ["link", "del", "net1"]) }
    }

    @Test("an interface added after enrolment is captured, inbound and outbound", arguments: conformanceSetups)
    func addedLater(_ setup: CaptureSetup) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(setup) { cl throws in
            let a = cl.meshed[0], outsider = try cl.outsider(a.node)
            let link = try SecondLink(lab: cl.lab, meshed: a, outsider: outsider)
            defer { link.remove() }
            try waitForCapture { try cl.capture.dataplane(a.node).verify(cl.lab.podSpec(a)) }
            try expectCapturedOnSecondLink(cl, a, outsider)
        }
    }

    @Test("an interface deleted and made again with the same index is captured again (a pinned tcx link does not outlive its device)",
          arguments: [("iptables", ""), ("nftables", ""), ("ebpf", "clsact"), ("ebpf", "tcx")].filter { testedModes.map(\.rawValue).contains($0.0) })
    func madeAgain(_ mode: String, _ attach: String) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        let setup = CaptureSetup(mode: DataplaneMode(rawValue: mode)!, viaAgent: true)
        try withCaptureLab(setup, options: { $0.agentExtraArguments = attach.isEmpty ? [] : ["--attach", attach] }) { cl throws in
            let a = cl.meshed[0], outsider = try cl.outsider(a.node)
            var link = try SecondLink(lab: cl.lab, meshed: a, outsider: outsider)
            defer { link.remove() }
            // The agent's own verify (its attach mode, tcx or clsact), as `status` reports it.
            let drift = { () throws -> [String] in
                let r = try AgentClient.call(ControlRequest(op: "status"), socket: a.node.agentControlSocket)
                return try #require(r.status?.pods.first { $0.uid == a.identity.uid }).drift
            }
            try waitForCapture(drift)
            let index = try a.netns.run { Int32(if_nametoindex("net1")) }
            link.remove()
            try waitFor("net1 gone") { (try? a.netns.run { if_nametoindex("net1") }) == 0 }
            link = try SecondLink(lab: cl.lab, meshed: a, outsider: outsider, index: index)
            #expect(try a.netns.run { Int32(if_nametoindex("net1")) } == index, "the new net1 has the old one's index")
            try waitForCapture(drift)
            try expectCapturedOnSecondLink(cl, a, outsider)
        }
    }

    /// Waits until `verify` finds nothing missing (net1 included); says what was missing if not.
    func waitForCapture(_ verify: () throws -> [String]) throws {
        var drift: [String] = []
        do {
            try waitFor("capture on net1", seconds: 5) {
                drift = (try? verify()) ?? ["verify failed"]
                return drift.isEmpty
            }
        } catch { throw LabError("\(error): \(drift)") }
    }

    /// Inbound over net1 reaches the proxy and not the app; outbound over it goes through the proxy.
    func expectCapturedOnSecondLink(_ cl: CaptureLab, _ a: LabPod, _ outsider: LabPod) throws {
        let inbound = SocketAddress(SecondLink.meshedIP, Lab.httpPort)
        // The proxy refuses it (net1's address is not one of the pod's, as ztunnel refuses a
        // destination it does not know): what matters is that it, not the app, got it.
        let appBefore = try cl.lab.appRecords(a).count, inBefore = try cl.records(a.node, listener: 15006, to: inbound).count
        _ = try? cl.lab.request(from: outsider, to: inbound, timeout: 2)
        #expect(try cl.lab.appRecords(a).count == appBefore, "the app was not reached directly")
        #expect(try cl.records(a.node, listener: 15006, to: inbound).count == inBefore + 1, "inbound on net1 went through the proxy: \((try? cl.records(a.node)) ?? [])")
        let outbound = SocketAddress(SecondLink.outsiderIP, Lab.httpPort)
        let outBefore = try cl.records(a.node, listener: 15001, to: outbound).count
        let o = try cl.lab.request(from: a, to: outbound)
        #expect(o.status == 200, "\(o.body)")
        #expect(try cl.records(a.node, listener: 15001, to: outbound).count == outBefore + 1, "outbound on net1 went through the proxy: \((try? cl.records(a.node)) ?? [])")
    }

    @Test("a SYN on an interface no tc program watches reaches no app: the namespace-wide guard")
    func unwatchedInterface() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(.ebpf) { cl throws in
            let a = cl.meshed[0], outsider = try cl.outsider(a.node)
            let dp = try ebpfDataplane(cl, a.node)
            let spec = cl.lab.podSpec(a)
            let link = try SecondLink(lab: cl.lab, meshed: a, outsider: outsider)
            defer { link.remove() }
            let target = SocketAddress(SecondLink.meshedIP, Lab.httpPort)
            // The presence: out of the mesh, the app answers over net1 and its record shows it.
            try dp.remove(spec)
            let before = try cl.lab.appRecords(a).count
            #expect(try cl.lab.request(from: outsider, to: target).status == 200)
            #expect(try cl.lab.appRecords(a).count == before + 1)
            try dp.enroll(spec)
            #expect(try dp.verify(spec).isEmpty, "enrolment attached to net1 as well")
            // The window the guard is for, as before the watcher has seen net1: no tc programs on
            // it, and the sk_lookup program not told that it carries them.
            _ = try cl.lab.inNamespace(a.netns, "tc", ["qdisc", "del", "dev", "net1", "clsact"])
            let index = try #require(try dp.maps.pod(a.ip4)).pod_index
            let published = try dp.maps.interfaces(podIndex: index)
            let net1 = try a.netns.run { Int32(if_nametoindex("net1")) }
            #expect(Set(published.map(\.1)).contains(net1), "net1 was published at enrolment")
            try dp.maps.setInterfaces(podIndex: index, addresses: Array(Set(published.map(\.0))), ifindexes: Array(Set(published.map(\.1)).subtracting([net1])))
            #expect(try dp.verify(spec).contains { $0.contains("net1") }, "verify reports the missing programs")
            // Counted on index 0: net1's address is not one the runtime gave the pod.
            let dropped = try dp.maps.counters(podIndex: 0)[.dropUnwatched, default: 0]
            let proxied = try cl.records(a.node, to: target).count
            let r = try? cl.lab.request(from: outsider, to: target, timeout: 1)
            #expect(r == nil, "no answer over an unwatched interface: \(String(describing: r?.body))")
            #expect(try cl.lab.appRecords(a).count == before + 1, "the app saw nothing")
            #expect(try cl.records(a.node, to: target).count == proxied, "nor the proxy")
            #expect(try dp.maps.counters(podIndex: 0)[.dropUnwatched, default: 0] > dropped, "the SYN was dropped and counted")
            // The pod's own address over net1 is guarded the same way.
            let own = SocketAddress(a.ip4, Lab.httpPort)
            _ = try cl.lab.inNamespace(outsider.netns, "ip", ["route", "add", "\(a.ip4)/32", "dev", "net1"])
            #expect((try? cl.lab.request(from: outsider, to: own, timeout: 1)) == nil)
            #expect(try cl.lab.appRecords(a).count == before + 1, "the app saw nothing")
            _ = try cl.lab.inNamespace(outsider.netns, "ip", ["route", "del", "\(a.ip4)/32", "dev", "net1"])
            try outboundWindow(cl, a, outsider, dp, spec, index: index, net1: net1)
            try dp.enroll(spec)
            #expect(try dp.verify(spec).isEmpty, "repaired")
            _ = try? cl.lab.request(from: outsider, to: target, timeout: 2)
            #expect(try cl.records(a.node, to: target).count == proxied + 1, "captured again once attached")
            #expect(try cl.lab.appRecords(a).count == before + 1)
        }
    }

    @Test("a link without Ethernet framing (tun) inside a meshed pod carries nothing out: the egress guard drops it",
          .enabled(if: BPFObject.netfilterProgramsSupported, "the egress guard needs netfilter BPF programs (Linux 6.4+)"))
    func nonEthernetLink() throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(.ebpf) { cl throws in
            let a = cl.meshed[0], dp = try ebpfDataplane(cl, a.node), spec = cl.lab.podSpec(a)
            let pins = dp.egressGuardPins(spec)
            #expect(pins.count == 2, "the guard is attached where the kernel has it")
            // A persistent tun with no reader: whatever reaches it is counted as sent or dropped there.
            for args in [["tuntap", "add", "dev", "tun0", "mode", "tun"], ["addr", "add", "10.99.0.1/24", "dev", "tun0"],
                         ["link", "set", "tun0", "up"], ["route", "add", "198.51.100.1/32", "dev", "tun0"]] {
                _ = try cl.lab.inNamespace(a.netns, "ip", args)
            }
            defer { _ = try? cl.lab.inNamespace(a.netns, "ip", ["link", "del", "tun0"]) }
            // (sysfs shows the namespace that mounted it, so the counters come from netlink.)
            func reachedTun() throws -> Int {
                let json = try cl.lab.inNamespace(a.netns, "ip", ["-s", "-j", "link", "show", "dev", "tun0"])
                let links = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [[String: Any]])
                let tx = try #require((links.first?["stats64"] as? [String: Any])?["tx"] as? [String: Any], "\(json)")
                return try #require(tx["packets"] as? Int) + (try #require(tx["dropped"] as? Int))
            }
            let index = try #require(try dp.maps.pod(a.ip4)).pod_index
            let dropped = try dp.maps.counters(podIndex: index)[.dropUnwatched, default: 0]
            let target = SocketAddress(IPAddress("198.51.100.1")!, 80)
            #expect((try? cl.lab.request(from: a, to: target, timeout: 1)) == nil)
            #expect(try reachedTun() == 0, "nothing reached tun0")
            #expect(try dp.maps.counters(podIndex: index)[.dropUnwatched, default: 0] > dropped, "dropped and counted on the pod")
            // The presence: without the guard the SYNs reach the device.
            for pin in pins { LinkAttach.unpin(pin) }
            _ = try? cl.lab.request(from: a, to: target, timeout: 1)
            #expect(try reachedTun() > 0, "without the guard the SYNs left through tun0")
        }
    }

    /// Outbound in the same window: the namespace-wide egress guard (netfilter, Linux 6.4+) drops
    /// what would leave through net1 before its programs are attached; without the guard the pod's
    /// connection leaves uncaptured, which is the window it closes.
    private func outboundWindow(_ cl: CaptureLab, _ a: LabPod, _ outsider: LabPod, _ dp: EBPFDataplane, _ spec: PodSpec,
                                index: UInt32, net1: Int32) throws {
        let pins = dp.egressGuardPins(spec)
        let target = SocketAddress(SecondLink.outsiderIP, Lab.httpPort)
        guard !pins.isEmpty else {
            // Before Linux 6.4 there is no guard: the documented window (README, docs/security.md).
            #expect(!BPFObject.netfilterProgramsSupported)
            let seen = try cl.lab.appRecords(outsider).count, proxied = try cl.records(a.node, listener: 15001, to: target).count
            #expect(try cl.lab.request(from: a, to: target).status == 200)
            #expect(try cl.lab.appRecords(outsider).count == seen + 1 && cl.records(a.node, listener: 15001, to: target).count == proxied,
                    "without netfilter BPF programs the window is open: the connection left uncaptured")
            return
        }
        let netns = try a.netns.inode()
        let published = try dp.maps.egressInterfaces(podIndex: index).filter { $0.netns == netns }.map(\.ifindex)
        #expect(Set(published) == Set([0, try a.netns.run { Int32(if_nametoindex("eth0")) }, net1]), "the namespace, eth0 and net1 were published")
        try dp.maps.setEgressInterfaces(netns: netns, podIndex: index, ifindexes: published.filter { $0 != 0 && $0 != net1 })
        #expect(try dp.verify(spec).contains("ra_egress_ifaces: interface \(net1) not published for the egress guard"))
        let seen = try cl.lab.appRecords(outsider).count, proxied = try cl.records(a.node, listener: 15001, to: target).count
        let dropped = try dp.maps.counters(podIndex: index)[.dropUnwatched, default: 0]
        let r = try? cl.lab.request(from: a, to: target, timeout: 1)
        #expect(r == nil, "nothing leaves through an unwatched interface: \(String(describing: r?.body))")
        #expect(try cl.lab.appRecords(outsider).count == seen, "the outsider saw nothing")
        #expect(try cl.records(a.node, listener: 15001, to: target).count == proxied)
        #expect(try dp.maps.counters(podIndex: index)[.dropUnwatched, default: 0] > dropped, "dropped and counted on the pod")
        // The presence: with the guard's links gone, the same connection leaves uncaptured.
        for pin in pins { LinkAttach.unpin(pin) }
        #expect(try dp.verify(spec).contains { $0.contains("egress guard link") }, "verify reports the missing guard")
        let open = try cl.lab.request(from: a, to: target)
        #expect(open.status == 200)
        #expect(try cl.lab.appRecords(outsider).count == seen + 1 && cl.records(a.node, listener: 15001, to: target).count == proxied,
                "without the guard the connection bypassed the proxy")
    }

    @Test("istio.io/reroute-virtual-interfaces: what arrives on a listed interface is captured as the pod's outbound", arguments: conformanceModes)
    func rerouteVirtualInterface(_ mode: DataplaneMode) throws {
        if let why = labUnavailableReason() { Issue.record("cannot run: \(why)"); return }
        try withCaptureLab(mode) { cl throws in
            // The outsider plays a VM behind the pod's net1 (a KubeVirt tap) and reaches a server
            // elsewhere through the pod.
            let a = cl.meshed[0], vm = try cl.outsider(a.node)
            let dp = cl.capture.dataplane(a.node)
            let link = try SecondLink(lab: cl.lab, meshed: a, outsider: vm)
            defer { link.remove() }
            let server = SocketAddress(try cl.outsider(cl.n2).ip4, Lab.httpPort)
            _ = try cl.lab.inNamespace(vm.netns, "ip", ["route", "add", "\(server.ip)/32", "via", "\(SecondLink.meshedIP)", "dev", "net1"])
            try waitFor("capture on net1", seconds: 5) { (try? dp.verify(cl.lab.podSpec(a)))?.isEmpty == true }
            // Without the annotation the VM's traffic is inbound to a pod that does not forward: it goes nowhere.
            #expect((try? cl.lab.request(from: vm, to: server, timeout: 1)) == nil)
            #expect(try cl.records(a.node, listener: 15001, to: server).isEmpty)
            var spec = cl.lab.podSpec(a)
            spec.rerouteInterfaces = ["net1"]
            try dp.enroll(spec)
            #expect(try dp.verify(spec).isEmpty)
            let r = try cl.lab.request(from: vm, to: server)
            #expect(r.status == 200)
            #expect(clientIP(r.body) == a.ip4.description, "the server saw the pod's proxy, not the VM: \(r.body)")
            #expect(try cl.records(a.node, listener: 15001, to: server).count == 1, "\((try? cl.records(a.node)) ?? [])")
        }
    }
}
