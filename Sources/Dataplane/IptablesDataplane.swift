import Foundation
import Logging
import Synchronization
import SystemCalls

/// Istio's in-pod capture with iptables: rules inside each pod's namespace applied with
/// iptables-restore --noflush, policy routing for the proxy's transparent sockets, and the node's
/// probe SNAT matched through an ipset of in-mesh pod IPs.
public final class IptablesDataplane: Dataplane, Sendable {
    /// Always `.iptables`.
    public let mode = DataplaneMode.iptables
    /// The configuration in force (the probe IPs change at run time).
    public var config: CaptureConfig { current.withLock { $0 } }
    /// The backend in use and why it was chosen.
    public let backend: IptablesBackend
    /// Why ``backend`` was chosen.
    public let backendReason: String
    private let current: Mutex<CaptureConfig>
    private let runner: CommandRunner
    private let lockDirectory: String
    private let logger: Logger

    /// Creates the dataplane. `runner` runs node commands in its default namespace; `lockDirectory`
    /// holds one xtables lock file per pod, so legacy iptables in a pod never waits on the node's lock.
    public init(config: CaptureConfig, runner: CommandRunner, backend: IptablesBackend? = nil,
                lockDirectory: String = "/run/redirect-agent/xtables", logger: Logger = Logger(label: "dataplane.iptables")) {
        self.current = Mutex(config)
        self.runner = runner
        (self.backend, self.backendReason) = IptablesBackend.detect(runner: runner, override: backend)
        self.lockDirectory = lockDirectory
        self.logger = logger
        logger.info("iptables backend", metadata: ["backend": "\(self.backend.rawValue)", "reason": "\(backendReason)"])
    }

    private var rules: IptablesRules { IptablesRules(config: config) }

    /// The renderer for one pod (its rerouted interfaces, inbound bypass and DNS capture are part
    /// of its rules).
    private func rules(for pod: PodSpec) -> IptablesRules {
        var c = config
        c.dnsCapture = c.capturesDNS(pod)
        return IptablesRules(config: c, reroute: pod.rerouteInterfaces, bypassInbound: pod.bypassInboundCapture)
    }

    // MARK: node

    /// Creates the ipsets and the probe SNAT chain, with its jump first in POSTROUTING.
    public func prepareNode() throws {
        for v6 in [false, true] {
            try runner.checked("ipset", ["create", config.ipsetName(ipv6: v6), "hash:ip", "family", v6 ? "inet6" : "inet", "comment", "-exist"])
            try applyNodeRules(ipv6: v6)
        }
        warnWithoutBridgeNetfilter()
    }

    /// Pods on one Linux bridge reach each other without passing the node's iptables unless
    /// br_netfilter hands bridged packets to them (kube-proxy needs that too, so nodes have it).
    /// Without it the node's probe guard never sees a same-node pod that spoofs the probe IP.
    private func warnWithoutBridgeNetfilter() {
        for name in ["net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"] where (try? readSysctl(name)) != "1" {
            logger.warning("bridged traffic skips iptables: a same-node pod on a bridge can spoof the probe IP past the node's guard; load br_netfilter and set \(name)=1 (kube-proxy needs it too)",
                           metadata: ["sysctl": "\(name)", "value": "\((try? readSysctl(name)) ?? "missing (br_netfilter not loaded)")"])
        }
    }

    private func applyNodeRules(ipv6: Bool) throws {
        let r = rules
        let have = r.installed(in: try runner.checked(backend.save(ipv6: ipv6), []))
        let input = r.node(ipv6: ipv6, jumpPresent: have.jumps.contains(r.nodeJump), jumpIsFirst: have.firstTargets["nat POSTROUTING"] == r.postrouting,
                           guardPresent: have.jumps.contains(r.guardJump), guardIsFirst: have.firstTargets["raw PREROUTING"] == r.probeGuard)
        try runner.checked(backend.restore(ipv6: ipv6), ["--noflush"], input: input)
    }

    /// Removes the node's chain, jump and ipsets.
    public func uninstallNode() throws {
        for v6 in [false, true] {
            let r = rules
            let have = r.installed(in: try runner.checked(backend.save(ipv6: v6), []))
            let input = r.nodeRemoval(present: have.jumps, chains: have.chains)
            if !input.isEmpty { try runner.checked(backend.restore(ipv6: v6), ["--noflush"], input: input) }
            _ = try? runner.run("ipset", ["destroy", config.ipsetName(ipv6: v6)], netns: nil, input: nil, environment: [:])
        }
    }

    // MARK: pods

