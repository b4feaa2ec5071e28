import Dataplane
import Foundation
import Logging
import SystemCalls

// The proxy's identity learned from its ZDS connection (`--proxy-cgroup zds-peer`). Only root can
// reach the ZDS socket (0600 in a 0700 directory), and whoever connects there receives every
// pod's network namespace: it is the proxy by construction, so its cgroup is the proxy's.

extension CaptureConfig {
    /// Starts from the cgroup a previous run learned, while that very group (same path, same id)
    /// still exists; else from no proxy.
    mutating func rememberProxy(_ saved: Cgroup?, logger: Logger) {
        if let saved, let now = try? Cgroup(path: saved.path), now == saved {
            proxyCgroup = now
            proxyUnknown = false
            logger.info("proxy identity from the state file, until the proxy connects", metadata: ["cgroup": "\(now)"])
        } else {
            proxyCgroup = nil
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
        let previous = dataplane.config.proxyCgroup, drainingBefore = dataplane.config.drainingProxyCgroups
        // A proxy that is replaced while it still runs (a rolling upgrade) drains its connections
        // as the proxy, until it exits (``retireDrainedProxies()``).
        var draining = drainingBefore.filter { $0 != cgroup && $0.isPopulated() }
        if let previous, previous != cgroup, previous.isPopulated(), !draining.contains(previous) { draining.append(previous) }
        try learnProxy(cgroup, draining: draining)
        logger.info("proxy identity learned from its ZDS connection",
                    metadata: ["cgroup": "\(cgroup)", "how": "\(how)", "draining": "\(draining.map(\.description))"])
        return { [self] in
            guard dataplane.config.proxyCgroup == cgroup, previous != cgroup else { return }
            do { try learnProxy(previous, draining: drainingBefore) } catch { logger.error("restoring the proxy's identity", metadata: ["error": "\(error)"]) }
            logger.warning("proxy lost before its snapshot: the previous proxy's cgroup is the proxy's again",
                           metadata: ["cgroup": "\(previous.map { "\($0)" } ?? "none")"])
        }
    }

    /// Makes `cgroup` the proxy's (nil: no proxy) and `draining` the replaced proxies' that still
    /// run, in the dataplane, then the proxy's in the state file (draining ones are not kept
    /// there); when the state file cannot take it, the dataplane goes back.
    private func learnProxy(_ cgroup: Cgroup?, draining: [Cgroup]) throws {
        try guarded.withLock { state in
            let pods = state.pods.values.map(\.spec)
            let before = (dataplane.config.proxyCgroup, dataplane.config.drainingProxyCgroups)
            if before != (cgroup, draining) { try dataplane.setProxyCgroup(cgroup, draining: draining, pods: pods) }
            guard state.proxyCgroup != cgroup else { return }
            let saved = state.proxyCgroup
            state.proxyCgroup = cgroup
            do { try store.save(state) } catch {
                state.proxyCgroup = saved
                try? dataplane.setProxyCgroup(before.0, draining: before.1, pods: pods)
                throw error
            }
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
        let c = dataplane.config
        guard !c.drainingProxyCgroups.isEmpty else { return }
        let running = c.drainingProxyCgroups.filter { $0.isPopulated() }
        guard running != c.drainingProxyCgroups else { return }
        do {
            try learnProxy(c.proxyCgroup, draining: running)
            logger.info("a replaced proxy has exited: its cgroup is no longer the proxy's", metadata: ["still draining": "\(running.map(\.description))"])
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
