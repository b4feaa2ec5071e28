import BPFLoader
import CShim
import Foundation
import Glibc
import Logging
import MapSync
import Synchronization
import SystemCalls

/// Where the eBPF dataplane keeps its kernel objects and how it attaches.
public struct EBPFOptions: Sendable {
    /// The compiled programs (bpf/redirect.bpf.o).
    public var objectPath: String
    /// The project's bpffs directory: maps/, progs/, links/ below it. A sibling of other
    /// projects' trees (/sys/fs/bpf/cilium, ...), never inside one.
    public var pinRoot: String = "/sys/fs/bpf/redirect-agent"
    /// tc clsact (default: far cheaper to attach here) or tcx links.
    public var attach: AttachMode = .clsact
    /// The node's namespace, when the dataplane runs outside it (the lab drives nodes in-process).
    public var nodeNetns: NetworkNamespace?
    /// Creates options.
    public init(objectPath: String) { self.objectPath = objectPath }

    /// Where the compiled programs are: `REDIRECT_BPF_OBJECT`, else `bpf/redirect.bpf.o` of the
    /// checkout the running binary was built in, else the installed copy.
    public static func defaultObjectPath(besides binaryDirectory: String) -> String {
        if let p = ProcessInfo.processInfo.environment["REDIRECT_BPF_OBJECT"], !p.isEmpty { return p }
        var dir = URL(fileURLWithPath: binaryDirectory)
        for _ in 0..<5 {
            let candidate = dir.appendingPathComponent("bpf/redirect.bpf.o").path
            if FileManager.default.fileExists(atPath: candidate) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        return "/usr/lib/redirect-agent/redirect.bpf.o"
    }
}

/// Capture with BPF programs: on the pod's own interface (inside its namespace) tc programs steer
/// packets to the proxy's sockets with bpf_sk_assign; an sk_lookup program covers SYNs that meet a
/// TIME_WAIT socket. On the node, socket programs on the cgroup root give the kubelet's connections
/// to in-mesh pods the probe IP as their source (the node holds it on loopback), so
/// nothing of ours runs on the host side of a pod's veth, where the primary CNI's programs are.
/// State lives in pinned maps (``MapSync``). No iptables rule anywhere.
public final class EBPFDataplane: Dataplane, Sendable {
    /// Always `.ebpf`.
    public let mode = DataplaneMode.ebpf
    /// The configuration in force.
    public var config: CaptureConfig { current.withLock { $0 } }
    /// The options.
    public let options: EBPFOptions
    /// The maps.
    public let maps: MapSync
    private let current: Mutex<CaptureConfig>
    private let object: BPFObject
    private let programs: [String: BPFProgram]
    // Counter indexes in use, loaded from ra_pods once: allocating one is then no map scan,
    // which would make each enrollment cost grow with the number of pods.
    private struct IndexPool { var used: Set<UInt32>?; var lowestFree: UInt32 = 1 }
    private let indexes = Mutex(IndexPool())
    private let runner: CommandRunner
    private let logger: Logger
    // Interfaces other than the one the runtime named: watched for, attached as they appear,
    // and what attaching changed there (kept in memory: after a restart only the filters are
    // removed from them).
    private let watcher = InterfaceWatcher()
    private let others = Mutex<[String: [Int32: InterfaceChanges]]>([:])
    private let attachLock = Mutex(())
    // Serializes ra_kept writes with the node flag that says whether the programs look there.
    private let keptLock = Mutex(())

    /// The programs, by attach point.
    public static let programNames = ["tc_pod_ingress", "tc_pod_ingress_reroute", "tc_pod_egress", "tc_pod_loopback", "sk_lookup_pod", egressGuardProgram]
        + nodePrograms.map(\.name) + lsmPrograms

    /// The node's security-hook programs (BPF LSM): no socket in a meshed pod may send past the tc
    /// programs (AF_PACKET with PACKET_QDISC_BYPASS, AF_XDP).
    public static let lsmPrograms = ["lsm_pod_socket_create", "lsm_pod_setsockopt"]

    /// The node's socket programs and where each hooks in, on the cgroup root.
    public static let nodePrograms: [(name: String, hook: LinkAttach.CgroupHook)] = [
        ("cg_node_connect4", .connect4), ("cg_node_connect6", .connect6), ("sockops_node", .sockOps),
    ] + dnsPrograms

    /// The pods' DNS capture hooks, on the same cgroup root: they act only on sockets in the
    /// namespaces of pods with DNS capture (``MapSync/setDNSCapture(netnsCookie:podIndex:)``).
    public static let dnsPrograms: [(name: String, hook: LinkAttach.CgroupHook)] = [
        ("cg_pod_connect4", .connect4), ("cg_pod_connect6", .connect6), ("cg_pod_sendmsg4", .sendmsg4),
        ("cg_pod_sendmsg6", .sendmsg6), ("cg_pod_recvmsg4", .recvmsg4), ("cg_pod_recvmsg6", .recvmsg6),
        ("cg_pod_getpeername4", .getpeername4), ("cg_pod_getpeername6", .getpeername6), ("cg_pod_bind4", .bind4), ("cg_pod_bind6", .bind6),
    ]

    /// The node device that holds the probe IPs as local (/32, /128) addresses, so the pods' replies
    /// to a probe are delivered to the kubelet's socket as they are, with no rewriting. Loopback:
    /// every kernel has it (a dummy device needs a module some node kernels lack).
    public static let probeDevice = "lo"

    /// The namespace-wide egress guard: a netfilter program, so Linux 6.4 or later.
    public static let egressGuardProgram = "nf_pod_egress"

    /// The programs this kernel loads: all but the egress guard before Linux 6.4.
    public static var availableProgramNames: [String] {
        programNames.filter { ($0 != egressGuardProgram || BPFObject.netfilterProgramsSupported)
            && (!lsmPrograms.contains($0) || BPFObject.lsmProgramsSupported) }
    }

    /// Whether pods get the egress guard here.
    public var hasEgressGuard: Bool { programs[Self.egressGuardProgram] != nil }

    /// The ingress program for interface `name` of `pod`: inbound on a rerouted interface is outbound.
    static func ingressProgram(_ pod: PodSpec, _ name: String) -> String {
        pod.rerouteInterfaces.contains(name) ? "tc_pod_ingress_reroute" : "tc_pod_ingress"
    }

