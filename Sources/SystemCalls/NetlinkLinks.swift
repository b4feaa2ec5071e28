import CShim
import Glibc

extension Netlink {
    /// An interface as a link dump reports it.
    public struct LinkInfo: Sendable, Equatable {
        /// ifindex.
        public var index: Int32
        /// Name.
        public var name: String
        /// Whether it is a loopback device (IFF_LOOPBACK).
        public var isLoopback: Bool
        /// The link-layer type (ifi_type, ARPHRD_*): 1 for Ethernet.
        public var type: UInt16 = 1
        /// Whether frames on it start with an Ethernet header (what the pod programs parse).
        public var isEthernet: Bool { type == 1 }
    }

    /// Every interface of the calling thread's namespace (RTM_GETLINK dump).
    public static func links() throws -> [LinkInfo] {
        let body = [UInt8](repeating: 0, count: 16)   // struct ifinfomsg, AF_UNSPEC: every link
        return try NetlinkRouting.dump(18, body, "dump links").compactMap(linkInfo)
    }

    /// The link a RTM_NEWLINK/RTM_GETLINK body (ifinfomsg and attributes) describes.
    static func linkInfo(_ msg: [UInt8]) -> LinkInfo? {
        guard msg.count >= 16 else { return nil }
        let type = msg[2..<4].withUnsafeBytes { $0.loadUnaligned(as: UInt16.self) }
        let index = msg[4..<8].withUnsafeBytes { $0.loadUnaligned(as: Int32.self) }
        let flags = msg[8..<12].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
        var off = 16, name = ""
        while off + 4 <= msg.count {
            let len = Int(msg[off]) | Int(msg[off + 1]) << 8
            let type = (UInt16(msg[off + 2]) | UInt16(msg[off + 3]) << 8) & 0x3fff
            if len < 4 || off + len > msg.count { break }
            if type == 3 { name = String(decoding: msg[off + 4..<off + len].prefix { $0 != 0 }, as: UTF8.self) } // IFLA_IFNAME
            off += (len + 3) & ~3
        }
        return LinkInfo(index: index, name: name, isLoopback: flags & UInt32(IFF_LOOPBACK) != 0, type: type)
    }

    /// Every local address of the calling thread's namespace, both families (RTM_GETADDR dump).
    public static func addresses() throws -> [IPAddress] {
        var out: [IPAddress] = []
        for family in [AF_INET, AF_INET6] {
            var body = [UInt8](repeating: 0, count: 8)   // struct ifaddrmsg
            body[0] = UInt8(family)
            for msg in try NetlinkRouting.dump(22, body, "dump addresses") where msg.count >= 8 && Int32(msg[0]) == family {
                if let ip = address(msg, ipv6: family == AF_INET6) { out.append(ip) }
            }
        }
        return out
    }

    /// IFA_LOCAL (IPv4: the interface's own address) or IFA_ADDRESS (IPv6) of an address message.
    static func address(_ msg: [UInt8], ipv6: Bool) -> IPAddress? {
        var off = 8
        var found: [UInt16: [UInt8]] = [:]
        while off + 4 <= msg.count {
            let len = Int(msg[off]) | Int(msg[off + 1]) << 8
            let type = (UInt16(msg[off + 2]) | UInt16(msg[off + 3]) << 8) & 0x3fff
            if len < 4 || off + len > msg.count { break }
            if type == 1 || type == 2 { found[type] = Array(msg[off + 4..<off + len]) }
            off += (len + 3) & ~3
        }
        guard let bytes = found[ipv6 ? 1 : 2] ?? found[1], bytes.count == (ipv6 ? 16 : 4) else { return nil }
        if ipv6 { return .v6(bytes) }
        return .v4(bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) })
    }

    /// A netlink socket of the calling thread's namespace that receives link and address events
    /// (RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR), non-blocking. The socket stays
    /// bound to that namespace whichever thread reads it.
    public static func eventSocket() throws -> Int32 {
        let fd = try check("socket NETLINK_ROUTE", socket(AF_NETLINK, cshim_sock_cloexec() | Int32(SOCK_RAW.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0))
        // struct sockaddr_nl: family, pad, pid (0: the kernel picks), groups.
        var addr = [UInt8](repeating: 0, count: 12)
        withUnsafeBytes(of: UInt16(AF_NETLINK)) { addr.replaceSubrange(0..<2, with: $0) }
        withUnsafeBytes(of: UInt32(0x1 | 0x10 | 0x100)) { addr.replaceSubrange(8..<12, with: $0) }
        let rc = addr.withUnsafeBytes { bind(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), 12) }
        if rc != 0 {
            let e = cshim_errno()
            close(fd)
            throw SystemError("bind netlink link events", code: e)
        }
        return fd
    }

    /// Reads every pending message of an event socket; true when a link or an address was
    /// added, changed or removed, or messages were lost (ENOBUFS: look at everything again).
    public static func drainEvents(_ fd: Int32) -> Bool {
        var changed = false
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n: Int
            do { n = try retryingEINTR("recv link events") { recv(fd, &buf, buf.count, 0) } } catch let e as SystemError where e.code == ENOBUFS {
                changed = true
                continue
            } catch { return changed } // EAGAIN: nothing more pending
            if n == 0 { return changed }
            var off = 0
            while off + 16 <= n {
                let len = Int(buf[off..<off + 4].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) })
                let type = UInt16(buf[off + 4]) | UInt16(buf[off + 5]) << 8
                if len < 16 || off + len > n { break }
                if (16...17).contains(type) || (20...21).contains(type) { changed = true } // RTM_{NEW,DEL}{LINK,ADDR}
                off += (len + 3) & ~3
            }
        }
    }
}
