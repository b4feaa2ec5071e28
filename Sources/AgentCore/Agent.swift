import AgentAPI
import BPFLoader
import Dataplane
import Foundation
import KubeClient
import Logging
import MapSync
import Synchronization
import SystemCalls
import ZDS

/// How the agent is set up.
public struct AgentOptions: Sendable {
    /// ebpf, iptables or auto.
    public var mode: DataplaneMode = .auto
    /// Ports, marks, probe IPs.
    public var capture = CaptureConfig()
    /// State file, sockets.
    public var stateDirectory = "/run/redirect-agent"
    /// The control socket the CNI plugin and `status` use.
    public var controlSocket = AgentClient.defaultSocket
    /// The ZDS socket the proxy connects to.
    public var zdsSocket = "/run/redirect-agent/ztunnel.sock"
    /// eBPF options.
    public var bpf: EBPFOptions
    /// Forced iptables backend.
    public var iptablesBackend: IptablesBackend?
    /// The node-local selection file.
    public var selectionFile: String?
    /// The Kubernetes API to watch pods and namespaces in; nil: labels from CNI_ARGS and the selection file.
    public var kube: KubeConfig?
    /// This node's name (pods are watched with `spec.nodeName=` it).
    public var nodeName = ProcessInfo.processInfo.hostName
    /// How long an ADD waits for the API to know its pod.
    public var apiWaitSeconds = 5.0
    /// Which pods are in the mesh.
    public var meshRules = MeshRules()
    /// Learn the proxy's cgroup from its ZDS connection (`--proxy-cgroup zds-peer`): until a
    /// proxy has connected, no socket is the proxy's.
    public var learnProxyCgroup = false
    /// What one request may carry, and how many pods the node takes.
    public var limits = RequestLimits()
    /// Creates options.
    public init(bpfObject: String) { bpf = EBPFOptions(objectPath: bpfObject) }
    /// The state file.
    public var statePath: String { "\(stateDirectory)/state.json" }
}

/// The node agent: picks the dataplane, enrolls pods the CNI plugin reports, hands them to the
/// proxy over ZDS, and keeps the kernel in line with its state file across restarts.
public final class Agent: Sendable {
    /// The dataplane in use.
    public let dataplane: Dataplane
    /// Why it was chosen.
    public let reason: String
    /// What the kernel offers.
    public let features: KernelFeatures
    /// Counters for /metrics.
    public let metrics = AgentMetrics()
    let options: AgentOptions
    let store: StateStore
    let selection: PodSelection
    let logger: Logger
    // The state file's contents. Holding this lock also serializes every kernel change, so two
    // requests never interleave their steps.
    let guarded: Mutex<AgentState>
    private let zdsServer = Mutex<ZDSServer?>(nil)
    var zds: ZDSServer? { zdsServer.withLock { $0 } }
    /// The cluster's pods and namespaces, when the agent watches the Kubernetes API.
    public let cluster: ClusterView?
    // Signalled when the cluster or the enrolled pods changed; the membership thread wakes on it.
    let membershipSignal = DispatchSemaphore(value: 0)
    // When each unrecorded pod's processes were last looked for.
    let scanned = Mutex<[String: Date]>([:])

