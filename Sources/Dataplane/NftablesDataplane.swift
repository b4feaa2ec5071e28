import Foundation
import Logging
import Synchronization
import SystemCalls

/// Istio's in-pod capture with native nftables (Istio 1.28's `global.nativeNftables`): inet tables
/// inside each pod's namespace, one `nft -f` transaction per pod, the same policy routing as
/// iptables mode, and the node's probe SNAT matched through nft sets of in-mesh pod IPs.
public final class NftablesDataplane: Dataplane, Sendable {
    /// Always `.nftables`.
    public let mode = DataplaneMode.nftables
    /// The configuration in force (probe IPs and proxy identity change at run time).
    public var config: CaptureConfig { current.withLock { $0 } }
    private let current: Mutex<CaptureConfig>
    private let runner: CommandRunner
    private let cgroupPrefix: String
    private let logger: Logger

    /// Creates the dataplane. `runner` runs nft in the node's namespace or a pod's; nft must be
    /// installed, and the cgroup2 hierarchy reachable under /sys/fs/cgroup (nft looks paths up there).
    public init(config: CaptureConfig, runner: CommandRunner, logger: Logger = Logger(label: "dataplane.nftables")) throws {
        guard (try? Command.resolve("nft")) != nil else { throw DataplaneError(.unsupported, "nftables mode needs the nft program") }
        self.current = Mutex(config)
        self.runner = runner
        self.cgroupPrefix = try Self.cgroupPrefix(mountPoint: (try? Cgroup.mountPoint()) ?? "/sys/fs/cgroup")
        self.logger = logger
    }

    /// The cgroup2 mount relative to /sys/fs/cgroup, where nft resolves `socket cgroupv2` paths.
    static func cgroupPrefix(mountPoint: String) throws -> String {
        let base = "/sys/fs/cgroup"
        if mountPoint == base { return "" }
        guard mountPoint.hasPrefix(base + "/") else {
            throw DataplaneError(.unsupported, "nft resolves cgroup paths under \(base), and the cgroup2 hierarchy is at \(mountPoint)")
        }
        return String(mountPoint.dropFirst(base.count + 1))
    }

    private func rules(_ c: CaptureConfig? = nil) -> NftablesRules { NftablesRules(config: c ?? config, cgroupPrefix: cgroupPrefix) }

    /// The renderer for one pod: its rerouted interfaces, inbound bypass and DNS capture.
    private func rules(for pod: PodSpec) -> NftablesRules {
        var c = config
        c.dnsCapture = c.capturesDNS(pod)
        return NftablesRules(config: c, reroute: pod.rerouteInterfaces, bypassInbound: pod.bypassInboundCapture, cgroupPrefix: cgroupPrefix)
    }

    private func nft(_ input: String, netns: String? = nil) throws {
        try runner.checked("nft", ["-f", "-"], netns: netns, input: input)
    }

    // MARK: node

    /// Creates the node's table, sets and chains (probe SNAT, probe guard).
    public func prepareNode() throws { try nft(rules().node()) }

    /// Removes the node's table with its sets.
    public func uninstallNode() throws { try nft(rules().nodeRemoval()) }

    // MARK: pods

    /// Captures `pod`: one transaction of its tables, policy routing, its IPs in the node's sets.
    /// On failure everything of the pod's is removed again, unless it was captured before.
    public func enroll(_ pod: PodSpec) throws {
        try validate(pod)
        // A listing that fails counts as captured: a failed apply must never strip a running pod.
        let wasCaptured = (try? installedTables(pod).isEmpty == false) ?? true
        do {
            // The set first: a host SYN that carries the kubelet's bit from before its pod was in the
            // set (so output did not clear it) must not meet the pod's rules already in place.
            try nft(pod.ips.map { rules().addElement($0, uid: pod.uid) }.joined())
            if !wasCaptured, config.keepExistingConnections {
                do { try KeptConnections.keepInConntrack(netns: pod.netns, families: families(of: pod)) } catch {
                    logger.warning("connections from before enrolment cannot be kept: they are cut off",
                                   metadata: ["pod": "\(pod.namespace)/\(pod.name)", "error": "\(error)"])
                }
            }
            try nft(rules(for: pod).pod(ipv4: pod.hasIPv4, ipv6: pod.hasIPv6), netns: pod.netns)
            try routing.apply(netns: pod.netns, families: families(of: pod))
        } catch {
            if !wasCaptured { try? remove(pod) }
            throw DataplaneError(.applyFailed, pod: pod.name, "\(error)")
        }
    }