    /// Loads the programs (reusing pinned maps) and pins them. Writes nothing into the maps: the
    /// config goes in with ``prepareNode()``, so an instance that only reads (`status`, `uninstall`,
    /// a test observing an agent) never overwrites a running agent's probe IPs.
    public init(config: CaptureConfig, options: EBPFOptions, runner: CommandRunner, logger: Logger = Logger(label: "dataplane.ebpf")) throws {
        self.current = Mutex(config)
        self.options = options
        self.runner = runner
        self.logger = logger
        if options.pinRoot.hasPrefix("/sys/fs/bpf/") { try BPFFS.ensureMounted("/sys/fs/bpf") }
        guard BPFFS.isMounted((options.pinRoot as NSString).deletingLastPathComponent) || BPFFS.isMounted(options.pinRoot) else {
            throw DataplaneError(.unsupported, "\(options.pinRoot) is not on a bpffs")
        }
        object = try BPFObject(path: options.objectPath, mapPinDirectory: "\(options.pinRoot)/maps")
        programs = try object.pinnedPrograms(in: "\(options.pinRoot)/progs", names: Self.availableProgramNames, removingOthers: true)
        maps = try MapSync(object: object)
        watcher.onChange { [weak self] pod in self?.interfacesChanged(pod) }
        logger.info("ebpf dataplane loaded", metadata: ["pins": "\(options.pinRoot)", "attach": "\(options.attach.rawValue)"])
    }

    /// A cgroup id no socket has: the proxy's identity while it is still to be learned.
    static let noCgroup = UInt64.max

    static func kernelConfig(_ c: CaptureConfig) -> KernelConfig {
        KernelConfig(probeIPv4: c.probeIPv4, probeIPv6: c.probeIPv6, outboundPort: c.outboundPort, inboundPort: c.inboundPort,
                     tunnelPort: c.tunnelPort, dnsPort: c.dnsPort, drainingProxies: UInt32(c.drainingProxyCgroups.count), proxyMark: c.proxyMark, markMask: c.markMask, captureMark: c.connMark,
                     proxyCgroup: c.proxyUnknown ? Self.noCgroup : c.proxyCgroup?.id ?? 0, kubeletCgroup: c.kubeletCgroup?.id ?? 0)
    }

    private var routing: PolicyRouting { PolicyRouting(config: config) }

    // MARK: node

    /// Writes the node config, puts the probe IPs on the node, and links the node's socket
    /// programs to the cgroup root (idempotent: reconcile runs it at every start).
    public func prepareNode() throws {
        let c = config
        let previous = try maps.readConfig()
        try holdProbeAddresses([c.probeIPv4, c.probeIPv6], releasing: previous.map { [$0.probeIPv4, $0.probeIPv6] } ?? [])
        // Draining proxies a previous run kept (a restart mid-upgrade) are in the map before the config counts them.
        let draining = c.drainingProxyCgroups.map(\.id)
        try maps.addProxyCgroups(draining)
        try maps.write(Self.kernelConfig(c))
        try maps.removeProxyCgroups(keeping: draining)
        try maps.writeNode(netnsCookie: try onNode { try NetworkNamespace.currentCookie() })
        let root = try Self.cgroupRoot()
        for (name, hook) in Self.nodePrograms {
            try LinkAttach.cgroup(try program(name), hook: hook, cgroupDirectory: root, pinPath: nodeLinkPin(name))
        }
        try attachSecurityHooks()
    }

    /// Links the LSM programs where the kernel has BPF LSM, and keeps them only if the kernel calls
    /// them: a kernel booted without bpf in its lsm= list loads and links them, then never runs them.
    private func attachSecurityHooks() throws {
        var why: String?
        if !BPFObject.lsmProgramsSupported {
            why = "the kernel does not load BPF LSM programs (\(SystemError("load an LSM program", code: -BPFObject.lsmProbe)))"
        } else {
            for name in Self.lsmPrograms { try LinkAttach.lsm(try program(name), pinPath: nodeLinkPin(name)) }
            if !LinkAttach.lsmHooksRun() {
                for name in Self.lsmPrograms { LinkAttach.unpin(nodeLinkPin(name)) }
                why = "BPF LSM is not enabled at boot (bpf is missing from the kernel's lsm= list)"
            }
        }
        securityHooksOff.withLock { $0 = why }
        if let why {
            logger.warning("a process in a meshed pod can send past capture with AF_PACKET (PACKET_QDISC_BYPASS) or AF_XDP", metadata: ["reason": "\(why)"])
        }
    }

    /// Why the security hooks are off (nil: linked and running).
    private let securityHooksOff = Mutex<String?>(nil)

    /// Why this node does not refuse sockets that send past the tc programs (nil: it does).
    public var securityHooksOffReason: String? { securityHooksOff.withLock { $0 } }

    /// The security hooks as `status` shows them, and what is wrong with them.
    private func describeSecurityHooks() -> (summary: String, drift: [String]) {
        if let why = securityHooksOff.withLock({ $0 }) { return ("sends past tc not refused: \(why)", []) }
        var (linked, drift) = nodeLinks(Self.lsmPrograms)
        if drift.isEmpty, !LinkAttach.lsmHooksRun() { drift.append("the node's security hooks are linked but the kernel does not run them") }
        return ("AF_PACKET qdisc bypass and AF_XDP refused in meshed pods (\(linked.joined(separator: ", ")))", drift)
    }

    /// The node links of `names` that run the current programs ("name prog id"), and what is wrong
    /// with the others.
    private func nodeLinks(_ names: [String]) -> (linked: [String], drift: [String]) {
        var linked: [String] = [], drift: [String] = []
        for name in names {
            let want = try? program(name).id()
            if let have = try? LinkAttach.pinnedLinkProgramID(nodeLinkPin(name)), have == want { linked.append("\(name) prog \(have)") }
            else { drift.append("node link \(nodeLinkPin(name)) missing or not running program \(want.map(String.init) ?? "?")") }
        }
        return (linked, drift)
    }

    /// Removes the node's links and the probe addresses it held, and the pinned programs, maps and links.
    public func uninstallNode() throws {
        for name in Self.nodePrograms.map(\.name) + Self.lsmPrograms { LinkAttach.unpin(nodeLinkPin(name)) }
        if let held = try? maps.readConfig() { try? holdProbeAddresses([], releasing: [held.probeIPv4, held.probeIPv6]) }
        for sub in ["node", "links", "progs", "maps"] { try? FileManager.default.removeItem(atPath: "\(options.pinRoot)/\(sub)") }
        try? FileManager.default.removeItem(atPath: options.pinRoot)
    }

    /// One map write: every pod sees the new probe IPs on its next packet, and the kubelet's next
    /// connection is bound to them. The old addresses leave the node at once, so a probe in flight
    /// during the change can fail once (the kubelet probes again).
    public func setProbeIPs(v4: IPAddress, v6: IPAddress, pods: [PodSpec]) throws {
        let (old, c) = current.withLock { c -> (CaptureConfig, CaptureConfig) in
            let old = c
            c.probeIPv4 = v4
            c.probeIPv6 = v6
            return (old, c)
        }
        try holdProbeAddresses([v4, v6], releasing: [old.probeIPv4, old.probeIPv6])
        try maps.write(Self.kernelConfig(c))
    }

    /// One config write: the next packet of every pod knows the proxy by its new cgroup. Draining
    /// proxies' cgroups go into ra_proxy_cgroups before the config counts them, and leave it after.
    public func setProxyCgroup(_ cgroup: Cgroup?, draining: [Cgroup], pods: [PodSpec]) throws {
        var c = config
        c.proxyCgroup = cgroup
        c.drainingProxyCgroups = cgroup == nil ? [] : draining
        c.proxyUnknown = cgroup == nil
        let ids = c.drainingProxyCgroups.map(\.id)
        try maps.addProxyCgroups(ids)
        try maps.write(Self.kernelConfig(c))
        try maps.removeProxyCgroups(keeping: ids)
        current.withLock { $0.proxyCgroup = c.proxyCgroup; $0.drainingProxyCgroups = c.drainingProxyCgroups; $0.proxyUnknown = c.proxyUnknown }
    }

