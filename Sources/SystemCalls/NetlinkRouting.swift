import CShim
import Glibc

/// rtnetlink requests for policy routing: `ip rule ... fwmark M/MASK lookup T pref P` and
/// `ip route ... local default dev lo table T`, without spawning `ip`. Acts in the calling
/// thread's network namespace (callers use NetworkNamespace.run).
public enum NetlinkRouting {
    /// A fwmark rule.
    public struct MarkRule: Sendable, Equatable {
        /// Mark value.
        public var mark: UInt32
        /// Mark mask.
        public var mask: UInt32
        /// Table to look up.
        public var table: UInt32
        /// Priority.
        public var priority: UInt32
        /// Creates a rule.
        public init(mark: UInt32, mask: UInt32, table: UInt32, priority: UInt32) { self.mark = mark; self.mask = mask; self.table = table; self.priority = priority }
    }

    static let RTM_NEWROUTE: UInt16 = 24, RTM_DELROUTE: UInt16 = 25, RTM_GETROUTE: UInt16 = 26
    static let RTM_NEWRULE: UInt16 = 32, RTM_DELRULE: UInt16 = 33, RTM_GETRULE: UInt16 = 34
    static let F_REQUEST: UInt16 = 1, F_ACK: UInt16 = 4, F_DUMP: UInt16 = 0x300, F_REPLACE: UInt16 = 0x100, F_EXCL: UInt16 = 0x200, F_CREATE: UInt16 = 0x400

    /// Adds the rule unless an identical one exists.
    public static func addRule(_ r: MarkRule, ipv6: Bool) throws {
        do { try request(RTM_NEWRULE, F_CREATE | F_EXCL, ruleBody(r, ipv6: ipv6), "add rule") } catch let e as SystemError where e.code == EEXIST {}
    }

    /// Deletes every copy of the rule; no error when there is none.
    public static func deleteRule(_ r: MarkRule, ipv6: Bool) throws {
        while true {
            do { try request(RTM_DELRULE, 0, ruleBody(r, ipv6: ipv6), "delete rule") } catch let e as SystemError where e.code == ENOENT { return }
        }
    }

    /// Whether the rule exists.
    public static func hasRule(_ r: MarkRule, ipv6: Bool) throws -> Bool {
        var hdr = [UInt8](repeating: 0, count: 12)
        hdr[0] = UInt8(ipv6 ? AF_INET6 : AF_INET)
        return try dump(RTM_GETRULE, hdr, "dump rules").contains { msg in
            let a = attributes(msg, headerSize: 12)
            return a[10] == r.mark && a[16] == r.mask && a[15] == r.table && a[6] == r.priority
        }
    }

    /// Adds or replaces `local default dev lo table T`.
    public static func addLocalDefault(table: UInt32, ipv6: Bool) throws {
        try request(RTM_NEWROUTE, F_CREATE | F_REPLACE, routeBody(table: table, ipv6: ipv6), "add local route")
    }

    /// Deletes it; no error when it is not there.
    public static func deleteLocalDefault(table: UInt32, ipv6: Bool) throws {
        do { try request(RTM_DELROUTE, 0, routeBody(table: table, ipv6: ipv6), "delete local route") } catch let e as SystemError where e.code == ENOENT || e.code == ESRCH {}
    }

    /// Whether table `table` has the local default route.
    public static func hasLocalDefault(table: UInt32, ipv6: Bool) throws -> Bool {
        var hdr = [UInt8](repeating: 0, count: 12)
        hdr[0] = UInt8(ipv6 ? AF_INET6 : AF_INET)
        return try dump(RTM_GETROUTE, hdr, "dump routes").contains { msg in
            guard msg.count >= 12, msg[1] == 0, msg[7] == 2 else { return false } // dst_len 0, RTN_LOCAL
            return (attributes(msg, headerSize: 12)[15] ?? UInt32(msg[4])) == table
        }
    }

    // MARK: messages