    /// Removes the pod's tables, ip rules, route table and set elements (only those tagged with its UID).
    public func remove(_ pod: PodSpec) throws {
        var failures: [String] = []
        if FileManager.default.fileExists(atPath: pod.netns) {
            do { try nft(rules().podRemoval(), netns: pod.netns) } catch { failures.append("\(error)") }
            do { try routing.remove(netns: pod.netns) } catch { failures.append("\(error)") }
        }
        let owners = (try? setElements()) ?? [:]
        let mine = pod.ips.filter { owners[$0] == pod.uid }
        if !mine.isEmpty {
            do { try nft(mine.map { rules().deleteElement($0) }.joined()) } catch { failures.append("\(error)") }
        }
        if !failures.isEmpty { throw DataplaneError(.removeFailed, pod: pod.name, failures.joined(separator: "; ")) }
    }

    /// Checks the pod's tables and rule counts, policy routing and set elements.
    public func verify(_ pod: PodSpec) throws -> [String] {
        try validate(pod)
        var drift: [String] = []
        let listing = try runner.checked("nft", ["-j", "list", "ruleset", "inet"], netns: pod.netns)
        let have = try NftJSON.ruleCounts(listing, tables: Set(NftablesRules.podTableNames))
        let r = rules(for: pod)
        let expected = r.expectedPodRuleCounts(ipv4: pod.hasIPv4, ipv6: pod.hasIPv6)
        for (chain, n) in expected.sorted(by: { $0.key < $1.key }) where have[chain] != n {
            drift.append(have[chain] == nil ? "missing chain inet \(chain)" : "inet \(chain) has \(have[chain]!) rules, expected \(n)")
        }
        let digest = r.podDigest(ipv4: pod.hasIPv4, ipv6: pod.hasIPv6)
        let found = try NftJSON.comments(listing, table: NftablesRules.natTable, chain: "prerouting")
        if drift.isEmpty, found != [digest] { drift.append("the pod's rules are not the ones wanted now (digest \(found) instead of \(digest))") }
        drift += try routing.drift(netns: pod.netns, families: families(of: pod))
        let owners = try setElements()
        for ip in pod.ips where owners[ip] != pod.uid { drift.append("node set: \(ip) not tagged with the pod") }
        return drift
    }

    /// Re-renders the node's and every pod's rules for new probe IPs.
    public func setProbeIPs(v4: IPAddress, v6: IPAddress, pods: [PodSpec]) throws {
        current.withLock { $0.probeIPv4 = v4; $0.probeIPv6 = v6 }
        try prepareNode()
        try reapply(pods)
    }

    /// Re-renders every pod's rules with the proxies' new cgroups (one transaction per pod); on a
    /// failure every pod goes back to the previous ones.
    public func setProxyCgroup(_ cgroup: Cgroup?, draining: [Cgroup], pods: [PodSpec]) throws {
        try current.changeProxy(cgroup, draining: draining) { try reapply(pods) }
    }

    private func reapply(_ pods: [PodSpec]) throws {
        for pod in pods where FileManager.default.fileExists(atPath: pod.netns) {
            try nft(rules(for: pod).pod(ipv4: pod.hasIPv4, ipv6: pod.hasIPv6), netns: pod.netns)
        }
    }

    /// The rule count of our tables in the pod.
    public func describe(_ pod: PodSpec) -> String {
        guard let out = try? runner.checked("nft", ["-j", "list", "ruleset", "inet"], netns: pod.netns),
              let have = try? NftJSON.ruleCounts(out, tables: Set(NftablesRules.podTableNames)) else { return "nftables: cannot list the pod's tables" }
        return "nftables: \(have.values.reduce(0, +)) rules in \(have.count) chains"
    }

    /// Deletes set elements tagged with a UID no kept pod has.
    public func removeStale(keep: [PodSpec]) throws -> [String] {
        let uids = Set(keep.map(\.uid))
        let stale = try setElements().filter { !uids.contains($0.value) }.sorted { $0.key.description < $1.key.description }
        if stale.isEmpty { return [] }
        try nft(stale.map { rules().deleteElement($0.key) }.joined())
        return stale.map { "nft set \(config.ipsetName(ipv6: $0.key.isIPv6)) \($0.key) (pod \($0.value))" }
    }

