import Dataplane
import Foundation
import Logging
import SystemCalls

// The proxy's identity learned from its ZDS connection (`--proxy-cgroup zds-peer`). Only root can
// reach the ZDS socket (0600 in a 0700 directory), and whoever connects there receives every
// pod's network namespace: it is the proxy by construction, so its cgroup is the proxy's.

extension CaptureConfig {
    /// Starts from the cgroup a previous run learned, while it still exists; else from no proxy.
    mutating func rememberProxy(_ saved: Cgroup?, logger: Logger) {
        if let saved, let now = try? Cgroup(path: saved.path) {
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
    /// Called for each proxy that says hello over ZDS, before it gets its snapshot: its cgroup
    /// becomes the proxy's in the dataplane and the state file. A peer whose cgroup cannot be
    /// found, or that runs in the root cgroup (iptables' `-m cgroup --path /` matches every
    /// process), is refused (it throws), so the proxy retries and nothing is exempted by guess.
    /// Returns what restores the previous proxy's cgroup, for a proxy lost before its snapshot.
    func admitProxy(_ socket: Socket) throws -> @Sendable () -> Void {
        guard options.learnProxyCgroup else { return {} }
        let (cgroup, how) = try Cgroup.ofPeer(socket)
        guard cgroup.path != "/" else { throw AgentError(.proxyUnidentified, "the ZDS peer (\(how)) runs in the root cgroup: it cannot be told apart from other processes") }
        let previous = try learnProxy(cgroup)
        logger.info("proxy identity learned from its ZDS connection", metadata: ["cgroup": "\(cgroup)", "how": "\(how)"])
        return { [self] in
            guard let previous, previous != cgroup else { return }
            do { _ = try learnProxy(previous) } catch { logger.error("restoring the proxy's identity", metadata: ["error": "\(error)"]) }
            logger.warning("proxy lost before its snapshot: the previous proxy's cgroup is the proxy's again", metadata: ["cgroup": "\(previous)"])
        }
    }

    /// Makes `cgroup` the proxy's in the dataplane and the state file; returns the one it replaced.
    private func learnProxy(_ cgroup: Cgroup) throws -> Cgroup? {
        try guarded.withLock { state in
            let c = dataplane.config
            if c.proxyUnknown || c.proxyCgroup != cgroup {
                try dataplane.setProxyCgroup(cgroup, pods: state.pods.values.map(\.spec))
            }
            if state.proxyCgroup != cgroup {
                state.proxyCgroup = cgroup
                try store.save(state)
            }
            return c.proxyUnknown ? nil : c.proxyCgroup
        }
    }

    /// How the dataplane tells the proxy's sockets, for `status`.
    func proxyIdentity(_ c: CaptureConfig) -> String {
        if c.proxyUnknown { return "learned from the ZDS peer: no proxy has connected yet, no socket skips capture" }
        guard let cgroup = c.proxyCgroup else { return "mark only (forgeable, as Istio)" }
        return "cgroup \(cgroup)" + (options.learnProxyCgroup ? ", learned from the ZDS peer" : "")
    }
}
