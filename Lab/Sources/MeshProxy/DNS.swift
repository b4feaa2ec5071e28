import Foundation
import Glibc
import SystemCalls

/// The one question of a DNS query (RFC 1035 4.1.2), as the lab's servers read it.
public struct DNSQuestion: Sendable, Equatable {
    /// The name, lower-cased, with its trailing dot (`www.mesh.lab.`).
    public var name: String
    /// QTYPE (1: A, 28: AAAA).
    public var type: UInt16
    /// Where the question ends in the message.
    var end: Int
}

/// Reading queries and writing answers: the subset of RFC 1035 the lab needs (one question, A and
/// AAAA answers, no compression on input names beyond what the question holds).
public enum DNSMessage {
    /// A record type.
    public static let typeA: UInt16 = 1
    /// AAAA record type.
    public static let typeAAAA: UInt16 = 28

    /// The question of `query`, or nil when it is not a well-formed one-question query.
    public static func question(_ query: [UInt8]) -> DNSQuestion? {
        guard query.count >= 12, query[2] & 0x80 == 0, query[4] == 0, query[5] == 1 else { return nil }
        var labels: [String] = [], i = 12
        while i < query.count {
            let n = Int(query[i])
            if n == 0 { break }
            guard n < 64, i + 1 + n <= query.count else { return nil }
            labels.append(String(decoding: query[(i + 1)..<(i + 1 + n)], as: UTF8.self).lowercased())
            i += 1 + n
        }
        guard i + 5 <= query.count else { return nil }
        let type = UInt16(query[i + 1]) << 8 | UInt16(query[i + 2])
        return DNSQuestion(name: labels.joined(separator: ".") + ".", type: type, end: i + 5)
    }

    /// The answer to `query` (its question echoed) with `addresses` of the asked type, and `rcode`.
    public static func answer(to query: [UInt8], _ q: DNSQuestion, addresses: [IPAddress], rcode: UInt8 = 0) -> [UInt8] {
        let matching = addresses.filter { $0.isIPv6 == (q.type == typeAAAA) && (q.type == typeA || q.type == typeAAAA) }
        var out = Array(query[0..<2])
        out += [0x84 | (query[2] & 0x01), 0x80 | rcode] // QR, AA, RD copied; RA, rcode
        out += [0, 1] + be16(UInt16(matching.count)) + [0, 0, 0, 0]
        out += query[12..<q.end]
        for a in matching {
            out += [0xc0, 12] + be16(q.type) + [0, 1] + [0, 0, 0, 30] + be16(UInt16(a.bytes.count)) + a.bytes
        }
        return out
    }

    private static func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xff)] }
}

/// Answers DNS queries: names under `zone` from its own addresses, everything else by forwarding
/// to `upstream` (from a socket with `mark`, as ztunnel forwards, so capture lets it through), or
/// REFUSED without one. An empty zone answers every name.
public final class DNSResponder: Sendable {
    /// The zone answered here, with its trailing dot (`mesh.lab.`); empty: every name.
    public let zone: String
    /// The addresses every name of the zone has.
    public let addresses: [IPAddress]
    /// Where other names go.
    public let upstream: SocketAddress?
    /// SO_MARK on forwarding sockets.
    public let mark: UInt32?

    /// Creates a responder.
    public init(zone: String, addresses: [IPAddress], upstream: SocketAddress? = nil, mark: UInt32? = nil) {
        self.zone = zone; self.addresses = addresses; self.upstream = upstream; self.mark = mark
    }

    /// The answer to `query` and who gave it (`zone` or the upstream's address); nil for what is
    /// not a query.
    public func respond(_ query: [UInt8]) -> (answer: [UInt8], by: String)? {
        guard let q = DNSMessage.question(query) else { return nil }
        if zone.isEmpty || q.name == zone || q.name.hasSuffix("." + zone) {
            return (DNSMessage.answer(to: query, q, addresses: addresses), "zone")
        }
        guard let upstream else { return (DNSMessage.answer(to: query, q, addresses: [], rcode: 5), "refused") }
        do { return (try forward(query, to: upstream), upstream.description) } catch {
            return (DNSMessage.answer(to: query, q, addresses: [], rcode: 2), "servfail: \(error)")
        }
    }