    /// The node's socket program links, as `status` shows them, and what is wrong with them.
    public func describeNode() -> (summary: String, drift: [String]) {
        var (linked, drift) = nodeLinks(Self.nodePrograms.map(\.name))
        let probes = [config.probeIPv4, config.probeIPv6]
        let held = ((try? onNode { try Netlink.addresses(index: try Netlink.link(named: Self.probeDevice).index) }) ?? []).filter(probes.contains)
        let local = Set(((try? onNode { try Netlink.addresses() }) ?? []).map(\.description))
        for ip in [config.probeIPv4, config.probeIPv6] where !local.contains(ip.description) {
            drift.append("probe IP \(ip) is not a local address of the node")
        }
        let root = (try? Self.cgroupRoot()) ?? "?", hooks = describeSecurityHooks()
        return ("kubelet connections bound to the probe IP by socket programs on cgroup \(root) (\(linked.joined(separator: ", "))); "
                + "\(Self.probeDevice) holds \(held.map(\.description).joined(separator: ", ")); nothing on host veths; \(hooks.summary)", drift + hooks.drift)
    }

    /// Makes `ips` local addresses of the node, on the probe device, unless another device already
    /// has one (the node's own IP as probe IP: HOST_PROBE_SNAT_IP); then takes `released` (earlier
    /// probe IPs) off the probe device. Only probe IPs are ever added or removed there.
    private func holdProbeAddresses(_ ips: [IPAddress], releasing released: [IPAddress]) throws {
        try onNode {
            let dev = try Netlink.link(named: Self.probeDevice).index
            let onDevice = Set(try Netlink.addresses(index: dev))
            let elsewhere = Set(try Netlink.addresses()).subtracting(onDevice)
            for ip in ips where !elsewhere.contains(ip) {
                do { try Netlink.addHostAddress(ip, index: dev) } catch let e as SystemError where ip.isIPv6 && [EACCES, EAFNOSUPPORT].contains(e.code) {
                    // IPv6 is disabled on the node: no IPv6 probe can be made, nothing to hold.
                    self.logger.warning("IPv6 probe IP not held: IPv6 is disabled on the node", metadata: ["ip": "\(ip)", "error": "\(e)"])
                }
            }
            for ip in released where !ips.contains(ip) && onDevice.contains(ip) { try Netlink.deleteHostAddress(ip, index: dev) }
        }
    }

    /// Where cgroup v2 is mounted: its root holds every process of the node, the kubelet's and the
    /// pods' alike (the programs tell them apart by namespace and cgroup id).
    static func cgroupRoot() throws -> String {
        do { return try Cgroup.mountPoint() } catch {
            throw DataplaneError(.unsupported, "no cgroup v2 mount: the node's socket programs that give kubelet probes their source need one")
        }
    }

    private func nodeLinkPin(_ name: String) -> String { "\(options.pinRoot)/node/\(name)" }

    // MARK: pods

    /// Records the pod's map entry, then attaches its programs, its sk_lookup link, the egress
    /// guard and policy routing. On failure everything is rolled back.
    public func enroll(_ pod: PodSpec) throws {
        try validate(pod)
        // A repeated enrolment keeps what the first one recorded: which qdiscs and sysctls were ours.
        let earlier = pod.ips.lazy.compactMap { try? self.maps.pod($0) }.first
        let index = try earlier?.pod_index ?? allocateIndex()
        do {
            let pinned = [linkPin(pod), tcxPin(pod, "ingress"), tcxPin(pod, "egress")].contains { FileManager.default.fileExists(atPath: $0) }
            let attached = try inspectPod(pod, snapshot: earlier == nil && !pinned && config.keepExistingConnections)
            var flags = earlier?.flags ?? 0
            if attached.createdClsact { flags |= UInt32(RA_POD_CREATED_CLSACT_POD.rawValue) }
            if attached.setAcceptLocal { flags |= UInt32(RA_POD_SET_ACCEPT_LOCAL.rawValue) }
            let bypass = UInt32(RA_POD_BYPASS_INBOUND.rawValue), dns = UInt32(RA_POD_DNS_CAPTURE.rawValue)
            flags = pod.bypassInboundCapture ? flags | bypass : flags & ~bypass
            let capturesDNS = config.capturesDNS(pod)
            flags = capturesDNS ? flags | dns : flags & ~dns
            if capturesDNS && !attached.loopbackClsact { flags |= UInt32(RA_POD_CREATED_CLSACT_LO.rawValue) }
            // Recorded before anything changes, so a failure below, a crash, or a removal later
            // undoes exactly what is ours (undoing a change not yet made is harmless).
            var entry = PodEntry(ips: pod.ips, index: index, podIfindex: UInt32(attached.podIfindex), hostIfindex: earlier?.host_ifindex ?? 0, flags: flags)
            if pod.bypassInboundCapture { try maps.setBypassLookup(true) } // before the pod's entry says so
            try maps.upsert(entry)
            // The delivery check is on lo before queries are redirected there, and off only after.
            if capturesDNS { entry.flags = try setLoopbackCheck(true, pod, flags: entry.flags) }
            try setDNSCapture(capturesDNS, netnsCookie: attached.netnsCookie, index: index)
            if !capturesDNS {
                let flags = try setLoopbackCheck(false, pod, flags: entry.flags)
                if flags != entry.flags {
                    entry.flags = flags
                    try maps.upsert(entry)
                }
            }
            if let existing = attached.existing { keep(existing, pod, index: index) }
            try watcher.watch(pod) // before attaching: an interface that appears from now on is seen
            try attachInPod(pod, attached)
            try attachLock.withLock { _ in // the watcher may react to this pod's links already
                let carrying = try attachOthers(pod, primary: attached.podIfindex)
                try publishInterfaces(pod, index: index, attached: carrying) // before sk_lookup and the guard, which read it
            }
            try LinkAttach.skLookup(try program("sk_lookup_pod"), netnsPath: pod.netns, pinPath: linkPin(pod))
            try attachEgressGuard(pod)
            try routing.apply(netns: pod.netns, families: families(of: pod))
            if entry.hostIfindex != 0 { // an earlier agent's probe SNAT programs on the host veth
                try detachOnNode(entry.hostIfindex, flags: entry.flags)
                entry.hostIfindex = 0
                try maps.upsert(entry)
            }
        } catch {
            // A first enrolment is undone; a repeated one (an update in place) leaves the capture
            // there is: removing it would leave a running pod uncaptured.
            if earlier == nil {
                try? remove(pod)
                releaseIndex(index)
            }
            throw DataplaneError(.applyFailed, pod: pod.name, "\(error)")
        }
    }

