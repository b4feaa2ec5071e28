import CShim
import Glibc

/// Minimal rtnetlink: what the dataplanes need to know about links, without spawning `ip`.
/// Acts in the calling thread's network namespace.
public enum Netlink {
    /// An interface's index and the index of its peer/parent (IFLA_LINK: for a veth, the other
    /// end's ifindex in the peer's namespace).
    public struct Link: Sendable {
        /// ifindex.
        public var index: Int32
        /// IFLA_LINK, or the link's own index when it has none.
        public var linkIndex: Int32
    }

    /// RTM_GETLINK for `name`.
    public static func link(named name: String) throws -> Link {
        let fd = try check("socket NETLINK_ROUTE", socket(AF_NETLINK, cshim_sock_cloexec() | Int32(SOCK_RAW.rawValue), 0 /* NETLINK_ROUTE */))
        defer { close(fd) }
        let nameBytes = Array(name.utf8) + [0]
        let attrLen = 4 + nameBytes.count
        let total = 16 + 16 + align4(attrLen)
        var msg = [UInt8](repeating: 0, count: total)
        put32(&msg, 0, UInt32(total))          // nlmsg_len
        put16(&msg, 4, 18)                     // RTM_GETLINK
        put16(&msg, 6, 1)                      // NLM_F_REQUEST
        put32(&msg, 8, 1)                      // seq
        msg[16] = UInt8(AF_UNSPEC)             // ifinfomsg.ifi_family
        put16(&msg, 32, UInt16(attrLen))       // rta_len
        put16(&msg, 34, 3)                     // IFLA_IFNAME
        msg.replaceSubrange(36..<36 + nameBytes.count, with: nameBytes)
        try check("netlink send", send(fd, msg, msg.count, 0))
        var buf = [UInt8](repeating: 0, count: 16384)
        let n = try retryingEINTR("netlink recv") { recv(fd, &buf, buf.count, 0) }
        guard n >= 32 else { throw SystemError("netlink: short answer for \(name)", code: EIO) }
        let type = get16(buf, 4)
        if type == 2 { // NLMSG_ERROR
            let err = Int32(bitPattern: get32(buf, 16))
            throw SystemError("RTM_GETLINK \(name)", code: -err)
        }
        let index = Int32(bitPattern: get32(buf, 20))
        var link = index
        var off = 32
        let end = min(Int(get32(buf, 0)), n)
        while off + 4 <= end {
            let len = Int(get16(buf, off)), atype = get16(buf, off + 2) & 0x3fff
            if len < 4 { break }
            if atype == 5 && len >= 8 { link = Int32(bitPattern: get32(buf, off + 4)) } // IFLA_LINK
            off += align4(len)
        }
        return Link(index: index, linkIndex: link)
    }

    private static func align4(_ n: Int) -> Int { (n + 3) & ~3 }
    private static func put16(_ b: inout [UInt8], _ o: Int, _ v: UInt16) { withUnsafeBytes(of: v) { b.replaceSubrange(o..<o + 2, with: $0) } }
    private static func put32(_ b: inout [UInt8], _ o: Int, _ v: UInt32) { withUnsafeBytes(of: v) { b.replaceSubrange(o..<o + 4, with: $0) } }
    private static func get16(_ b: [UInt8], _ o: Int) -> UInt16 { b[o..<o + 2].withUnsafeBytes { $0.loadUnaligned(as: UInt16.self) } }
    private static func get32(_ b: [UInt8], _ o: Int) -> UInt32 { b[o..<o + 4].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) } }
}
