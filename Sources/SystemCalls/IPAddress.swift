import Glibc

/// An IPv4 or IPv6 address, parsed and printed with inet_pton/inet_ntop.
public enum IPAddress: Hashable, Sendable, CustomStringConvertible, Codable {
    case v4(UInt32)            // network byte order
    case v6([UInt8])           // 16 bytes

    /// Parses dotted-quad or IPv6 text; nil when it is neither.
    public init?(_ text: String) {
        // inet_pton stops at a NUL: "10.0.0.1\0junk" must not read as 10.0.0.1.
        guard text.utf8.count <= 64, !text.utf8.contains(0) else { return nil }
        var a4 = in_addr()
        if inet_pton(AF_INET, text, &a4) == 1 { self = .v4(a4.s_addr); return }
        var a6 = in6_addr()
        if inet_pton(AF_INET6, text, &a6) == 1 {
            self = .v6(withUnsafeBytes(of: &a6) { Array($0) })
            return
        }
        return nil
    }

    /// True for IPv6.
    public var isIPv6: Bool { if case .v6 = self { return true } else { return false } }

    /// The address family constant.
    public var family: Int32 { isIPv6 ? AF_INET6 : AF_INET }

    /// True for addresses no pod can own: unspecified, loopback, multicast, IPv4 broadcast.
    public var isReserved: Bool {
        let b = bytes
        if b.allSatisfy({ $0 == 0 }) { return true }
        if isIPv6 { return b == [UInt8](repeating: 0, count: 15) + [1] || b[0] == 0xff }
        return b[0] == 127 || b[0] >= 224
    }

    /// True for link-local addresses (169.254.0.0/16, fe80::/10), which no pod is reached by.
    public var isLinkLocal: Bool {
        let b = bytes
        return isIPv6 ? (b[0] == 0xfe && b[1] & 0xc0 == 0x80) : (b[0] == 169 && b[1] == 254)
    }

    /// Bit length of the address: 32 or 128.
    public var bitLength: Int { isIPv6 ? 128 : 32 }

    /// Text form.
    public var description: String {
        var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        switch self {
        case .v4(let raw):
            var a = in_addr(s_addr: raw)
            inet_ntop(AF_INET, &a, &buf, socklen_t(buf.count))
        case .v6(let bytes):
            var a = in6_addr()
            withUnsafeMutableBytes(of: &a) { $0.copyBytes(from: bytes) }
            inet_ntop(AF_INET6, &a, &buf, socklen_t(buf.count))
        }
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The address as bytes in network order.
    public var bytes: [UInt8] {
        switch self {
        case .v4(let raw): return withUnsafeBytes(of: raw) { Array($0) }
        case .v6(let b): return b
        }
    }

    /// Encodes as its text form.
    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }

    /// Decodes from its text form.
    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        let text = try c.decode(String.self)
        guard let ip = IPAddress(text) else {
            throw DecodingError.dataCorruptedError(in: c, debugDescription: "not an IP address: \(text)")
        }
        self = ip
    }
}

/// An IP address and a port.
public struct SocketAddress: Hashable, Sendable, CustomStringConvertible {
    /// The IP.
    public var ip: IPAddress
    /// The port, host order.
    public var port: UInt16

    /// Creates an address.
    public init(_ ip: IPAddress, _ port: UInt16) { self.ip = ip; self.port = port }

    /// Parses `1.2.3.4:80` or `[fd00::1]:80`.
    public init?(parsing text: String) {
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard let ip = IPAddress(host) else { return nil }
        self.init(ip, port)
    }

    /// `1.2.3.4:80` or `[fd00::1]:80`.
    public var description: String { ip.isIPv6 ? "[\(ip)]:\(port)" : "\(ip):\(port)" }

    /// Calls `body` with this address as a sockaddr.
    public func withSockaddr<T>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws -> T) rethrows -> T {
        switch ip {
        case .v4(let raw):
            var sa = sockaddr_in()
            sa.sin_family = sa_family_t(AF_INET)
            sa.sin_port = port.bigEndian
            sa.sin_addr = in_addr(s_addr: raw)
            return try withUnsafePointer(to: &sa) {
                try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        case .v6(let bytes):
            var sa = sockaddr_in6()
            sa.sin6_family = sa_family_t(AF_INET6)
            sa.sin6_port = port.bigEndian
            withUnsafeMutableBytes(of: &sa.sin6_addr) { $0.copyBytes(from: bytes) }
            return try withUnsafePointer(to: &sa) {
                try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
        }
    }

    /// Reads a sockaddr_storage filled by the kernel; nil for other families.
    public init?(storage: sockaddr_storage) {
        var s = storage
        switch Int32(s.ss_family) {
        case AF_INET:
            let sin = withUnsafeBytes(of: &s) { $0.load(as: sockaddr_in.self) }
            self.init(.v4(sin.sin_addr.s_addr), UInt16(bigEndian: sin.sin_port))
        case AF_INET6:
            let sin6 = withUnsafeBytes(of: &s) { $0.load(as: sockaddr_in6.self) }
            var a = sin6.sin6_addr
            let bytes = withUnsafeBytes(of: &a) { Array($0) }
            // An IPv4-mapped IPv6 address is reported as IPv4.
            if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xff && bytes[11] == 0xff {
                let raw = bytes[12..<16].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
                self.init(.v4(raw), UInt16(bigEndian: sin6.sin6_port))
            } else {
                self.init(.v6(bytes), UInt16(bigEndian: sin6.sin6_port))
            }
        default:
            return nil
        }
    }
}

/// An IP prefix such as `10.244.1.0/24`.
public struct IPPrefix: Hashable, Sendable, CustomStringConvertible {
    /// The address.
    public var ip: IPAddress
    /// The prefix length.
    public var length: Int
    /// Parses `a.b.c.d/n` or `x::/n`; a bare address gets the full length.
    public init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        guard let first = parts.first, let ip = IPAddress(first) else { return nil }
        let len = parts.count == 2 ? Int(parts[1]) : ip.bitLength
        guard let len, len >= 0, len <= ip.bitLength else { return nil }
        self.ip = ip
        self.length = len
    }
    /// `ip/len`.
    public var description: String { "\(ip)/\(length)" }
}