    /// Undoes the pod's capture: an earlier agent's host veth programs, links, pod programs, routing, and
    /// last the map entry, which records what enrolment created: a crash part-way leaves the
    /// record for the next removal to finish with.
    public func remove(_ pod: PodSpec) throws {
        var failures: [String] = []
        attachLock.withLock { _ in watcher.unwatch(uid: pod.uid) } // no attachment runs after this
        let entry = pod.ips.lazy.compactMap { try? self.maps.pod($0) }.first
        if let entry, entry.host_ifindex != 0 {
            do { try detachOnNode(entry.host_ifindex, flags: entry.flags) } catch { failures.append("\(error)") }
        }
        LinkAttach.unpin(linkPin(pod))
        for family in guardFamilies { LinkAttach.unpin(guardPin(pod, family)) } // before the programs it waits for go
        if FileManager.default.fileExists(atPath: pod.netns) {
            let flags = entry?.flags ?? 0
            let ours = PodCleanup(destroyClsact: flags & UInt32(RA_POD_CREATED_CLSACT_POD.rawValue) != 0,
                                  resetAcceptLocal: flags & UInt32(RA_POD_SET_ACCEPT_LOCAL.rawValue) != 0)
            do { try detachInPod(pod, ours) } catch { failures.append("\(error)") }
            do { _ = try setLoopbackCheck(false, pod, flags: flags) } catch { failures.append("\(error)") }
            do { try detachOthers(pod, primary: entry.map { Int32($0.pod_ifindex) }) } catch { failures.append("\(error)") }
            do { try routing.remove(netns: pod.netns) } catch { failures.append("\(error)") }
        }
        if !failures.isEmpty { throw DataplaneError(.removeFailed, pod: pod.name, failures.joined(separator: "; ")) }
        do {
            if let entry { try maps.removeDNSCapture { $0 == entry.pod_index } }
            try maps.remove(ips: pod.ips)
        } catch { throw DataplaneError(.removeFailed, pod: pod.name, "\(error)") }
        if let entry {
            try? forgetKept { $0.pod == entry.pod_index }
            releaseIndex(entry.pod_index)
        }
    }

    // MARK: DNS capture

    /// Captures the DNS of the pod with counter index `index` and namespace cookie `netnsCookie`,
    /// or stops (the pod's flag in ra_pods says the same, for the egress check).
    private func setDNSCapture(_ on: Bool, netnsCookie: UInt64, index: UInt32) throws {
        if on { try maps.setDNSCapture(netnsCookie: netnsCookie, podIndex: index) }
        else { try maps.removeDNSCapture { $0 == index } }
    }

    /// What is wrong with the pod's DNS capture entry (pod index `index`).
    private func dnsDrift(_ pod: PodSpec, index: UInt32) throws -> [String] {
        let want = config.capturesDNS(pod)
        let cookies = try maps.dnsCaptures().filter { $0.pod == index }.map(\.netnsCookie)
        guard want else { return cookies.isEmpty ? [] : ["ra_dns_netns captures DNS of a pod that does not want it"] }
        let cookie = try NetworkNamespace(path: pod.netns).run { try NetworkNamespace.currentCookie() }
        return cookies == [cookie] ? [] : ["ra_dns_netns: the pod's namespace (cookie \(cookie)) is not there alone: \(cookies)"]
    }

    // MARK: loopback (where captured queries are delivered)

    /// The loopback device's index, the same in every network namespace.
    static let loopbackIfindex: Int32 = 1

    private func loopbackPin(_ pod: PodSpec) -> String { "\(options.pinRoot)/links/\(pod.uid)-tcx-lo" }

    /// Attaches tc_pod_loopback to the pod's lo ingress (DNS capture on: queries reach only the
    /// proxy's DNS socket) or detaches it; a clsact qdisc on lo goes only if `flags` says we created
    /// it. Returns the flags to record.
    private func setLoopbackCheck(_ on: Bool, _ pod: PodSpec, flags: UInt32) throws -> UInt32 {
        let created = UInt32(RA_POD_CREATED_CLSACT_LO.rawValue), lo = Self.loopbackIfindex
        let mode = options.attach, pin = loopbackPin(pod)
        let check = on ? try program("tc_pod_loopback") : nil
        if !on { LinkAttach.unpin(pin) }
        guard FileManager.default.fileExists(atPath: pod.netns) else { return flags }
        return try NetworkNamespace(path: pod.netns).run {
            switch (mode, check) {
            case (.tcx, let check?):
                try LinkAttach.tcx(check, ifindex: lo, ingress: true, pinPath: pin)
            case (.clsact, let check?):
                _ = try TCAttach.ensureClsact(ifindex: lo)
                try TCAttach.attach(check, ifindex: lo, ingress: true)
            case (.tcx, nil):
                break
            case (.clsact, nil):
                try TCAttach.detach(ifindex: lo, ingress: true)
                guard flags & created != 0 else { break }
                try TCAttach.destroyClsact(ifindex: lo)
                return flags & ~created
            }
            return flags
        }
    }

    /// Whether tc_pod_loopback is on the pod's lo exactly when the pod captures DNS.
    private func loopbackDrift(_ pod: PodSpec) throws -> [String] {
        let want = config.capturesDNS(pod), lo = Self.loopbackIfindex
        let attached: Bool
        switch options.attach {
        case .clsact:
            let id = try program("tc_pod_loopback").id()
            attached = try NetworkNamespace(path: pod.netns).run { TCAttach.attachedProgramID(ifindex: lo, ingress: true) } == id
        case .tcx:
            attached = LinkAttach.tcxAttached(loopbackPin(pod), ifindex: lo)
        }
        if want == attached { return [] }
        return [want ? "pod lo ingress: tc_pod_loopback missing (a captured query could reach a socket other than the proxy's)"
                     : "pod lo ingress: tc_pod_loopback attached to a pod without DNS capture"]
    }

    // MARK: kept connections

    /// Records the connections the pod had when it was inspected, before any program was attached
    /// to it (so none of them can be a captured one): their sockets' packets keep going uncaptured
    /// until they close. Only at a pod's first enrolment (a repeated one would take captured
    /// connections for kept), and only if nothing of ours is attached there (its map entry lost).
    /// Failing to keep them cuts them off (closed); it never stops the pod's capture.
    private func keep(_ existing: Result<[KeptConnection], any Error>, _ pod: PodSpec, index: UInt32) {
        do {
            let kept = try existing.get()
            let count = try keptLock.withLock { _ in try maps.keep(cookies: kept.map(\.cookie), podIndex: index) }
            if count < kept.count {
                logger.warning("ra_kept is full: connections from before enrolment are cut off",
                               metadata: ["pod": "\(pod.namespace)/\(pod.name)", "kept": "\(count)", "cut": "\(kept.count - count)"])
            }
        } catch {
            logger.warning("connections from before enrolment cannot be kept: they are cut off",
                           metadata: ["pod": "\(pod.namespace)/\(pod.name)", "error": "\(error)"])
        }
    }