    /// Chooses the dataplane: `ebpf` fails with the kernel's reason, `auto` falls back with it to
    /// nftables or iptables (``fallbackMode(runner:)``), `iptables` and `nftables` are themselves.
    public static func chooseDataplane(_ o: AgentOptions, logger: Logger) throws -> (Dataplane, String, KernelFeatures) {
        let pinParent = (o.bpf.pinRoot as NSString).deletingLastPathComponent
        let features = KernelFeatures.probe(bpffsPath: pinParent)
        // iptables resolves `-m cgroup --path` in its own cgroup namespace: the node's.
        let runner = ProcessRunner(cgroupNamespace: Cgroup.nodeNamespace())
        func iptables(_ why: String) -> (Dataplane, String, KernelFeatures) {
            (IptablesDataplane(config: o.capture, runner: runner, backend: o.iptablesBackend,
                               lockDirectory: "\(o.stateDirectory)/xtables", logger: logger), why, features)
        }
        func nftables(_ why: String) throws -> (Dataplane, String, KernelFeatures) {
            (try NftablesDataplane(config: o.capture, runner: runner, logger: logger), why, features)
        }
        func fallback(_ why: String) -> (Dataplane, String, KernelFeatures) {
            let (mode, reason) = fallbackMode(runner: runner)
            guard mode == .nftables else { return iptables("auto: \(why); \(reason): using iptables") }
            do { return try nftables("auto: \(why); \(reason): using nftables") } catch {
                return iptables("auto: \(why); \(reason), but nftables mode cannot run here (\(error)): using iptables")
            }
        }
        switch o.mode {
        case .iptables: return iptables("--dataplane iptables")
        case .nftables: return try nftables("--dataplane nftables")
        case .ebpf, .auto:
            if let missing = features.missing {
                if o.mode == .ebpf { throw AgentError(.ebpfUnavailable, "--dataplane ebpf: \(missing)") }
                return fallback("eBPF unavailable (\(missing))")
            }
            var bpf = o.bpf
            var note = ""
            if bpf.attach == .tcx && !features.tcx {
                bpf.attach = .clsact
                note = "; tcx attachment needs Linux 6.6, using tc clsact"
            }
            do {
                let dp = try EBPFDataplane(config: o.capture, options: bpf, runner: runner, logger: logger)
                return (dp, (o.mode == .ebpf ? "--dataplane ebpf" : "auto: the kernel supports every feature the programs use") + note, features)
            } catch {
                if o.mode == .ebpf { throw AgentError(.ebpfUnavailable, "--dataplane ebpf: loading the programs failed: \(error)") }
                return fallback("loading the BPF programs failed (\(error))")
            }
        }
    }

    /// Where BPF cannot be used: the rule system the node already uses. iptables when the node
    /// has iptables rules (kube-proxy or the CNI wrote them, legacy or nft-based) or no nft
    /// program; else nftables (Istio too refuses to mix them on one node).
    public static func fallbackMode(runner: CommandRunner) -> (DataplaneMode, String) {
        guard (try? Command.resolve("nft")) != nil else { return (.iptables, "no nft program") }
        var iptablesRules = 0
        for b in IptablesBackend.allCases {
            for v6 in [false, true] {
                let out = (try? runner.run(b.save(ipv6: v6), [], netns: nil, input: nil, environment: [:]))?.stdout ?? ""
                iptablesRules += out.split(separator: "\n").filter { $0.hasPrefix("-A ") }.count
            }
        }
        if iptablesRules > 0 { return (.iptables, "the node has \(iptablesRules) iptables rules") }
        return (.nftables, "the node has no iptables rules")
    }

    /// Chooses the dataplane and loads the state file (migrating pods if the dataplane changed).
    public init(options: AgentOptions, logger: Logger = Logger(label: "redirect-agent")) throws {
        self.logger = logger
        self.store = StateStore(path: options.statePath)
        let state = try store.load()
        var options = options
        if options.learnProxyCgroup { options.capture.rememberProxy(state.proxyCgroup, draining: state.drainingProxyCgroups, logger: logger) }
        self.options = options
        self.selection = FileAndArgsSelection(path: options.selectionFile)
        if let kube = options.kube {
            do { cluster = ClusterView(client: try KubeClient(kube), nodeName: options.nodeName, rules: options.meshRules, logger: logger) } catch {
                throw AgentError(.invalidRequest, "Kubernetes API: \(error)")
            }
        } else {
            cluster = nil
        }
        (dataplane, reason, features) = try Agent.chooseDataplane(options, logger: logger)
        guarded = Mutex(state)
        logger.info("dataplane chosen", metadata: ["dataplane": "\(dataplane.mode.rawValue)", "reason": "\(reason)"])
    }

    // MARK: start-up

    /// What the start-up reconciliation did.
    public struct ReconcileReport: Sendable {
        /// Pods whose capture was intact.
        public var intact: [String] = []
        /// Pods whose drift was repaired.
        public var repaired: [String] = []
        /// Pods whose namespace is gone, cleaned up.
        public var gone: [String] = []
        /// Pods moved from another dataplane.
        public var migrated: [String] = []
        /// Node state that belonged to no pod.
        public var stale: [String] = []
        /// Operations a crash interrupted, finished (removals) or undone (enrolments).
        public var interrupted: [String] = []
    }