    /// Captures `pod`: its rules per family, policy routing, and its IPs in the node's ipsets.
    /// On failure everything of the pod's is removed again, so no half-applied capture remains.
    public func enroll(_ pod: PodSpec) throws {
        try validate(pod)
        var wasCaptured = false
        do {
            for v6 in families(of: pod) { wasCaptured = try applyPodRules(pod, ipv6: v6, first: true) || wasCaptured }
            try routing.apply(netns: pod.netns, families: families(of: pod))
            for ip in pod.ips {
                try runner.checked("ipset", ["add", config.ipsetName(ipv6: ip.isIPv6), ip.description, "comment", pod.uid, "-exist"])
            }
        } catch {
            // Only a first enrolment is undone: an update in place leaves the capture there is.
            if !wasCaptured { try? remove(pod) }
            throw DataplaneError(.applyFailed, pod: pod.name, "\(error)")
        }
    }

    /// Removes the pod's rules, ip rules, route table and ipset entries (only those tagged with its UID).
    public func remove(_ pod: PodSpec) throws {
        var failures: [String] = []
        if FileManager.default.fileExists(atPath: pod.netns) {
            for v6 in [false, true] {
                do {
                    let r = rules
                    let have = r.installed(in: try podCommand(pod, backend.save(ipv6: v6), []))
                    let input = r.podRemoval(present: have.jumps, chains: have.chains)
                    if !input.isEmpty { try podCommand(pod, backend.restore(ipv6: v6), ["--noflush"], input: input) }
                    try removeEmptyTables(pod, ipv6: v6)
                } catch { failures.append("\(error)") }
            }
            do { try routing.remove(netns: pod.netns) } catch { failures.append("\(error)") }
        }
        for ip in pod.ips where ipsetEntryOwner(ip) == pod.uid {
            do { try runner.checked("ipset", ["del", config.ipsetName(ipv6: ip.isIPv6), ip.description]) } catch { failures.append("\(error)") }
        }
        try? FileManager.default.removeItem(atPath: lockFile(pod))
        if !failures.isEmpty { throw DataplaneError(.removeFailed, pod: pod.name, failures.joined(separator: "; ")) }
    }

    /// Checks the pod's chains, jumps, rule counts, policy routing and ipset entries.
    public func verify(_ pod: PodSpec) throws -> [String] {
        try validate(pod)
        var drift: [String] = []
        let r = rules(for: pod)
        for v6 in families(of: pod) {
            let fam = v6 ? "IPv6" : "IPv4"
            let have = r.installed(in: try podCommand(pod, backend.save(ipv6: v6), []))
            for j in r.podJumps(ipv6: v6) where !have.jumps.contains(j) { drift.append("\(fam): missing jump \(j.table) \(j.from) -> \(j.to)") }
            for (chain, n) in r.expectedPodRuleCounts(ipv6: v6) where have.ruleCounts[chain, default: 0] != n {
                drift.append("\(fam): \(chain) has \(have.ruleCounts[chain, default: 0]) rules, expected \(n)")
            }
        }
        drift += try routing.drift(netns: pod.netns, families: families(of: pod))
        for ip in pod.ips where ipsetEntryOwner(ip) != pod.uid { drift.append("node ipset: \(ip) not tagged with the pod") }
        return drift
    }

    /// Re-renders node and pod rules for new probe IPs, without touching anything else.
    public func setProbeIPs(v4: IPAddress, v6: IPAddress, pods: [PodSpec]) throws {
        current.withLock { $0.probeIPv4 = v4; $0.probeIPv6 = v6 }
        for fam in [false, true] { try applyNodeRules(ipv6: fam) }
        try reapply(pods)
    }

    /// Re-renders every pod's rules with the proxies' new cgroups (one restore per pod and family);
    /// on a failure, every pod's rules go back to the previous ones.
    public func setProxyCgroup(_ cgroup: Cgroup?, draining: [Cgroup], pods: [PodSpec]) throws {
        try current.changeProxy(cgroup, draining: draining) { try reapply(pods) }
    }

    private func reapply(_ pods: [PodSpec]) throws {
        for pod in pods where FileManager.default.fileExists(atPath: pod.netns) {
            for fam in families(of: pod) { try applyPodRules(pod, ipv6: fam) }
        }
    }

    /// The rule count of our chains in the pod, per family, and the backend.
    public func describe(_ pod: PodSpec) -> String {
        var parts = ["iptables-\(backend.rawValue)"]
        for v6 in families(of: pod) {
            let have = (try? podCommand(pod, backend.save(ipv6: v6), [])).map { rules.installed(in: $0) }
            parts.append("\(v6 ? "IPv6" : "IPv4"): \(have?.ruleCounts.values.reduce(0, +) ?? 0) rules in \(have?.chains.count ?? 0) chains")
        }
        return parts.joined(separator: ", ")
    }