    /// Forgets the kept connections `drop` selects.
    private func forgetKept(_ drop: ((cookie: UInt64, pod: UInt32)) throws -> Bool) throws {
        try keptLock.withLock { _ in
            let gone = try maps.keptConnections().filter(drop).map(\.cookie)
            if !gone.isEmpty { try maps.forget(cookies: gone) }
        }
    }

    /// Forgets kept connections whose socket is gone (read in each pod's namespace), and those of
    /// pods not in `pods`. A namespace that cannot be read keeps its entries: a cookie is never
    /// reused, so a stale entry lets nothing through.
    @discardableResult
    public func pruneKept(pods: [PodSpec]) throws -> Int {
        let bypass = UInt32(RA_POD_BYPASS_INBOUND.rawValue)
        if try !maps.allPods().contains(where: { $0.1.flags & bypass != 0 }) { try maps.setBypassLookup(false) }
        let all = try keptLock.withLock { _ in try maps.keptConnections() }
        guard !all.isEmpty else { return 0 }
        var byIndex: [UInt32: PodSpec] = [:]
        for pod in pods {
            if let e = pod.ips.lazy.compactMap({ try? self.maps.pod($0) }).first { byIndex[e.pod_index] = pod }
        }
        var live: [UInt32: Set<UInt64>?] = [:]
        for index in Set(all.map(\.pod)) {
            guard let pod = byIndex[index] else { live[index] = .some([]); continue }
            if !FileManager.default.fileExists(atPath: pod.netns) { live[index] = .some([]); continue }
            // Only sockets still carrying their connection: one that disconnected is forgotten
            // (and one that connects again is forgotten by sockops_node at once).
            live[index] = try? Set(NetworkNamespace(path: pod.netns).run { try SocketDiag.tcp(states: SocketDiag.connectedStates).map(\.cookie) })
        }
        let gone = Set(all.filter { c in live[c.pod].flatMap { $0 }.map { !$0.contains(c.cookie) } ?? false }.map(\.cookie))
        try forgetKept { gone.contains($0.cookie) }
        return all.count - gone.count
    }

    /// The connections kept for `pod` (socket cookies).
    public func keptConnections(_ pod: PodSpec) throws -> [UInt64] {
        guard let e = pod.ips.lazy.compactMap({ try? self.maps.pod($0) }).first else { return [] }
        return try maps.keptConnections().filter { $0.pod == e.pod_index }.map(\.cookie)
    }

    /// Checks the map entry, both tc programs on the pod's interface (and every other one), the
    /// published interfaces, the sk_lookup link, the egress guard and policy routing.
    public func verify(_ pod: PodSpec) throws -> [String] {
        try validate(pod)
        var drift: [String] = []
        let entries = try pod.ips.map { ($0, try maps.pod($0)) }
        for (ip, e) in entries where e == nil { drift.append("maps: \(ip) is not in ra_pods") }
        switch options.attach {
        case .clsact:
            let ingressID = try program(Self.ingressProgram(pod, pod.interface)).id(), egressID = try program("tc_pod_egress").id()
            let (ing, eg) = try NetworkNamespace(path: pod.netns).run { () -> (UInt32?, UInt32?) in
                let idx = try TCAttach.ifindex(pod.interface)
                return (TCAttach.attachedProgramID(ifindex: idx, ingress: true), TCAttach.attachedProgramID(ifindex: idx, ingress: false))
            }
            if ing != ingressID { drift.append("pod \(pod.interface) ingress: program \(ing.map(String.init) ?? "none"), expected \(ingressID)") }
            if eg != egressID { drift.append("pod \(pod.interface) egress: program \(eg.map(String.init) ?? "none"), expected \(egressID)") }
        case .tcx:
            let idx = try NetworkNamespace(path: pod.netns).run { try TCAttach.ifindex(pod.interface) }
            for dir in ["ingress", "egress"] where !LinkAttach.tcxAttached(tcxPin(pod, dir), ifindex: idx) {
                drift.append("pod \(pod.interface) \(dir): no tcx link on the device (pin \(tcxPin(pod, dir)) missing or its device gone)")
            }
        }
        if let primary = entries.first?.1 {
            drift += try othersDrift(pod, primary: Int32(primary.pod_ifindex))
            drift += try publicationDrift(pod, index: primary.pod_index)
            drift += try dnsDrift(pod, index: primary.pod_index)
            drift += try loopbackDrift(pod)
        }
        if !FileManager.default.fileExists(atPath: linkPin(pod)) { drift.append("sk_lookup link pin \(linkPin(pod)) missing") }
        drift += try egressGuardDrift(pod)
        if let e = entries.first?.1, e.host_ifindex != 0 { drift.append("host veth ifindex \(e.host_ifindex): an earlier agent's probe SNAT programs to remove") }
        drift += try routing.drift(netns: pod.netns, families: families(of: pod))
        return drift
    }

    /// The programs attached on the pod's interface and host veth, by kernel id.
    public func describe(_ pod: PodSpec) -> String {
        guard FileManager.default.fileExists(atPath: pod.netns),
              let e = pod.ips.lazy.compactMap({ try? self.maps.pod($0) }).first else { return "not in ra_pods" }
        let name = pod.interface
        if options.attach == .tcx {
            let pinned = ["ingress", "egress"].filter { FileManager.default.fileExists(atPath: tcxPin(pod, $0)) }
            return "tcx \(name) ifindex \(e.pod_ifindex): links pinned for \(pinned.joined(separator: " and ")); \(egressGuardSummary(pod)); \(dnsSummary(e)); pod index \(e.pod_index)"
        }
        let ids = (try? NetworkNamespace(path: pod.netns).run { () -> (UInt32?, UInt32?) in
            let idx = try TCAttach.ifindex(name)
            return (TCAttach.attachedProgramID(ifindex: idx, ingress: true), TCAttach.attachedProgramID(ifindex: idx, ingress: false))
        }) ?? (nil, nil)
        func id(_ v: UInt32?) -> String { v.map { "prog \($0)" } ?? "none" }
        let link = FileManager.default.fileExists(atPath: linkPin(pod)) ? "sk_lookup link pinned" : "sk_lookup link missing"
        return "\(options.attach.rawValue) \(name) ifindex \(e.pod_ifindex): ingress \(id(ids.0)), egress \(id(ids.1)); \(link); \(egressGuardSummary(pod)); \(dnsSummary(e)); pod index \(e.pod_index)"
    }

    /// The pod's DNS capture as `status` shows it.
    private func dnsSummary(_ e: ra_pod_info) -> String {
        e.flags & UInt32(RA_POD_DNS_CAPTURE.rawValue) != 0 ? "DNS to [::1]/127.0.0.1:\(config.dnsPort)" : "DNS not captured"
    }

    /// The egress guard's links as `status` shows them.
    private func egressGuardSummary(_ pod: PodSpec) -> String {
        guard hasEgressGuard else { return "no egress guard (needs Linux 6.4)" }
        let linked = guardFamilies.filter { FileManager.default.fileExists(atPath: guardPin(pod, $0)) }.map { $0 == 2 ? "IPv4" : "IPv6" }
        return linked.isEmpty ? "egress guard missing" : "egress guard linked for \(linked.joined(separator: " and "))"
    }

