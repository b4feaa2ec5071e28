import CShim
import Glibc

/// The TCP connections of the calling thread's network namespace, as the kernel's socket
/// diagnostics report them (NETLINK_SOCK_DIAG, what `ss` reads): enough to recognise a
/// connection later by its socket cookie, or to describe it to conntrack.
public enum SocketDiag {
    /// One TCP socket.
    public struct Connection: Sendable, Hashable {
        /// The local address (IPv4 for an IPv6 socket talking IPv4 through a v4-mapped address).
        public var local: SocketAddress
        /// The peer.
        public var remote: SocketAddress
        /// The kernel's TCP state (1 established, 10 listen, ...).
        public var state: UInt8
        /// The socket's cookie: what `bpf_get_socket_cookie` returns for it; never reused.
        public var cookie: UInt64

        /// Describes a socket.
        public init(local: SocketAddress, remote: SocketAddress, state: UInt8, cookie: UInt64) {
            self.local = local; self.remote = remote; self.state = state; self.cookie = cookie
        }
    }

    /// TCP states of a connection that carries data or is closing; not listeners, handshakes in
    /// progress or TIME_WAIT.
    public static let connectedStates: [UInt8] = [1, 4, 5, 8, 9, 11] // ESTABLISHED, FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK, CLOSING

    /// The listening state.
    public static let listenState: UInt8 = 10

    /// Every state in which a socket still owns its connection: all but TIME_WAIT (6), which only
    /// answers retransmissions, and CLOSE (7).
    public static let liveStates: [UInt8] = [1, 2, 3, 4, 5, 8, 9, 10, 11, 12]

    /// Every TCP socket of both families in one of `states`.
    public static func tcp(states: [UInt8]) throws -> [Connection] {
        var out: [Connection] = []
        for family in [AF_INET, AF_INET6] {
            let mask = states.reduce(UInt32(0)) { $0 | (1 << UInt32($1)) }
            for msg in try NetlinkRouting.dump(20 /* SOCK_DIAG_BY_FAMILY */, request(family: family, states: mask), "sock_diag dump", family: 4) {
                if let c = connection(msg) { out.append(c) }
            }
        }
        return out
    }

    /// struct inet_diag_req_v2 for every TCP socket of `family` in `states` (a bit per state).
    static func request(family: Int32, states: UInt32) -> [UInt8] {
        var body = [UInt8](repeating: 0, count: 56)
        body[0] = UInt8(family)
        body[1] = UInt8(IPPROTO_TCP)
        withUnsafeBytes(of: states) { body.replaceSubrange(4..<8, with: $0) }
        return body
    }

    /// The connection a struct inet_diag_msg describes.
    static func connection(_ msg: [UInt8]) -> Connection? {
        guard msg.count >= 72 else { return nil }
        let family = Int32(msg[0])
        let sport = UInt16(msg[4]) << 8 | UInt16(msg[5]), dport = UInt16(msg[6]) << 8 | UInt16(msg[7])
        guard let src = address(Array(msg[8..<24]), family: family), let dst = address(Array(msg[24..<40]), family: family) else { return nil }
        let low = msg[44..<48].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
        let high = msg[48..<52].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
        return Connection(local: SocketAddress(src, sport), remote: SocketAddress(dst, dport), state: msg[1],
                          cookie: UInt64(high) << 32 | UInt64(low))
    }

    /// An address field of inet_diag_sockid (16 bytes); a v4-mapped IPv6 address reads as IPv4.
    static func address(_ b: [UInt8], family: Int32) -> IPAddress? {
        if family == AF_INET { return .v4(b[0..<4].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }) }
        guard family == AF_INET6 else { return nil }
        if b[0..<10].allSatisfy({ $0 == 0 }) && b[10] == 0xff && b[11] == 0xff {
            return .v4(b[12..<16].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) })
        }
        return .v6(b)
    }
}