    /// Records `op` durably before the kernel is touched.
    private func begin(_ op: PendingOperation, _ state: inout AgentState) throws {
        state.pending[op.spec.uid] = op
        try store.save(state)
    }

    /// After a crash: an interrupted removal is finished; an interrupted first enrolment is undone
    /// (its ADD got no answer, so the runtime retries it); a repeated one is left to the repair below.
    private func settleInterrupted(_ state: inout AgentState) -> [String] {
        var done: [String] = []
        for (uid, op) in state.pending.sorted(by: { $0.key < $1.key }) {
            if op.op == "del" || state.pods[uid] == nil {
                try? dataplane.remove(op.spec)
                state.pods[uid] = nil
                done.append("\(op.op) \(op.spec.namespace)/\(op.spec.name)")
            }
            state.pending[uid] = nil
        }
        return done
    }

    /// Brings the kernel in line with the state file: migrates pods from a previous dataplane,
    /// repairs drift, removes what belongs to pods that are gone.
    @discardableResult
    public func reconcile() throws -> ReconcileReport {
        try guarded.withLock { state in
            var report = ReconcileReport()
            try dataplane.prepareNode()
            if let previous = state.dataplane, previous != dataplane.mode { report.migrated = migrate(from: previous, pods: Array(state.pods.values)) }
            report.interrupted = settleInterrupted(&state)
            for (uid, pod) in state.pods.sorted(by: { $0.key < $1.key }) {
                if !FileManager.default.fileExists(atPath: pod.spec.netns) {
                    try? dataplane.remove(pod.spec)
                    state.pods[uid] = nil
                    report.gone.append(pod.spec.name)
                    continue
                }
                let drift = (try? dataplane.verify(pod.spec)) ?? ["verify failed"]
                if drift.isEmpty {
                    do { try dataplane.resume(pod.spec) } catch {
                        logger.warning("resuming pod", metadata: ["pod": "\(pod.spec.name)", "error": "\(error)"])
                    }
                    report.intact.append(pod.spec.name)
                    continue
                }
                logger.warning("repairing pod", metadata: ["pod": "\(pod.spec.name)", "drift": "\(drift)"])
                try dataplane.enroll(pod.spec)
                report.repaired.append(pod.spec.name)
            }
            report.stale = try dataplane.removeStale(keep: state.pods.values.map(\.spec))
            state.dataplane = dataplane.mode
            state.probeIPv4 = dataplane.config.probeIPv4.description
            state.probeIPv6 = dataplane.config.probeIPv6.description
            try store.save(state)
            logger.info("reconciled", metadata: ["intact": "\(report.intact.count)", "repaired": "\(report.repaired)", "gone": "\(report.gone)",
                                                 "interrupted": "\(report.interrupted)",
                                                 "migrated": "\(report.migrated)", "stale": "\(report.stale)"])
            return report
        }
    }

    private func migrate(from previous: DataplaneMode, pods: [EnrolledPod]) -> [String] {
        logger.info("switching dataplane", metadata: ["from": "\(previous.rawValue)", "to": "\(dataplane.mode.rawValue)"])
        var opts = options
        opts.mode = previous
        let old = try? Agent.chooseDataplane(opts, logger: logger).0
        var moved: [String] = []
        for pod in pods where FileManager.default.fileExists(atPath: pod.spec.netns) {
            try? old?.remove(pod.spec)
            moved.append(pod.spec.name)
        }
        try? old?.uninstallNode()
        return moved
    }

    /// Starts ZDS for the proxy.
    public func startZDS() throws {
        let initial = guarded.withLock { $0.pods.values.map { ZDSWorkload(uid: $0.spec.uid, name: $0.spec.name, namespace: $0.spec.namespace, netns: $0.spec.netns) } }
        let server = try ZDSServer(path: options.zdsSocket, logger: logger, initial: initial,
                                   admit: { [self] socket in try admitProxy(socket) },
                                   connectionChanged: { [self] in membershipChanged() }) // annotations follow the proxy
        zdsServer.withLock { $0 = server }
        server.start()
    }

    // MARK: operations

