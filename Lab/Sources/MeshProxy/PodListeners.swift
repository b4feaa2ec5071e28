import Foundation
import Glibc
import SystemCalls

/// The proxy's listening sockets inside one pod, with their accept loops.
final class PodListeners: Sendable {
    private let sockets: [Socket]
    private let dns: DNSServer

    private init(sockets: [Socket], dns: DNSServer) { self.sockets = sockets; self.dns = dns }

    /// Opens 15001/15006/15008 for each address family the pod has, and the DNS listener (UDP and
    /// TCP) on the pod's loopback addresses. Runs in the pod's namespace
    /// on a dedicated thread; the accept threads are started from there, so they and the handler
    /// threads they start live in the pod's namespace too (new threads inherit it).
    static func open(_ workload: ProxyWorkload, proxy: MeshProxy) throws -> PodListeners {
        try NetworkNamespace(path: workload.netns).run {
            var sockets: [Socket] = []
            let families = Set(workload.addresses.map(\.isIPv6))
            for v6 in families.sorted(by: { !$0 && $1 }) {
                let any = IPAddress(v6 ? "::" : "0.0.0.0")!
                for port in [proxy.ports.outbound, proxy.ports.inbound, proxy.ports.tunnel] {
                    // SO_REUSEPORT: a proxy that replaces this one listens beside it while it drains.
                    // Only on Linux 6.5+: before, bpf_sk_assign refuses reuseport sockets.
                    sockets.append(try Socket.listening(on: SocketAddress(any, port), transparent: true, mark: proxy.ports.mark,
                                                        reusePort: MeshProxy.reusePort))
                }
            }
            let loopback = families.map { SocketAddress(IPAddress($0 ? "::1" : "127.0.0.1")!, proxy.ports.dns) }
            let dns = try DNSServer(addresses: loopback, responder: proxy.dnsResponder, mark: proxy.ports.mark) { client, transport, by in
                proxy.recordDNS(workload, client: client, transport: transport, by: by)
            }
            for s in sockets {
                let port = (try? s.localAddress().port) ?? 0
                let t = Thread { PodListeners.acceptLoop(s, port: port, workload: workload, proxy: proxy) }
                t.stackSize = 256 * 1024
                t.start()
            }
            return PodListeners(sockets: sockets, dns: dns)
        }
    }

    private static func acceptLoop(_ listener: Socket, port: UInt16, workload: ProxyWorkload, proxy: MeshProxy) {
        while true {
            let conn: Socket
            do { conn = try listener.accept() } catch {
                if let e = error as? SystemError, [EBADF, EINVAL, ENOTSOCK].contains(e.code) { return }
                usleep(1000)
                continue
            }
            let t = Thread { proxy.handle(conn, listener: port, workload: workload) }
            t.stackSize = 256 * 1024
            t.start()
        }
    }

    /// Stops accepting (shutdown wakes the accept loops), then closes.
    func close() {
        for s in sockets { _ = shutdown(s.fd, Int32(SHUT_RDWR)) }
        // Give the accept loops a moment to see the shutdown before the descriptors are reused.
        usleep(1000)
        for s in sockets { s.close() }
        dns.close()
    }
}