    // MARK: reading nft

    /// Our tables in the pod (empty when none is there).
    func installedTables(_ pod: PodSpec) throws -> Set<String> {
        let out = try runner.checked("nft", ["list", "tables", "inet"], netns: pod.netns)
        return Set(out.split(separator: "\n").compactMap { $0.split(separator: " ").last.map(String.init) }).intersection(NftablesRules.podTableNames)
    }

    /// The node sets' elements and the UID each is tagged with ("" when untagged).
    func setElements() throws -> [IPAddress: String] {
        var owners: [IPAddress: String] = [:]
        for v6 in [false, true] {
            let r = try runner.run("nft", ["-j", "list", "set", "inet", NftablesRules.nodeTable, config.ipsetName(ipv6: v6)], netns: nil, input: nil, environment: [:])
            guard r.status == 0 else { continue } // no set yet: no element
            owners.merge(try NftJSON.setElements(r.stdout)) { a, _ in a }
        }
        return owners
    }

    // MARK: helpers

    private func validate(_ pod: PodSpec) throws {
        // Both go into nft's input inside double quotes: no quote, backslash or line break.
        let unquotable: (Character) -> Bool = { $0 == "\"" || $0 == "\\" || $0.isNewline }
        if pod.uid.isEmpty || pod.uid.utf8.count > 128 || pod.uid.contains(where: { unquotable($0) || $0 == " " }) {
            throw DataplaneError(.invalidPod, pod: pod.name, "invalid pod UID '\(pod.uid)'")
        }
        if pod.ips.isEmpty { throw DataplaneError(.invalidPod, pod: pod.name, "pod has no IP address") }
        // nft reads a trailing `*` in an interface name as a wildcard: names are matched exactly, as in ebpf mode.
        for name in pod.rerouteInterfaces where name.isEmpty || name.utf8.count > 15 || name.contains(where: unquotable) || name.contains("*") {
            throw DataplaneError(.invalidPod, pod: pod.name, "invalid interface name '\(name)'")
        }
        if !FileManager.default.fileExists(atPath: pod.netns) {
            throw DataplaneError(.netnsMissing, pod: pod.name, "network namespace \(pod.netns) does not exist")
        }
    }

    private func families(of pod: PodSpec) -> [Bool] { (pod.hasIPv4 ? [false] : []) + (pod.hasIPv6 ? [true] : []) }

    private var routing: PolicyRouting { PolicyRouting(config: config) }
}

/// Reads `nft -j` output.
enum NftJSON {
    private static func objects(_ text: String) throws -> [[String: Any]] {
        guard let root = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
              let list = root["nftables"] as? [[String: Any]] else { throw DataplaneError(.applyFailed, "nft -j: unexpected output") }
        return list
    }

    /// Rules per `table chain` of the inet tables in `tables`; every chain listed, empty ones with 0.
    static func ruleCounts(_ text: String, tables: Set<String>) throws -> [String: Int] {
        var counts: [String: Int] = [:]
        for o in try objects(text) {
            if let c = o["chain"] as? [String: Any], let t = c["table"] as? String, tables.contains(t), let n = c["name"] as? String {
                counts["\(t) \(n)", default: 0] += 0
            }
            if let r = o["rule"] as? [String: Any], let t = r["table"] as? String, tables.contains(t), let n = r["chain"] as? String {
                counts["\(t) \(n)", default: 0] += 1
            }
        }
        return counts
    }

    /// The comments of the rules of one inet chain.
    static func comments(_ text: String, table: String, chain: String) throws -> [String] {
        try objects(text).compactMap { o in
            guard let r = o["rule"] as? [String: Any], r["table"] as? String == table, r["chain"] as? String == chain else { return nil }
            return r["comment"] as? String
        }
    }

    /// The elements of a listed set, each with its comment.
    static func setElements(_ text: String) throws -> [IPAddress: String] {
        var out: [IPAddress: String] = [:]
        for o in try objects(text) {
            guard let set = o["set"] as? [String: Any], let elems = set["elem"] as? [Any] else { continue }
            for e in elems {
                if let s = e as? String, let ip = IPAddress(s) { out[ip] = "" }
                if let d = (e as? [String: Any])?["elem"] as? [String: Any], let s = d["val"] as? String, let ip = IPAddress(s) {
                    out[ip] = d["comment"] as? String ?? ""
                }
            }
        }
        return out
    }
}