    /// Enrolls a pod the CNI plugin reports: selection, dataplane, proxy, state file. Returns
    /// false when the pod is not selected for the mesh (nothing is done but remembering it, so a
    /// label set later can enrol it). With the Kubernetes API, the pod must be known there: when
    /// the API cannot say, the ADD fails, so the runtime retries and no meshed pod starts uncaptured.
    public func add(_ req: PodRequest) throws -> Bool {
        var spec = try spec(from: req)
        let (inMesh, annotations) = try selected(req)
        try applyAnnotations(annotations, to: &spec)
        let netnsID = try podNamespace(spec)
        guard inMesh else {
            logger.info("pod not selected for the mesh", metadata: ["pod": "\(req.namespace)/\(req.name)"])
            if cluster != nil { try remember(spec) }
            return false
        }
        try checkInterface(spec)
        let start = DispatchTime.now()
        do {
            try guarded.withLock { state in try enrollLocked(spec, netnsID: netnsID, &state) }
        } catch let e as AgentError {
            metrics.failure()
            throw e
        } catch {
            metrics.failure()
            throw AgentError(.enrollFailed, "\(error)")
        }
        metrics.enrolled(seconds: Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9)
        logger.info("pod enrolled", metadata: ["pod": "\(spec.namespace)/\(spec.name)", "ips": "\(spec.ips)"])
        membershipChanged()
        return true
    }

    /// Whether the pod is in the mesh, and its annotations: from the Kubernetes API when the agent
    /// watches it, else from CNI_ARGS and the selection file.
    private func selected(_ req: PodRequest) throws -> (Bool, [String: String]) {
        guard let cluster else {
            return (selection.isInMesh(namespace: req.namespace, pod: req.name, podLabels: req.podLabels, namespaceLabels: req.namespaceLabels),
                    selection.annotations(namespace: req.namespace, pod: req.name))
        }
        let (pod, why) = cluster.waitForPod(namespace: req.namespace, name: req.name, uid: req.uid, timeout: options.apiWaitSeconds)
        guard let pod else { throw AgentError(.apiUnavailable, why) }
        let decision = cluster.decide(pod)
        guard let inMesh = decision.inMesh else { throw AgentError(.apiUnavailable, "pod \(req.namespace)/\(req.name): \(decision.reason)") }
        return (inMesh, pod.metadata.annotations ?? [:])
    }

    /// Records a pod that is not in the mesh, for a later label.
    private func remember(_ spec: PodSpec) throws {
        try guarded.withLock { state in
            guard state.pods[spec.uid] == nil, state.known[spec.uid] != spec else { return }
            state.known[spec.uid] = spec
            try store.save(state)
        }
    }

    /// Enrolment under the lock: claim, pending record, dataplane, proxy, state file.
    func enrollLocked(_ spec: PodSpec, netnsID: String, _ state: inout AgentState) throws {
        try claim(spec, netnsID: netnsID, state: &state)
        let wasEnrolled = state.pods[spec.uid] != nil
        try begin(PendingOperation(op: "add", spec: spec), &state)
        do {
            try dataplane.enroll(spec)
            do {
                try zds?.add(ZDSWorkload(uid: spec.uid, name: spec.name, namespace: spec.namespace, netns: spec.netns))
            } catch {
                if !wasEnrolled { try? dataplane.remove(spec) }
                throw AgentError(.proxyRejected, "\(error)")
            }
        } catch {
            state.pending[spec.uid] = nil
            try? store.save(state)
            throw error
        }
        state.pending[spec.uid] = nil
        state.known[spec.uid] = nil
        state.pods[spec.uid] = EnrolledPod(spec: spec, enrolledAt: state.pods[spec.uid]?.enrolledAt ?? Date(), netnsID: netnsID)
        try store.save(state)
    }

    /// Removal under the lock: pending record, proxy, dataplane, state file.
    func removeLocked(_ spec: PodSpec, _ state: inout AgentState) throws {
        try begin(PendingOperation(op: "del", spec: spec), &state)
        zds?.remove(uid: spec.uid)
        do { try dataplane.remove(spec) } catch { throw AgentError(.removeFailed, "\(error)") }
        state.pods[spec.uid] = nil
        state.pending[spec.uid] = nil
        try store.save(state)
        metrics.removed()
    }

    /// Removes a pod; a pod that is not enrolled is a success.
    public func remove(_ req: PodRequest) throws {
        try guarded.withLock { state in
            if state.known.removeValue(forKey: req.uid) != nil { try store.save(state) }
            let known = state.pods[req.uid]?.spec
            guard let spec = known ?? (try? self.spec(from: req)) else { return }
            if known == nil && !mayCleanUnknown(spec, state: state) { return }
            try removeLocked(spec, &state)
        }
    }

