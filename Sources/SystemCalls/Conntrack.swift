import CShim
import Glibc

/// ctnetlink requests (NETLINK_NETFILTER): what the iptables dataplane needs to keep a pod's
/// existing connections out of capture. Acts in the calling thread's network namespace.
public enum Conntrack {
    /// Records `connection` as an established TCP flow (original direction `from` -> `to`), with
    /// window tracking relaxed (its history was never seen), so its packets are never NEW again
    /// and the nat table's redirects, which act on a flow's first packet only, leave it alone.
    /// An existing entry for the flow is kept as it is.
    public static func insertEstablished(from: SocketAddress, to: SocketAddress) throws {
        guard from.ip.isIPv6 == to.ip.isIPv6 else { throw SystemError("conntrack: mixed families \(from) -> \(to)", code: EINVAL) }
        let family = from.ip.isIPv6 ? AF_INET6 : AF_INET
        var body: [UInt8] = [UInt8(family), 0, 0, 0] // struct nfgenmsg: family, NFNETLINK_V0, res_id 0
        body += nested(1, tuple(from, to))           // CTA_TUPLE_ORIG
        body += nested(2, tuple(to, from))           // CTA_TUPLE_REPLY
        // CTA_STATUS: IPS_SEEN_REPLY | IPS_ASSURED, and IPS_CONFIRMED, which the kernel has set by
        // then and refuses to see cleared (EBUSY).
        body += attr(3, be32(1 << 1 | 1 << 2 | 1 << 3))
        body += attr(7, be32(432_000))               // CTA_TIMEOUT: the kernel's established timeout; packets renew it
        let liberal: [UInt8] = [0x08, 0x08]          // struct nf_ct_tcp_flags: IP_CT_TCP_FLAG_BE_LIBERAL, mask
        let tcp = attr(1, [3]) + attr(4, liberal) + attr(5, liberal) // STATE ESTABLISHED, FLAGS_ORIGINAL, FLAGS_REPLY
        body += nested(4, nested(1, tcp))            // CTA_PROTOINFO { CTA_PROTOINFO_TCP { ... } }
        let type: UInt16 = 1 << 8 | 0                // NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_NEW
        do {
            try NetlinkRouting.request(type, NetlinkRouting.F_CREATE | NetlinkRouting.F_EXCL, body,
                                       "conntrack insert \(from) -> \(to)", family: 12 /* NETLINK_NETFILTER */)
        } catch let e as SystemError where e.code == EEXIST {
            return // conntrack already follows it (it saw the flow's packets): nothing new to say
        }
    }

    /// CTA_TUPLE_IP and CTA_TUPLE_PROTO for TCP `src` -> `dst`.
    static func tuple(_ src: SocketAddress, _ dst: SocketAddress) -> [UInt8] {
        let v6 = src.ip.isIPv6
        let ip = attr(v6 ? 3 : 1, src.ip.bytes) + attr(v6 ? 4 : 2, dst.ip.bytes)
        let proto = attr(1, [UInt8(IPPROTO_TCP)]) + attr(2, be16(src.port)) + attr(3, be16(dst.port))
        return nested(1, ip) + nested(2, proto)
    }

    static func nested(_ type: UInt16, _ payload: [UInt8]) -> [UInt8] { attr(type | 0x8000 /* NLA_F_NESTED */, payload) }

    static func attr(_ type: UInt16, _ payload: [UInt8]) -> [UInt8] { NetlinkRouting.bytesAttr(type, payload) }

    static func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xff)] }
    static func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8(v >> 16 & 0xff), UInt8(v >> 8 & 0xff), UInt8(v & 0xff)] }
}
