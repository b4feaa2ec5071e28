import Foundation
import Glibc
import Synchronization
import SystemCalls
import ZDS

/// The proxy's side of ZDS, as ztunnel does it: connect to the agent, say hello, then serve
/// every pod the agent hands over (its namespace arrives as a descriptor) until the agent goes
/// away; reconnect and reconcile with the next snapshot. Pods that survive an agent restart keep
/// their listeners untouched, so no connection notices the restart.
public final class ZDSClient: Sendable {
    private let path: String
    private let proxy: MeshProxy
    private let namespaces = Mutex<[String: Int32]>([:])   // uid -> netns fd we keep open

    /// Creates a client for the agent socket at `path`.
    public init(path: String, proxy: MeshProxy) { self.path = path; self.proxy = proxy }

    /// Connects and serves forever, reconnecting when the agent restarts.
    public func run() {
        while true {
            guard let ch = try? ZDSChannel.connect(path: path) else { usleep(100_000); continue }
            do { try session(ch) } catch { FileHandle.standardError.write(Data("zds: \(error)\n".utf8)) }
            ch.socket.close()
            usleep(100_000)
        }
    }

    private func session(_ ch: ZDSChannel) throws {
        var hello = Istio_Workload_Zds_ZdsHello()
        hello.version = .v1
        try ch.send(hello)
        var seen = Set<String>()
        while let (req, fd) = try ch.receive(Istio_Workload_Zds_WorkloadRequest.self) {
            var ack = Istio_Workload_Zds_Ack()
            switch req.payload {
            case .add(let add)?:
                seen.insert(add.uid)
                do { try self.add(uid: add.uid, fd: fd) } catch { ack.error = "\(error)" }
            case .keep(let keep)?:
                seen.insert(keep.uid)
            case .del(let del)?:
                remove(del.uid)
            case .snapshotSent?:
                for uid in proxy.enrolled where !seen.contains(uid) { remove(uid) }
            case nil:
                ack.error = "empty request"
            }
            if case .add? = req.payload {} else if fd >= 0 { close(fd) }
            var resp = Istio_Workload_Zds_WorkloadResponse()
            resp.ack = ack
            try ch.send(resp)
        }
    }

    private func add(uid: String, fd: Int32) throws {
        guard fd >= 0 else { throw ProxyError("AddWorkload without a namespace descriptor") }
        if proxy.enrolled.contains(uid) {
            close(fd) // already serving it (agent restart): keep the listeners as they are
            return
        }
        let netns = "/proc/self/fd/\(fd)"
        let addrs = try NetworkNamespace(path: netns).run { try podAddresses() }
        guard !addrs.isEmpty else { close(fd); throw ProxyError("pod \(uid) has no address") }
        do {
            try proxy.add(ProxyWorkload(uid: uid, netns: netns, addresses: addrs, spoofSource: true))
            namespaces.withLock { $0[uid] = fd }
        } catch { close(fd); throw error }
    }

    private func remove(_ uid: String) {
        proxy.remove(uid: uid)
        if let fd = namespaces.withLock({ $0.removeValue(forKey: uid) }) { close(fd) }
    }
}

/// The global addresses of the calling thread's namespace (not loopback, not IPv6 link-local).
func podAddresses() throws -> [IPAddress] {
    var list: UnsafeMutablePointer<ifaddrs>?
    try check("getifaddrs", getifaddrs(&list))
    defer { freeifaddrs(list) }
    var out: [IPAddress] = []
    var cur = list
    while let p = cur {
        defer { cur = p.pointee.ifa_next }
        guard let sa = p.pointee.ifa_addr else { continue }
        var storage = sockaddr_storage()
        let fam = Int32(sa.pointee.sa_family)
        guard fam == AF_INET || fam == AF_INET6 else { continue }
        withUnsafeMutableBytes(of: &storage) { dst in
            dst.copyMemory(from: UnsafeRawBufferPointer(start: sa, count: fam == AF_INET ? MemoryLayout<sockaddr_in>.size : MemoryLayout<sockaddr_in6>.size))
        }
        guard let a = SocketAddress(storage: storage) else { continue }
        let b = a.ip.bytes
        if !a.ip.isIPv6 && b[0] == 127 { continue }
        if a.ip.isIPv6 && (b == [UInt8](repeating: 0, count: 15) + [1] || (b[0] == 0xfe && b[1] & 0xc0 == 0x80)) { continue }
        out.append(a.ip)
    }
    return out
}
