import Foundation
import SystemCalls

/// Crafted Ethernet/IP/TCP packets with correct checksums, for BPF_PROG_TEST_RUN.
struct Packet {
    var src: SocketAddress
    var dst: SocketAddress
    var flags: UInt8 = 0x02            // SYN
    var proto: UInt8 = 6               // TCP
    var fragment = false
    /// IPv6 extension headers before the transport, by type (44: a fragment header with ``fragmentOffset``).
    var extHeaders: [UInt8] = []
    /// Offset (in 8-byte units) of the IPv6 fragment header, or of the IPv4 fragment when ``fragment``.
    var fragmentOffset: UInt16 = 0
    /// IPv4 option bytes (a multiple of 4, at most 40).
    var ipv4Options = 0
    /// IPv4 header length override (in words), for malformed headers.
    var ihl: UInt8?
    /// TCP data offset (in words).
    var tcpDataOffset: UInt8 = 5
    /// An 802.1Q tag between the MACs and the IP header.
    var vlan: UInt16?
    /// Cuts the frame to this many bytes.
    var truncate: Int?
    var srcMAC: [UInt8] = [0x02, 0, 0, 0, 0, 0x01]
    var dstMAC: [UInt8] = [0x02, 0, 0, 0, 0, 0x02]

    init(_ src: String, _ dst: String, flags: UInt8 = 0x02) {
        self.src = SocketAddress(parsing: src)!
        self.dst = SocketAddress(parsing: dst)!
        self.flags = flags
    }

    var bytes: [UInt8] {
        let v6 = src.ip.isIPv6
        var l4 = [UInt8]()
        l4 += be16(src.port) + be16(dst.port)
        l4 += [0, 0, 0, 1, 0, 0, 0, 0]        // seq, ack
        l4 += [tcpDataOffset << 4, flags, 0xff, 0xff, 0, 0, 0, 0] // data offset, flags, window, csum, urg
        let pseudo = src.ip.bytes + dst.ip.bytes + (v6 ? [0, 0] + be16(UInt16(l4.count)) + [0, 0, 0, proto] : [0, proto] + be16(UInt16(l4.count)))
        let c = checksum(pseudo + l4)
        l4[16] = UInt8(c >> 8); l4[17] = UInt8(c & 0xff)
        var out = dstMAC + srcMAC + (vlan.map { [0x81, 0x00] + be16($0) } ?? [])
        out += v6 ? [0x86, 0xdd] : [0x08, 0x00]
        if v6 {
            let ext = ipv6Chain()
            out += [0x60, 0, 0, 0] + be16(UInt16(ext.bytes.count + l4.count)) + [ext.first, 64] + src.ip.bytes + dst.ip.bytes + ext.bytes
        } else {
            let words = ihl ?? UInt8(5 + ipv4Options / 4)
            let frag: [UInt8] = fragment ? be16(0x2000 | fragmentOffset) : [0x40, 0]
            var ip: [UInt8] = [0x40 | words, 0] + be16(UInt16(20 + ipv4Options + l4.count)) + [0, 1] + frag + [64, proto, 0, 0]
            ip += src.ip.bytes + dst.ip.bytes
            ip += [UInt8](repeating: 1, count: max(ipv4Options - 1, 0)) + (ipv4Options > 0 ? [0] : []) // NOPs, then end of options
            let ic = checksum(ip)
            ip[10] = UInt8(ic >> 8); ip[11] = UInt8(ic & 0xff)
            out += ip
        }
        out += l4
        if let truncate { out = Array(out.prefix(truncate)) }
        return out
    }

    /// The IPv6 extension chain: the first next-header value and the headers' bytes.
    private func ipv6Chain() -> (first: UInt8, bytes: [UInt8]) {
        var bytes: [UInt8] = []
        for (i, type) in extHeaders.enumerated() {
            let next = i + 1 < extHeaders.count ? extHeaders[i + 1] : proto
            switch type {
            case 44: bytes += [next, 0] + be16(fragmentOffset << 3 | 1) + [0, 0, 0, 7]   // more fragments follow
            case 51: bytes += [next, 2, 0, 0] + [UInt8](repeating: 0, count: 12)        // AH: (2 + 2) * 4 bytes
            default: bytes += [next, 0, 1, 4, 0, 0, 0, 0]                               // 8 bytes: PadN
            }
        }
        return (extHeaders.first ?? proto, bytes)
    }
}

func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xff)] }

func checksum(_ data: [UInt8]) -> UInt16 {
    var sum: UInt32 = 0
    var i = 0
    while i + 1 < data.count { sum += UInt32(data[i]) << 8 | UInt32(data[i + 1]); i += 2 }
    if i < data.count { sum += UInt32(data[i]) << 8 }
    while sum >> 16 != 0 { sum = (sum & 0xffff) + (sum >> 16) }
    return ~UInt16(sum)
}

/// Parsed view of an output packet.
struct Parsed {
    let bytes: [UInt8]
    var isV6: Bool { bytes[12] == 0x86 }
    var l3: Int { 14 }
    var l4: Int { isV6 ? 54 : 14 + Int(bytes[14] & 0x0f) * 4 }
    var src: IPAddress { isV6 ? .v6(Array(bytes[22..<38])) : IPAddress("\(bytes[26]).\(bytes[27]).\(bytes[28]).\(bytes[29])")! }
    var dst: IPAddress { isV6 ? .v6(Array(bytes[38..<54])) : IPAddress("\(bytes[30]).\(bytes[31]).\(bytes[32]).\(bytes[33])")! }
    var dstMAC: [UInt8] { Array(bytes[0..<6]) }
    var srcMAC: [UInt8] { Array(bytes[6..<12]) }
    /// Both checksums verify.
    var checksumsValid: Bool {
        let l4Bytes = Array(bytes[l4...])
        let proto = isV6 ? bytes[20] : bytes[23]
        let pseudo = src.bytes + dst.bytes + (isV6 ? [0, 0] + be16(UInt16(l4Bytes.count)) + [0, 0, 0, proto] : [0, proto] + be16(UInt16(l4Bytes.count)))
        let tcpOK = checksum(pseudo + l4Bytes) == 0
        if isV6 { return tcpOK }
        return tcpOK && checksum(Array(bytes[14..<l4])) == 0
    }
}