    /// Verifies a pod's capture (CNI CHECK).
    public func check(_ req: PodRequest) throws {
        try guarded.withLock { state in
            guard let pod = state.pods[req.uid] else {
                if cluster == nil, selection.isInMesh(namespace: req.namespace, pod: req.name, podLabels: req.podLabels, namespaceLabels: req.namespaceLabels) {
                    throw AgentError(.notEnrolled, "pod \(req.namespace)/\(req.name) is selected for the mesh but not enrolled")
                }
                return
            }
            let drift = try dataplane.verify(pod.spec)
            if !drift.isEmpty { throw AgentError(.drift, drift.joined(separator: "; ")) }
        }
    }

    /// Changes the probe IPs on the running node.
    public func setProbeIPs(v4: String?, v6: String?) throws {
        try guarded.withLock { state in
            var c = dataplane.config
            do { try c.setProbeIPs(v4: v4, v6: v6) } catch { throw AgentError(.invalidRequest, "\(error)") }
            try dataplane.setProbeIPs(v4: c.probeIPv4, v6: c.probeIPv6, pods: state.pods.values.map(\.spec))
            state.probeIPv4 = c.probeIPv4.description
            state.probeIPv6 = c.probeIPv6.description
            try store.save(state)
        }
    }

    /// The status, read from the kernel.
    public func status() -> AgentStatus {
        guarded.withLock { state in
            let pods = state.pods.values.sorted { $0.spec.name < $1.spec.name }.map { p -> AgentStatus.PodStatus in
                let counters = ((try? (dataplane as? EBPFDataplane)?.counters(p.spec)) ?? [:]).reduce(into: [String: UInt64]()) { $0["\($1.key)"] = $1.value }
                return AgentStatus.PodStatus(uid: p.spec.uid, pod: "\(p.spec.namespace)/\(p.spec.name)", ips: p.spec.ips.map(\.description),
                                             attachment: dataplane.describe(p.spec), drift: (try? dataplane.verify(p.spec)) ?? ["verify failed"],
                                             counters: counters)
            }
            let f = features
            var status = AgentStatus(dataplane: dataplane.mode.rawValue, reason: reason,
                               features: ["bpf_syscall": f.bpfSyscall, "tc_programs": f.tcPrograms, "sk_lookup_programs": f.skLookupPrograms,
                                          "sk_assign_helper": f.skAssignHelper, "skc_lookup_tcp_helper": f.skcLookupHelper, "bpffs": f.bpffs,
                                          "tcx": f.tcx, "netfilter_egress_guard": f.netfilterPrograms,
                                          "node_socket_programs": f.nodeSocketPrograms, "bpf_lsm_programs": f.lsmPrograms],
                               ebpfMissing: f.missing, probeIPv4: dataplane.config.probeIPv4.description,
                               probeIPv6: dataplane.config.probeIPv6.description, proxyConnected: zds?.connected ?? false, pods: pods)
            status.proxyIdentity = proxyIdentity(dataplane.config)
            status.probeSource = dataplane.config.kubeletCgroup.map { "cgroup \($0)" } ?? "any host process (as Istio)"
            if let ebpf = dataplane as? EBPFDataplane {
                (status.probePath, status.nodeDrift) = ebpf.describeNode()
            } else {
                (status.probePath, status.nodeDrift) = ("SNAT in the node's nat POSTROUTING (iptables)", [])
            }
            return status
        }
    }

    /// Enrolled pod count.
    public var podCount: Int { guarded.withLock { $0.pods.count } }

    /// Forgets the connections kept from before their pod's enrolment that have closed since
    /// (``KeptConnection``). Under the agent's lock, so no pod enrols meanwhile with entries this
    /// pass would take for an unknown pod's. The daemon calls it periodically.
    public func pruneKeptConnections() {
        guarded.withLock { state in
            do { try dataplane.pruneKept(pods: state.pods.values.map(\.spec)) } catch {
                logger.warning("pruning kept connections failed", metadata: ["error": "\(error)"])
            }
        }
    }