    /// Deletes map entries and sk_lookup link pins of pods not in `keep`.
    public func removeStale(keep: [PodSpec]) throws -> [String] {
        defer { indexes.withLock { $0.used = nil } } // reloaded from the map on next use
        let ips = Set(keep.flatMap(\.ips)), uids = Set(keep.map(\.uid))
        var removed: [String] = []
        for (ip, info) in try maps.allPods() where !ips.contains(ip) {
            try maps.remove(ips: [ip])
            if info.host_ifindex != 0 { try? detachOnNode(info.host_ifindex, flags: info.flags) }
            removed.append("ra_pods \(ip)")
        }
        let live = Set(try maps.allPods().map { $0.1.pod_index })
        try maps.removeInterfaces(keepingIndexes: live)
        try maps.removeDNSCapture { !live.contains($0) }
        let links = "\(options.pinRoot)/links"
        for f in (try? FileManager.default.contentsOfDirectory(atPath: links)) ?? [] {
            let owner = Self.linkOwner(f)
            if !uids.contains(owner) {
                LinkAttach.unpin("\(links)/\(f)")
                removed.append("link \(f)")
            }
        }
        return removed
    }

    private func allocateIndex() throws -> UInt32 {
        try indexes.withLock { pool in
            var used = try pool.used ?? Set(maps.allPods().map { $0.1.pod_index })
            if pool.used == nil { pool.lowestFree = 1 }
            var i = pool.lowestFree
            while used.contains(i) { i += 1 }
            used.insert(i)
            pool.used = used
            pool.lowestFree = i + 1
            return i
        }
    }

    private func releaseIndex(_ i: UInt32) {
        indexes.withLock { pool in
            guard pool.used?.remove(i) != nil else { return }
            pool.lowestFree = min(pool.lowestFree, i)
        }
    }

    // MARK: attach

    private struct PodAttachment {
        var podIfindex: Int32
        var netnsCookie: UInt64
        var createdClsact: Bool
        var setAcceptLocal: Bool
        /// Whether the pod's loopback has a clsact qdisc (clsact mode; true under tcx).
        var loopbackClsact: Bool
        var existing: Result<[KeptConnection], any Error>?
    }

    /// What removal may undo: only what enrolment created or changed.
    private struct PodCleanup { var destroyClsact: Bool; var resetAcceptLocal: Bool }

    /// What enrolment will find and change in the pod's namespace, read before anything changes:
    /// the interface, and whether accept_local and a clsact qdisc are already there.
    /// With `snapshot`, also the connections to keep (``KeptConnections``), read in the same visit
    /// to the namespace, only if no program of ours is attached there yet.
    private func inspectPod(_ pod: PodSpec, snapshot: Bool) throws -> PodAttachment {
        let name = pod.interface, clsact = options.attach == .clsact
        return try NetworkNamespace(path: pod.netns).run {
            let link = try Netlink.link(named: name)
            let acceptLocal = pod.hasIPv4 ? (try? readSysctl(interfaceSysctl("ipv4", name, "accept_local"))) : "1"
            let hasClsact = clsact ? try NetlinkRouting.hasClsact(ifindex: link.index) : true
            var plan = PodAttachment(podIfindex: link.index, netnsCookie: try NetworkNamespace.currentCookie(), createdClsact: !hasClsact,
                                     setAcceptLocal: acceptLocal != "1",
                                     loopbackClsact: clsact ? try NetlinkRouting.hasClsact(ifindex: Self.loopbackIfindex) : true)
            let ours = TCAttach.attachedProgramID(ifindex: link.index, ingress: false) ?? TCAttach.attachedProgramID(ifindex: link.index, ingress: true)
            if snapshot, ours == nil { plan.existing = Result { try KeptConnections.current() } }
            return plan
        }
    }

    /// In the pod's namespace: allow our re-injected packets (their source is the pod's own
    /// address), then attach ingress and egress. `plan` was recorded before this runs.
    private func attachInPod(_ pod: PodSpec, _ plan: PodAttachment) throws {
        let ingress = try program(Self.ingressProgram(pod, pod.interface)), egress = try program("tc_pod_egress")
        let name = pod.interface, mode = options.attach, pin = options.pinRoot, uid = pod.uid
        try NetworkNamespace(path: pod.netns).run {
            if plan.setAcceptLocal { try writeSysctl(interfaceSysctl("ipv4", name, "accept_local"), "1") }
            switch mode {
            case .clsact:
                _ = try TCAttach.ensureClsact(ifindex: plan.podIfindex)
                try TCAttach.attach(ingress, ifindex: plan.podIfindex, ingress: true)
                try TCAttach.attach(egress, ifindex: plan.podIfindex, ingress: false)
            case .tcx:
                try LinkAttach.tcx(ingress, ifindex: plan.podIfindex, ingress: true, pinPath: "\(pin)/links/\(uid)-tcx-ingress")
                try LinkAttach.tcx(egress, ifindex: plan.podIfindex, ingress: false, pinPath: "\(pin)/links/\(uid)-tcx-egress")
            }
        }
    }

    private func detachInPod(_ pod: PodSpec, _ ours: PodCleanup) throws {
        for dir in ["ingress", "egress"] { LinkAttach.unpin("\(options.pinRoot)/links/\(pod.uid)-tcx-\(dir)") }
        let name = pod.interface
        try NetworkNamespace(path: pod.netns).run {
            guard let idx = try? TCAttach.ifindex(name) else { return }
            try TCAttach.detach(ifindex: idx, ingress: true)
            try TCAttach.detach(ifindex: idx, ingress: false)
            if ours.destroyClsact { try TCAttach.destroyClsact(ifindex: idx) }
            if ours.resetAcceptLocal { try writeSysctl(interfaceSysctl("ipv4", name, "accept_local"), "0") }
        }
    }

    // MARK: every other interface of the pod

    /// What attaching changed on an interface other than the primary one.
    struct InterfaceChanges: Sendable { var createdClsact: Bool; var setAcceptLocal: Bool }

