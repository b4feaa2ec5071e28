import Dataplane
import Foundation
import Logging
import SystemCalls

// The proxy's identity learned from its ZDS connection (`--proxy-cgroup zds-peer`). Only root can
// reach the ZDS socket (0600 in a 0700 directory), and whoever connects there receives every
// pod's network namespace: it is the proxy by construction, so its cgroup is the proxy's.

extension CaptureConfig {
    /// Starts from the cgroup a previous run learned, while that very group (same path, same id)
    /// still exists; else from no proxy. With it, the replaced proxies that were draining and
    /// still run (same group, still populated) go on draining: a restart mid-upgrade cuts nothing.
    mutating func rememberProxy(_ saved: Cgroup?, draining: [Cgroup] = [], logger: Logger) {
        if let saved, let now = try? Cgroup(path: saved.path), now == saved {
            proxyCgroup = now
            proxyUnknown = false
            drainingProxyCgroups = draining.filter { d in d != now && (try? Cgroup(path: d.path)) == d && d.isPopulated() }
            logger.info("proxy identity from the state file, until the proxy connects",
                        metadata: ["cgroup": "\(now)", "draining": "\(drainingProxyCgroups.map(\.description))"])
        } else {
            proxyCgroup = nil
            drainingProxyCgroups = []
            proxyUnknown = true
            logger.info("proxy identity to be learned from its ZDS connection: until then no socket is the proxy's")
        }
    }
}

extension Agent {
    /// Called for each proxy that says hello over ZDS, before it gets its snapshot (one at a time):
    /// its cgroup becomes the proxy's in the dataplane and the state file. A peer whose cgroup
    /// cannot be found, or one that could stand for other processes (the root cgroup, or a group
    /// with groups below it: iptables' `-m cgroup --path` matches those too, the eBPF programs only
    /// the exact group), is refused (it throws), so the proxy retries and nothing is exempted by
    /// guess. Returns what restores the previous proxy's cgroup (or no proxy), for a proxy lost
    /// before its snapshot is through.
    func admitProxy(_ socket: Socket) throws -> @Sendable () -> Void {
        guard options.learnProxyCgroup else { return {} }
        let (cgroup, how) = try Cgroup.ofPeer(socket)
        if try cgroup.path == "/" || cgroup.descendantCount() > 0 {
            throw AgentError(.proxyUnidentified, "the ZDS peer (\(how)) is in \(cgroup.path), which holds other groups: it cannot be told apart from them")
        }
        // A proxy that is replaced while it still runs (a rolling upgrade) drains its connections
        // as the proxy, until it exits (``retireDrainedProxies()``); the newest few at most.
        let before = try changeProxy { c in
            // A replaced proxy that says hello again (after an agent restart every proxy reconnects)
            // stays draining while the proxy that replaced it runs: hellos may come in any order.
            if c.drainingProxyCgroups.contains(cgroup), let current = c.proxyCgroup, current != cgroup, current.isPopulated() { return nil }
            var draining = c.drainingProxyCgroups.filter { $0 != cgroup && $0.isPopulated() }
            if let previous = c.proxyCgroup, previous != cgroup, previous.isPopulated(), !draining.contains(previous) { draining.append(previous) }
            return (cgroup, Array(draining.suffix(Self.maxDrainingProxies)))
        }
        logger.info("proxy identity learned from its ZDS connection", metadata: ["cgroup": "\(cgroup)", "how": "\(how)"])
        return { [self] in
            do {
                // Only if the lost proxy is still the proxy: a later admission or retirement stands.
                let undone = try changeProxy { c in c.proxyCgroup == cgroup && before.proxy != cgroup ? (before.proxy, before.draining) : nil }
                guard undone.proxy == cgroup else { return }
            } catch { logger.error("restoring the proxy's identity", metadata: ["error": "\(error)"]) }
            logger.warning("proxy lost before its snapshot: the previous proxy's cgroup is the proxy's again",
                           metadata: ["cgroup": "\(before.proxy.map { "\($0)" } ?? "none")"])
        }
    }

    /// How many replaced proxies may drain at once (ra_proxy_cgroups has room for 16).
    static let maxDrainingProxies = 8

    /// Changes the proxy's and the draining proxies' cgroups, under the agent's lock: `change` sees
    /// the configuration in force and returns the new pair (nil: no change). In the dataplane,
    /// then in the state file; when the state file cannot take it, the dataplane goes back.
    /// Returns the pair in force before.
    @discardableResult
    private func changeProxy(_ change: (CaptureConfig) -> (Cgroup?, [Cgroup])?) throws -> (proxy: Cgroup?, draining: [Cgroup]) {
        try guarded.withLock { state in
            let pods = state.pods.values.map(\.spec)
            let c = dataplane.config, before = (proxy: c.proxyCgroup, draining: c.drainingProxyCgroups)
            guard let (cgroup, draining) = change(c), (cgroup, draining) != (before.proxy, before.draining) else { return before }
            try dataplane.setProxyCgroup(cgroup, draining: draining, pods: pods)
            guard (state.proxyCgroup, state.drainingProxyCgroups) != (cgroup, draining) else { return before }
            let saved = (state.proxyCgroup, state.drainingProxyCgroups)
            (state.proxyCgroup, state.drainingProxyCgroups) = (cgroup, draining)
            do { try store.save(state) } catch {
                (state.proxyCgroup, state.drainingProxyCgroups) = saved
                try? dataplane.setProxyCgroup(before.proxy, draining: before.draining, pods: pods)
                throw error
            }
            return before
        }
    }

    /// The once-a-second housekeeping: retires exited draining proxies, and (ebpf) clears a
    /// monitor's lease that ran out, so the programs go back to reading a zero.
    public func everySecond() {
        retireDrainedProxies()
        if let ebpf = dataplane as? EBPFDataplane {
            do {
                if try ebpf.maps.clearExpiredMonitorLease(now: Monotonic.nanoseconds()) { logger.info("a monitor's lease ran out: events are off") }
            } catch { logger.warning("clearing the monitor's lease failed", metadata: ["error": "\(error)"]) }
        }
    }

    /// Drops the draining proxies that have exited (their cgroup holds no process, or is gone):
    /// from then on their cgroup is nobody's. Cheap while none drains.
    public func retireDrainedProxies() {
        guard !dataplane.config.drainingProxyCgroups.isEmpty else { return }
        do {
            let before = try changeProxy { c in
                let running = c.drainingProxyCgroups.filter { $0.isPopulated() }
                return running == c.drainingProxyCgroups ? nil : (c.proxyCgroup, running)
            }
            if before.draining != dataplane.config.drainingProxyCgroups {
                logger.info("a replaced proxy has exited: its cgroup is no longer the proxy's",
                            metadata: ["still draining": "\(dataplane.config.drainingProxyCgroups.map(\.description))"])
            }
        } catch {
            logger.error("retiring a drained proxy failed", metadata: ["error": "\(error)"])
        }
    }

    /// How the dataplane tells the proxy's sockets, for `status`.
    func proxyIdentity(_ c: CaptureConfig) -> String {
        if c.proxyUnknown { return "learned from the ZDS peer: no proxy has connected yet, no app socket skips capture on the mark" }
        guard let cgroup = c.proxyCgroup else { return "mark only (forgeable, as Istio)" }
        let draining = c.drainingProxyCgroups.isEmpty ? "" : "; draining (replaced, still running): " + c.drainingProxyCgroups.map(\.description).joined(separator: ", ")
        return "cgroup \(cgroup)" + (options.learnProxyCgroup ? ", learned from the ZDS peer" : "") + draining
    }
}