    private func forward(_ query: [UInt8], to upstream: SocketAddress) throws -> [UInt8] {
        let s = try Socket(udp: upstream.ip.family)
        if let mark { try s.setMark(mark) }
        try s.setTimeout(seconds: 2)
        try s.send(query, to: upstream)
        return try s.receive().bytes
    }
}

/// A DNS server on UDP and TCP sockets (TCP: two-byte length before each message), a thread per
/// socket and per TCP connection. `onQuery` hears each answered query: client, transport, who answered.
public final class DNSServer: Sendable {
    private let sockets: [(socket: Socket, tcp: Bool)]

    /// Binds UDP and TCP on each of `addresses` (SO_MARK `mark` on every socket) and starts serving.
    public init(addresses: [SocketAddress], responder: DNSResponder, mark: UInt32?,
                onQuery: @escaping @Sendable (_ client: SocketAddress, _ transport: String, _ by: String) -> Void) throws {
        var sockets: [(Socket, Bool)] = []
        for a in addresses {
            let udp = try Socket(udp: a.ip.family)
            if a.ip.isIPv6 { try udp.setV6Only(true) }
            if let mark { try udp.setMark(mark) }
            try udp.setReuseAddress()
            if MeshProxy.reusePort { try udp.setReusePort() } // beside a proxy this one replaces
            try udp.bind(a)
            sockets.append((udp, false))
            sockets.append((try Socket.listening(on: a, mark: mark, reusePort: MeshProxy.reusePort), true))
        }
        self.sockets = sockets
        for (s, tcp) in sockets {
            let t = Thread { tcp ? Self.acceptLoop(s, responder, onQuery) : Self.udpLoop(s, responder, onQuery) }
            t.stackSize = 256 * 1024
            t.start()
        }
    }

    private static func udpLoop(_ s: Socket, _ responder: DNSResponder, _ onQuery: @escaping @Sendable (SocketAddress, String, String) -> Void) {
        while true {
            guard let (query, client) = try? s.receive() else { if s.fd < 0 { return }; usleep(1000); continue }
            guard let (answer, by) = responder.respond(query) else { continue }
            try? s.send(answer, to: client)
            onQuery(client, "udp", by)
        }
    }

    private static func acceptLoop(_ listener: Socket, _ responder: DNSResponder, _ onQuery: @escaping @Sendable (SocketAddress, String, String) -> Void) {
        while let conn = try? listener.accept() {
            let t = Thread {
                defer { conn.close() }
                let client = (try? conn.peerAddress()) ?? SocketAddress(IPAddress("0.0.0.0")!, 0)
                try? conn.setTimeout(seconds: 5)
                while let header = try? conn.readExactly(2), header.count == 2,
                      let query = try? conn.readExactly(Int(header[0]) << 8 | Int(header[1])),
                      let (answer, by) = responder.respond(query) {
                    guard (try? conn.writeAll([UInt8(answer.count >> 8), UInt8(answer.count & 0xff)] + answer)) != nil else { return }
                    onQuery(client, "tcp", by)
                }
            }
            t.stackSize = 256 * 1024
            t.start()
        }
    }

    /// Stops serving and closes the sockets.
    public func close() {
        for (s, _) in sockets { _ = shutdown(s.fd, Int32(SHUT_RDWR)) }
        usleep(1000)
        for (s, _) in sockets { s.close() }
    }
}

extension Socket {
    /// Reads exactly `count` bytes; fewer only at end of stream.
    func readExactly(_ count: Int) throws -> [UInt8] {
        var out: [UInt8] = []
        while out.count < count {
            let chunk = try read(max: count - out.count)
            if chunk.isEmpty { break }
            out += chunk
        }
        return out
    }
}
