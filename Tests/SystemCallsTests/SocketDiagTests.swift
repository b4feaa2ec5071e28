import Foundation
import Glibc
import SystemCalls
import Testing

/// The kernel's own answers about sockets and conntrack, read and written in fresh network
/// namespaces that disappear with their thread.
@Suite("socket diagnostics and conntrack")
struct SocketDiagTests {
    /// Brings the calling thread's namespace's loopback up (`ip` inherits the thread's namespace).
    private func loopbackUp() throws { _ = try Command.run("ip", ["link", "set", "lo", "up"]) }

    @Test("sock_diag lists both ends of a connection and the listener, with the cookies SO_COOKIE gives")
    func connectionsAndCookies() throws {
        try NetworkNamespace.runInFreshNamespace {
            try loopbackUp()
            for any in ["127.0.0.1", "::1"] {
                let listener = try Socket.listening(on: SocketAddress(IPAddress(any)!, 0))
                defer { listener.close() }
                let client = try Socket.connected(to: try listener.localAddress())
                defer { client.close() }
                let server = try listener.accept()
                defer { server.close() }
                let seen = try SocketDiag.tcp(states: SocketDiag.connectedStates + [SocketDiag.listenState])
                let mine = try client.cookie(), theirs = try server.cookie()
                let c = seen.first { $0.cookie == mine }
                let local = try client.localAddress(), remote = try client.peerAddress()
                #expect(c?.local == local && c?.remote == remote && c?.state == 1, "\(String(describing: c))")
                #expect(seen.contains { $0.cookie == theirs && $0.local == (try? server.localAddress()) })
                #expect(seen.contains { $0.state == SocketDiag.listenState && $0.local.port == (try? listener.localAddress().port) })
                #expect(try SocketDiag.tcp(states: [SocketDiag.listenState]).allSatisfy { $0.state == SocketDiag.listenState })
            }
        }
    }

    @Test("a v4-mapped IPv6 socket reads as IPv4")
    func mapped() throws {
        try NetworkNamespace.runInFreshNamespace {
            try loopbackUp()
            let listener = try Socket(tcp: AF_INET6)
            defer { listener.close() }
            try listener.setV6Only(false)
            try listener.bind(SocketAddress(IPAddress("::")!, 0))
            try listener.listen()
            let port = try listener.localAddress().port
            let client = try Socket.connected(to: SocketAddress(IPAddress("127.0.0.1")!, port))
            defer { client.close() }
            let server = try listener.accept()
            defer { server.close() }
            let cookie = try server.cookie()
            let seen = try SocketDiag.tcp(states: SocketDiag.connectedStates).first { $0.cookie == cookie }
            #expect(seen?.local == SocketAddress(IPAddress("127.0.0.1")!, port), "\(String(describing: seen))")
        }
    }

    @Test("conntrack takes an established flow once, in both families; a second insert is no error")
    func conntrackInsert() throws {
        try NetworkNamespace.runInFreshNamespace {
            let flows = [("10.1.1.1", "10.1.1.2"), ("fd00::1", "fd00::2")].map {
                (SocketAddress(IPAddress($0.0)!, 40_000), SocketAddress(IPAddress($0.1)!, 80))
            }
            // The first insert loads nf_conntrack if nothing has yet; the namespace is new, so its
            // table holds exactly what the test put there.
            for (from, to) in flows {
                try Conntrack.insertEstablished(from: from, to: to)
                try Conntrack.insertEstablished(from: from, to: to)
            }
            let table = "/proc/thread-self/net/nf_conntrack"
            guard FileManager.default.fileExists(atPath: table) else { Issue.record("cannot check: no \(table) (nf_conntrack without procfs)"); return }
            let lines = try String(contentsOfFile: table, encoding: .utf8).split(separator: "\n")
            #expect(lines.count == 2, "\(lines)")
            for line in lines {
                #expect(line.contains(" tcp ") && line.contains("ESTABLISHED") && line.contains("sport=40000 dport=80") && line.contains("[ASSURED]"), "\(line)")
            }
            #expect(lines.contains { $0.contains("src=10.1.1.1 dst=10.1.1.2") && $0.contains("src=10.1.1.2 dst=10.1.1.1") })
            #expect(throws: SystemError.self) { try Conntrack.insertEstablished(from: flows[0].0, to: flows[1].1) }
        }
    }
}
