import Synchronization
import SystemCalls

extension Mutex where Value == CaptureConfig {
    /// The rule-based dataplanes' proxy identity change: `cgroup` becomes the proxy's (nil: no
    /// proxy, no socket is the proxy's) and `draining` the replaced proxies still running, then
    /// `reapply` re-renders every pod's rules with them. If that fails, the previous identity comes
    /// back and is re-rendered too (best effort), and the error is thrown.
    func changeProxy(_ cgroup: Cgroup?, draining: [Cgroup], reapply: () throws -> Void) throws {
        let old = withLock { c -> CaptureConfig in
            let old = c
            c.proxyCgroup = cgroup
            c.drainingProxyCgroups = cgroup == nil ? [] : draining
            c.proxyUnknown = cgroup == nil
            return old
        }
        do { try reapply() } catch {
            withLock { $0.proxyCgroup = old.proxyCgroup; $0.drainingProxyCgroups = old.drainingProxyCgroups; $0.proxyUnknown = old.proxyUnknown }
            try? reapply()
            throw error
        }
    }
}