    /// Attaches the pod programs to every Ethernet interface of the pod other than `primary` that
    /// lacks them (a meta plugin's net1, a device added later). Idempotent. A link that fails is
    /// logged and left out; so are links without an Ethernet header (tun, wireguard, ipip: the
    /// programs parse Ethernet frames), which are never published, so sk_lookup drops what
    /// arrives there. Returns every interface that now carries the programs, `primary` included.
    @discardableResult
    private func attachOthers(_ pod: PodSpec, primary: Int32) throws -> [Int32] {
        let plain = try program("tc_pod_ingress"), reroute = try program("tc_pod_ingress_reroute"), egress = try program("tc_pod_egress")
        let mode = options.attach, pin = options.pinRoot, uid = pod.uid, v4 = pod.hasIPv4, rerouted = Set(pod.rerouteInterfaces)
        let ids = (plain: try plain.id(), reroute: try reroute.id(), egress: try egress.id())
        let (changed, attached, failed) = try NetworkNamespace(path: pod.netns).run { () -> ([Int32: InterfaceChanges], [Int32], [String]) in
            var changed: [Int32: InterfaceChanges] = [:], attached = [primary], failed: [String] = []
            for link in try Netlink.links() where !link.isLoopback && link.index != primary {
                guard link.isEthernet else { failed.append("\(link.name): link type \(link.type) is not Ethernet, left unattached (inbound dropped)"); continue }
                let ingress = rerouted.contains(link.name) ? reroute : plain
                do {
                    switch mode {
                    case .clsact:
                        if TCAttach.attachedProgramID(ifindex: link.index, ingress: true) == (rerouted.contains(link.name) ? ids.reroute : ids.plain),
                           TCAttach.attachedProgramID(ifindex: link.index, ingress: false) == ids.egress { attached.append(link.index); continue }
                        let setAcceptLocal = try Self.allowLocalSource(link.name, v4: v4)
                        let created = try TCAttach.ensureClsact(ifindex: link.index)
                        try TCAttach.attach(ingress, ifindex: link.index, ingress: true)
                        try TCAttach.attach(egress, ifindex: link.index, ingress: false)
                        changed[link.index] = InterfaceChanges(createdClsact: created, setAcceptLocal: setAcceptLocal)
                    case .tcx:
                        let base = "\(pin)/links/\(uid)-tcx-if\(link.index)"
                        if LinkAttach.tcxAttached("\(base)-ingress", ifindex: link.index), LinkAttach.tcxAttached("\(base)-egress", ifindex: link.index) {
                            attached.append(link.index)
                            continue
                        }
                        let setAcceptLocal = try Self.allowLocalSource(link.name, v4: v4)
                        try LinkAttach.tcx(ingress, ifindex: link.index, ingress: true, pinPath: "\(base)-ingress")
                        try LinkAttach.tcx(egress, ifindex: link.index, ingress: false, pinPath: "\(base)-egress")
                        changed[link.index] = InterfaceChanges(createdClsact: false, setAcceptLocal: setAcceptLocal)
                    }
                    attached.append(link.index)
                } catch {
                    failed.append("\(link.name): \(error)")
                }
            }
            return (changed, attached, failed)
        }
        if !changed.isEmpty {
            logger.info("capture attached to more interfaces", metadata: ["pod": "\(pod.name)", "ifindexes": "\(changed.keys.sorted())"])
            others.withLock { $0[uid, default: [:]].merge(changed) { old, _ in old } }
        }
        if !failed.isEmpty { logger.error("interfaces left without capture", metadata: ["pod": "\(pod.name)", "links": "\(failed)"]) }
        return attached
    }

    /// Sets accept_local on an interface (our turned-around packets carry the pod's own source);
    /// returns whether this call changed it.
    private static func allowLocalSource(_ name: String, v4: Bool) throws -> Bool {
        guard v4, (try? readSysctl(interfaceSysctl("ipv4", name, "accept_local"))) != "1" else { return false }
        try writeSysctl(interfaceSysctl("ipv4", name, "accept_local"), "1")
        return true
    }

    /// Tells the sk_lookup program which interfaces of the pod carry the tc programs, keyed by
    /// every local address of the pod's namespace (see ra_iface_key).
    /// The egress guard's map gets the same interfaces, keyed by the namespace.
    private func publishInterfaces(_ pod: PodSpec, index: UInt32, attached: [Int32]) throws {
        let addresses = try NetworkNamespace(path: pod.netns).run { try Netlink.addresses() }
        try maps.setInterfaces(podIndex: index, addresses: addresses, ifindexes: attached)
        try maps.setEgressInterfaces(netns: try NetworkNamespace(path: pod.netns).inode(), podIndex: index, ifindexes: attached)
    }

    /// Attaches wherever programs are missing, then publishes the interfaces that carry them.
    private func attachAndPublish(_ pod: PodSpec, _ e: ra_pod_info) throws {
        let attached = try attachOthers(pod, primary: Int32(e.pod_ifindex))
        try publishInterfaces(pod, index: e.pod_index, attached: attached)
    }

    /// Removes the pod programs from every interface other than `primary`, and undoes what
    /// attaching changed there when this process did it.
    private func detachOthers(_ pod: PodSpec, primary: Int32?) throws {
        let changes = others.withLock { $0.removeValue(forKey: pod.uid) } ?? [:]
        let links = "\(options.pinRoot)/links"
        for f in (try? FileManager.default.contentsOfDirectory(atPath: links)) ?? [] where f.hasPrefix("\(pod.uid)-tcx-if") {
            LinkAttach.unpin("\(links)/\(f)")
        }
        try NetworkNamespace(path: pod.netns).run {
            for link in try Netlink.links() where !link.isLoopback && link.index != primary {
                try TCAttach.detach(ifindex: link.index, ingress: true)
                try TCAttach.detach(ifindex: link.index, ingress: false)
                guard let c = changes[link.index] else { continue }
                if c.createdClsact { try TCAttach.destroyClsact(ifindex: link.index) }
                if c.setAcceptLocal { try writeSysctl(interfaceSysctl("ipv4", link.name, "accept_local"), "0") }
            }
        }
    }

    /// Interfaces other than `primary` without the pod programs.
    private func othersDrift(_ pod: PodSpec, primary: Int32) throws -> [String] {
        let plain = try program("tc_pod_ingress").id(), reroute = try program("tc_pod_ingress_reroute").id()
        let egress = try program("tc_pod_egress").id(), rerouted = Set(pod.rerouteInterfaces)
        let mode = options.attach, links = "\(options.pinRoot)/links/\(pod.uid)-tcx-if"
        return try NetworkNamespace(path: pod.netns).run {
            try Netlink.links().filter { !$0.isLoopback && $0.isEthernet && $0.index != primary }.compactMap { link -> String? in
                let ingress = rerouted.contains(link.name) ? reroute : plain
                let attached = mode == .clsact
                    ? TCAttach.attachedProgramID(ifindex: link.index, ingress: true) == ingress && TCAttach.attachedProgramID(ifindex: link.index, ingress: false) == egress
                    : LinkAttach.tcxAttached("\(links)\(link.index)-ingress", ifindex: link.index) && LinkAttach.tcxAttached("\(links)\(link.index)-egress", ifindex: link.index)
                return attached ? nil : "pod \(link.name) (ifindex \(link.index)): capture programs missing"
            }
        }
    }

    /// The watcher saw links change in `pod`'s namespace: attach wherever programs are missing.
    private func interfacesChanged(_ pod: PodSpec) {
        attachLock.withLock { _ in
            guard watcher.isWatched(pod.uid) else { return }
            do {
                guard let e = pod.ips.lazy.compactMap({ try? self.maps.pod($0) }).first else { return }
                try attachAndPublish(pod, e)
            } catch {
                logger.error("attaching to a new interface failed", metadata: ["pod": "\(pod.name)", "error": "\(error)"])
            }
        }
    }

