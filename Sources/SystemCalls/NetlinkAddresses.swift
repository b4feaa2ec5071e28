import CShim
import Glibc

extension Netlink {
    /// Adds `ip` as a host address (/32, /128) to interface `index`; IPv6 without duplicate
    /// address detection, so it is usable at once. No error when it is already there.
    public static func addHostAddress(_ ip: IPAddress, index: Int32) throws {
        do { try NetlinkRouting.request(20, NetlinkRouting.F_CREATE | NetlinkRouting.F_EXCL, addressBody(ip, index: index), "add address \(ip)") } // RTM_NEWADDR
        catch let e as SystemError where e.code == EEXIST {}
    }

    /// Removes `ip` from interface `index`; no error when it is not there.
    public static func deleteHostAddress(_ ip: IPAddress, index: Int32) throws {
        do { try NetlinkRouting.request(21, 0, addressBody(ip, index: index), "delete address \(ip)") } // RTM_DELADDR
        catch let e as SystemError where e.code == EADDRNOTAVAIL || e.code == ENODEV {}
    }

    /// The addresses on interface `index`, both families.
    public static func addresses(index: Int32) throws -> [IPAddress] {
        var out: [IPAddress] = []
        for family in [AF_INET, AF_INET6] {
            var body = [UInt8](repeating: 0, count: 8)
            body[0] = UInt8(family)
            for msg in try NetlinkRouting.dump(22, body, "dump addresses") where msg.count >= 8 && Int32(msg[0]) == family {
                guard msg[4..<8].withUnsafeBytes({ $0.loadUnaligned(as: Int32.self) }) == index else { continue }
                if let ip = address(msg, ipv6: family == AF_INET6) { out.append(ip) }
            }
        }
        return out
    }

    /// struct ifaddrmsg and IFA_LOCAL/IFA_ADDRESS (and IFA_FLAGS nodad for IPv6).
    private static func addressBody(_ ip: IPAddress, index: Int32) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 8)
        b[0] = UInt8(ip.family)
        b[1] = UInt8(ip.bitLength)
        b[3] = 0 // RT_SCOPE_UNIVERSE: a source for connections that leave the node
        withUnsafeBytes(of: UInt32(bitPattern: index)) { b.replaceSubrange(4..<8, with: $0) }
        b += NetlinkRouting.bytesAttr(2, ip.bytes) + NetlinkRouting.bytesAttr(1, ip.bytes)                 // IFA_LOCAL, IFA_ADDRESS
        if ip.isIPv6 { b += NetlinkRouting.attr(8, 0x02) }                   // IFA_FLAGS: IFA_F_NODAD
        return b
    }

}