    /// Deletes ipset entries tagged with a UID no kept pod has.
    public func removeStale(keep: [PodSpec]) throws -> [String] {
        let uids = Set(keep.map(\.uid))
        var removed: [String] = []
        for v6 in [false, true] {
            let set = config.ipsetName(ipv6: v6)
            guard let out = try? runner.checked("ipset", ["list", set]) else { continue }
            for line in out.split(separator: "\n") {
                guard let q = line.range(of: " comment \"") else { continue }
                let ip = String(line[..<q.lowerBound]), uid = String(line[q.upperBound...].dropLast())
                if !uids.contains(uid) {
                    try runner.checked("ipset", ["del", set, ip])
                    removed.append("ipset \(set) \(ip) (pod \(uid))")
                }
            }
        }
        return removed
    }

    // MARK: helpers

    private func validate(_ pod: PodSpec) throws {
        if pod.uid.isEmpty || pod.uid.contains(where: { $0 == " " || $0 == "\n" || $0 == "\"" }) {
            throw DataplaneError(.invalidPod, pod: pod.name, "invalid pod UID '\(pod.uid)'")
        }
        if pod.ips.isEmpty { throw DataplaneError(.invalidPod, pod: pod.name, "pod has no IP address") }
        if !FileManager.default.fileExists(atPath: pod.netns) {
            throw DataplaneError(.netnsMissing, pod: pod.name, "network namespace \(pod.netns) does not exist")
        }
    }

    private func families(of pod: PodSpec) -> [Bool] {
        (pod.hasIPv4 ? [false] : []) + (pod.hasIPv6 ? [true] : [])
    }

    /// Loads the pod's rules of one family. At an enrolment (`first`) into a namespace that has
    /// none of them yet, its connections are told to conntrack first, so they stay uncaptured.
    /// Returns whether the family had our rules already.
    @discardableResult
    private func applyPodRules(_ pod: PodSpec, ipv6: Bool, first: Bool = false) throws -> Bool {
        let r = rules(for: pod)
        let have = r.installed(in: try podCommand(pod, backend.save(ipv6: ipv6), []))
        if first, have.jumps.isEmpty, config.keepExistingConnections {
            // Failing to keep them cuts them off (closed); it never stops the pod's capture.
            do { try KeptConnections.keepInConntrack(netns: pod.netns, families: [ipv6]) } catch {
                logger.warning("connections from before enrolment cannot be kept: they are cut off",
                               metadata: ["pod": "\(pod.namespace)/\(pod.name)", "error": "\(error)"])
            }
        }
        try podCommand(pod, backend.restore(ipv6: ipv6), ["--noflush"], input: r.pod(ipv6: ipv6, present: have.jumps))
        return !have.jumps.isEmpty
    }

    private var routing: PolicyRouting { PolicyRouting(config: config) }

    /// The UID an ipset entry is tagged with, nil when absent.
    private func ipsetEntryOwner(_ ip: IPAddress) -> String? {
        guard let out = try? runner.checked("ipset", ["list", config.ipsetName(ipv6: ip.isIPv6)]) else { return nil }
        for line in out.split(separator: "\n") where line.hasPrefix("\(ip) ") {
            guard let q = line.range(of: "comment \"") else { return "" }
            return String(line[q.upperBound...].dropLast())
        }
        return nil
    }

    /// With the nft backend, deletes the tables our rules made that are empty again, so a removed
    /// pod's namespace is left as it was (legacy tables are the kernel's and cannot be deleted).
    /// A table goes only if nft itself shows nothing in it but ACCEPT base chains: no rule, and no
    /// set, map or object that iptables-save cannot show. One that vanished meanwhile is fine.
    private func removeEmptyTables(_ pod: PodSpec, ipv6: Bool) throws {
        guard backend == .nft else { return }
        let family = ipv6 ? "ip6" : "ip"
        for table in IptablesRules.emptyTables(in: try podCommand(pod, backend.save(ipv6: ipv6), [])) {
            let listed = try runner.run("nft", ["list", "table", family, table], netns: pod.netns, input: nil, environment: [:])
            guard listed.status == 0, IptablesRules.onlyAcceptingBaseChains(nftTable: listed.stdout) else { continue }
            let r = try runner.run("nft", ["delete", "table", family, table], netns: pod.netns, input: nil, environment: [:])
            if r.status != 0 && !r.stderr.contains("No such file or directory") {
                throw CommandError(command: "nft delete table \(family) \(table) (in \(pod.netns))", result: r)
            }
        }
    }

    private func lockFile(_ pod: PodSpec) -> String { "\(lockDirectory)/\(pod.uid).lock" }

    @discardableResult
    private func podCommand(_ pod: PodSpec, _ program: String, _ args: [String], input: String? = nil) throws -> String {
        try? FileManager.default.createDirectory(atPath: lockDirectory, withIntermediateDirectories: true)
        return try runner.checked(program, args, netns: pod.netns, input: input, environment: ["XTABLES_LOCKFILE": lockFile(pod)])
    }
}