    /// After a restart: watch the pod's interfaces again, and attach to any that appeared meanwhile.
    public func resume(_ pod: PodSpec) throws {
        guard var e = pod.ips.lazy.compactMap({ try? self.maps.pod($0) }).first else { return }
        if e.host_ifindex != 0 { // enrolled by an agent that put probe SNAT programs on the host veth
            try detachOnNode(e.host_ifindex, flags: e.flags)
            e.host_ifindex = 0
            try maps.upsert(PodEntry(ips: pod.ips, index: e.pod_index, podIfindex: e.pod_ifindex, hostIfindex: 0, flags: e.flags))
        }
        try watcher.watch(pod)
        try attachLock.withLock { _ in try attachAndPublish(pod, e) }
        try attachEgressGuard(pod) // a pod enrolled by an agent from before the guard gets it now
    }

    /// Removes the probe SNAT filters an earlier agent put on the host side of a pod's veth (our
    /// handle only, so the CNI's own filters stay), and the qdisc when that agent created it.
    private func detachOnNode(_ hostIfindex: UInt32, flags: UInt32) throws {
        try onNode {
            let idx = Int32(hostIfindex)
            try TCAttach.detach(ifindex: idx, ingress: true)
            try TCAttach.detach(ifindex: idx, ingress: false)
            if flags & UInt32(RA_POD_CREATED_CLSACT_HOST.rawValue) != 0 { try TCAttach.destroyClsact(ifindex: idx) }
        }
    }

    private func onNode<T: Sendable>(_ body: @escaping @Sendable () throws -> T) throws -> T {
        if let ns = options.nodeNetns { return try ns.run(body) }
        return try body()
    }

    // MARK: the egress guard

    /// Both families' POST_ROUTING hooks: NFPROTO_IPV4 and NFPROTO_IPV6.
    private var guardFamilies: [UInt32] { [2, 10] }

    /// Where the pod's egress guard links are pinned (IPv4, IPv6); empty before Linux 6.4.
    public func egressGuardPins(_ pod: PodSpec) -> [String] { hasEgressGuard ? guardFamilies.map { guardPin(pod, $0) } : [] }

    private func guardPin(_ pod: PodSpec, _ family: UInt32) -> String {
        "\(options.pinRoot)/links/\(pod.uid)-nf-\(family == 2 ? "ipv4" : "ipv6")"
    }

    /// Attaches the netfilter egress guard in the pod's namespace (the link goes into the namespace
    /// of the thread that creates it). After the interfaces are published: before that, the guard
    /// would drop the pod's own traffic. Nothing on kernels before 6.4 (see README: the window).
    private func attachEgressGuard(_ pod: PodSpec) throws {
        guard let guardProgram = programs[Self.egressGuardProgram] else { return }
        let pins = guardFamilies.map { ($0, guardPin(pod, $0)) }
        try NetworkNamespace(path: pod.netns).run {
            for (family, pin) in pins { try LinkAttach.netfilter(guardProgram, family: family, pinPath: pin) }
        }
    }

    /// The guard's links, where the kernel has the guard.
    private func egressGuardDrift(_ pod: PodSpec) throws -> [String] {
        guard let guardProgram = programs[Self.egressGuardProgram] else { return [] }
        let id = try guardProgram.id()
        return guardFamilies.compactMap { family in
            (try? LinkAttach.pinnedLinkProgramID(guardPin(pod, family))) == id ? nil
                : "egress guard link \(guardPin(pod, family)) missing or not running program \(id)"
        }
    }

    /// Every interface that should carry the programs is published for sk_lookup and, where the
    /// kernel has it, for the egress guard (with the namespace's own marker).
    private func publicationDrift(_ pod: PodSpec, index: UInt32) throws -> [String] {
        let carrying = try NetworkNamespace(path: pod.netns).run { try Netlink.links().filter { !$0.isLoopback && $0.isEthernet }.map(\.index) }
        let forLookup = Set(try maps.interfaces(podIndex: index).map(\.1))
        var drift = carrying.filter { !forLookup.contains($0) }.map { "ra_ifaces: interface \($0) not published for sk_lookup" }
        guard hasEgressGuard else { return drift }
        let netns = try NetworkNamespace(path: pod.netns).inode()
        let forGuard = Set(try maps.egressInterfaces(podIndex: index).filter { $0.netns == netns }.map(\.ifindex))
        if !forGuard.contains(0) { drift.append("ra_egress_ifaces: namespace \(netns) not published") }
        drift += carrying.filter { !forGuard.contains($0) }.map { "ra_egress_ifaces: interface \($0) not published for the egress guard" }
        return drift
    }

    // MARK: helpers

    /// The pod UID a link pin belongs to (UIDs hold dashes, so the known suffixes are cut off).
    static func linkOwner(_ pin: String) -> String {
        if pin.hasSuffix("-sklookup") { return String(pin.dropLast("-sklookup".count)) }
        for marker in ["-tcx-", "-nf-"] { if let r = pin.range(of: marker, options: .backwards) { return String(pin[..<r.lowerBound]) } }
        return pin
    }

    private func linkPin(_ pod: PodSpec) -> String { "\(options.pinRoot)/links/\(pod.uid)-sklookup" }

    private func tcxPin(_ pod: PodSpec, _ dir: String) -> String { "\(options.pinRoot)/links/\(pod.uid)-tcx-\(dir)" }

    private func families(of pod: PodSpec) -> [Bool] { (pod.hasIPv4 ? [false] : []) + (pod.hasIPv6 ? [true] : []) }

    private func validate(_ pod: PodSpec) throws {
        if pod.uid.isEmpty || pod.uid.contains(where: { $0 == "/" || $0 == " " || $0 == "\n" }) {
            throw DataplaneError(.invalidPod, pod: pod.name, "invalid pod UID '\(pod.uid)'")
        }
        if pod.ips.isEmpty { throw DataplaneError(.invalidPod, pod: pod.name, "pod has no IP address") }
        if !FileManager.default.fileExists(atPath: pod.netns) {
            throw DataplaneError(.netnsMissing, pod: pod.name, "network namespace \(pod.netns) does not exist")
        }
    }

    /// Counters of one pod from the kernel.
    public func counters(_ pod: PodSpec) throws -> [Decision: UInt64] {
        guard let e = try pod.ips.lazy.compactMap({ try self.maps.pod($0) }).first else { return [:] }
        return try maps.counters(podIndex: e.pod_index)
    }
}

extension EBPFDataplane {
    /// Run-time statistics of every program (for the benchmark's per-packet cost).
    public func programStats() throws -> [String: (runTimeNs: UInt64, runs: UInt64)] {
        var out: [String: (runTimeNs: UInt64, runs: UInt64)] = [:]
        for name in Self.availableProgramNames { out[name] = try program(name).stats() }
        return out
    }

    /// The program to attach for `name` (the pinned one when it is current).
    func program(_ name: String) throws -> BPFProgram {
        guard let p = programs[name] else { throw BPFError("program \(name)", code: ENOENT) }
        return p
    }
}