    func spec(from r: PodRequest) throws -> PodSpec { try RequestValidation.spec(from: r, limits: options.limits) }

    // MARK: isolation: a request may touch only its own pod

    /// The identity of the pod's namespace; never the node's or the agent's own.
    func podNamespace(_ spec: PodSpec) throws -> String {
        let ns = NetworkNamespace(path: spec.netns)
        guard ns.exists, let id = try? ns.identity() else {
            throw AgentError(.invalidRequest, "network namespace \(RequestValidation.quoted(spec.netns)) does not exist")
        }
        for own in ["/proc/self/ns/net", "/proc/1/ns/net"] where (try? NetworkNamespace(path: own).identity()) == id {
            throw AgentError(.conflict, "\(RequestValidation.quoted(spec.netns)) is the node's or the agent's own network namespace, not a pod's")
        }
        return id
    }

    /// The interface must exist in the pod: capture goes on the one the runtime named.
    private func checkInterface(_ spec: PodSpec) throws {
        let name = spec.interface
        let index = try NetworkNamespace(path: spec.netns).run { if_nametoindex(name) }
        guard index != 0 else { throw AgentError(.invalidRequest, "interface \(RequestValidation.quoted(name)) does not exist in the pod") }
    }

    /// Refuses what another live pod owns (its addresses, its namespace) and the node's capacity;
    /// a pod whose namespace is gone loses its claim, and its leftovers are removed first.
    private func claim(_ spec: PodSpec, netnsID: String, state: inout AgentState) throws {
        for (uid, other) in state.pods where uid != spec.uid {
            let sharesIP = !Set(other.spec.ips).isDisjoint(with: spec.ips)
            let sharesNetns = namespaceID(of: other) == netnsID
            guard sharesIP || sharesNetns else { continue }
            if isLive(other) {
                throw AgentError(.conflict, sharesNetns ? "the network namespace is already enrolled for pod \(other.spec.namespace)/\(other.spec.name)"
                                                         : "an address is owned by pod \(other.spec.namespace)/\(other.spec.name)")
            }
            logger.info("removing a gone pod whose address or namespace is reused", metadata: ["pod": "\(other.spec.namespace)/\(other.spec.name)"])
            zds?.remove(uid: uid)
            try? dataplane.remove(other.spec)
            state.pods[uid] = nil
        }
        if state.pods[spec.uid] == nil {
            let ips = state.pods.values.reduce(0) { $0 + $1.spec.ips.count }
            guard state.pods.count < options.limits.pods, ips + spec.ips.count <= options.limits.pods * 2 else {
                throw AgentError(.capacityExceeded, "the node has \(state.pods.count) pods with \(ips) addresses enrolled; the limit is \(options.limits.pods) pods")
            }
        }
    }

    /// A pod is live while its namespace file still names the namespace it was enrolled in.
    private func isLive(_ pod: EnrolledPod) -> Bool {
        guard let id = try? NetworkNamespace(path: pod.spec.netns).identity() else { return false }
        return pod.netnsID == nil || pod.netnsID == id
    }

    /// A DEL for a UID the agent does not know cleans up only what no enrolled pod owns, and
    /// never the node's own namespace.
    private func mayCleanUnknown(_ spec: PodSpec, state: AgentState) -> Bool {
        if state.pods.values.contains(where: { !Set($0.spec.ips).isDisjoint(with: spec.ips) }) { return false }
        guard NetworkNamespace(path: spec.netns).exists else { return true }
        guard let id = try? podNamespace(spec) else { return false }
        return !state.pods.values.contains { namespaceID(of: $0) == id }
    }

    /// The recorded namespace identity, or (state files from before it was recorded) the live one.
    private func namespaceID(of pod: EnrolledPod) -> String? {
        pod.netnsID ?? (try? NetworkNamespace(path: pod.spec.netns).identity())
    }

    /// Removes every pod's capture and the node-wide parts, and the state file.
    public func uninstall() throws {
        try guarded.withLock { state in
            for pod in state.pods.values {
                zds?.remove(uid: pod.spec.uid)
                try? dataplane.remove(pod.spec)
            }
            for op in state.pending.values { try? dataplane.remove(op.spec) }
            _ = try? dataplane.removeStale(keep: [])
            try dataplane.uninstallNode()
            state = AgentState()
            store.remove()
        }
    }
}