    static func ruleBody(_ r: MarkRule, ipv6: Bool) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 12)       // struct fib_rule_hdr
        b[0] = UInt8(ipv6 ? AF_INET6 : AF_INET)
        b[4] = r.table < 256 ? UInt8(r.table) : 0       // table
        b[7] = 1                                        // FR_ACT_TO_TBL
        return b + attr(10, r.mark) + attr(16, r.mask) + attr(15, r.table) + attr(6, r.priority)
    }

    static func routeBody(table: UInt32, ipv6: Bool) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 12)       // struct rtmsg
        b[0] = UInt8(ipv6 ? AF_INET6 : AF_INET)
        b[4] = table < 256 ? UInt8(table) : 252         // RT_TABLE_UNSPEC-ish; RTA_TABLE carries it
        b[5] = 3                                        // RTPROT_BOOT
        b[6] = 254                                      // RT_SCOPE_HOST
        b[7] = 2                                        // RTN_LOCAL
        return b + attr(15, table) + attr(4, UInt32(if_nametoindex("lo")))
    }

    static func attr(_ type: UInt16, _ value: UInt32) -> [UInt8] {
        withUnsafeBytes(of: UInt16(8)) { Array($0) } + withUnsafeBytes(of: type) { Array($0) } + withUnsafeBytes(of: value) { Array($0) }
    }

    /// An attribute carrying `value` as it is, padded to 4 bytes.
    static func bytesAttr(_ type: UInt16, _ value: [UInt8]) -> [UInt8] {
        let len = UInt16(4 + value.count)
        var a = withUnsafeBytes(of: len) { Array($0) } + withUnsafeBytes(of: type) { Array($0) } + value
        while a.count % 4 != 0 { a.append(0) }
        return a
    }

    static func attributes(_ msg: [UInt8], headerSize: Int) -> [UInt16: UInt32] {
        var out: [UInt16: UInt32] = [:]
        var off = headerSize
        while off + 4 <= msg.count {
            let len = Int(msg[off]) | Int(msg[off + 1]) << 8
            let type = (UInt16(msg[off + 2]) | UInt16(msg[off + 3]) << 8) & 0x3fff
            if len < 4 { break }
            if len >= 8 { out[type] = msg[off + 4..<off + 8].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) } }
            off += (len + 3) & ~3
        }
        return out
    }

    // MARK: transport

    /// A netlink socket of the calling thread's namespace: rtnetlink unless `family` names
    /// another (NETLINK_SOCK_DIAG 4, NETLINK_NETFILTER 12).
    static func open(family: Int32 = 0) throws -> Int32 {
        try check("socket AF_NETLINK \(family)", socket(AF_NETLINK, cshim_sock_cloexec() | Int32(SOCK_RAW.rawValue), family))
    }

    static func header(_ type: UInt16, _ flags: UInt16, _ body: [UInt8]) -> [UInt8] {
        let len = UInt32(16 + body.count)
        return withUnsafeBytes(of: len) { Array($0) } + withUnsafeBytes(of: type) { Array($0) } + withUnsafeBytes(of: flags) { Array($0) }
            + [1, 0, 0, 0, 0, 0, 0, 0] + body
    }

    /// Sends one request with NLM_F_ACK and throws the kernel's error.
    static func request(_ type: UInt16, _ flags: UInt16, _ body: [UInt8], _ what: String, family: Int32 = 0) throws {
        let fd = try open(family: family)
        defer { close(fd) }
        let msg = header(type, F_REQUEST | F_ACK | flags, body)
        try check("netlink \(what)", send(fd, msg, msg.count, 0))
        var buf = [UInt8](repeating: 0, count: 8192)
        let n = try retryingEINTR("netlink \(what)") { recv(fd, &buf, buf.count, 0) }
        guard n >= 20, buf[4] == 2 else { return }       // NLMSG_ERROR
        let err = buf[16..<20].withUnsafeBytes { $0.loadUnaligned(as: Int32.self) }
        if err != 0 { throw SystemError("netlink \(what)", code: -err) }
    }

    /// A dump request; returns each message's body (after the 16-byte header).
    static func dump(_ type: UInt16, _ body: [UInt8], _ what: String, family: Int32 = 0) throws -> [[UInt8]] {
        let fd = try open(family: family)
        defer { close(fd) }
        let msg = header(type, F_REQUEST | F_DUMP, body)
        try check("netlink \(what)", send(fd, msg, msg.count, 0))
        var out: [[UInt8]] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = try retryingEINTR("netlink \(what)") { recv(fd, &buf, buf.count, 0) }
            var off = 0
            while off + 16 <= n {
                let len = Int(buf[off..<off + 4].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) })
                let t = UInt16(buf[off + 4]) | UInt16(buf[off + 5]) << 8
                if t == 3 { return out }                   // NLMSG_DONE
                if t == 2 {                                // NLMSG_ERROR: its errno, negated
                    let err = off + 20 <= n ? buf[off + 16..<off + 20].withUnsafeBytes { $0.loadUnaligned(as: Int32.self) } : 0
                    throw SystemError("netlink \(what)", code: err < 0 ? -err : EIO)
                }
                if len < 16 { return out }
                out.append(Array(buf[off + 16..<min(off + len, n)]))
                off += (len + 3) & ~3
            }
        }
    }
}

extension NetlinkRouting {
    static let RTM_GETQDISC: UInt16 = 38

    /// Whether `ifindex` has a clsact qdisc (RTM_GETQDISC dump, TCA_KIND "clsact"), so enrolment
    /// can record whether it will create one before it does.
    public static func hasClsact(ifindex: Int32) throws -> Bool {
        var body = [UInt8](repeating: 0, count: 20)   // struct tcmsg, all zero: every qdisc
        withUnsafeBytes(of: ifindex) { body.replaceSubrange(4..<8, with: $0) }
        return try dump(RTM_GETQDISC, body, "dump qdiscs").contains { msg in
            guard msg.count >= 20, msg[4..<8].withUnsafeBytes({ $0.loadUnaligned(as: Int32.self) }) == ifindex else { return false }
            return kind(msg, headerSize: 20) == "clsact"
        }
    }

    /// The TCA_KIND (1) string attribute of a tc message.
    static func kind(_ msg: [UInt8], headerSize: Int) -> String? {
        var off = headerSize
        while off + 4 <= msg.count {
            let len = Int(msg[off]) | Int(msg[off + 1]) << 8
            let type = (UInt16(msg[off + 2]) | UInt16(msg[off + 3]) << 8) & 0x3fff
            if len < 4 || off + len > msg.count { return nil }
            if type == 1 { return String(decoding: msg[off + 4..<off + len].prefix { $0 != 0 }, as: UTF8.self) }
            off += (len + 3) & ~3
        }
        return nil
    }
}
