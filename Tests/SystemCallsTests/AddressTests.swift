import SystemCalls
import Testing

@Suite("Addresses")
struct AddressTests {
    @Test("IPv4 and IPv6 round-trip through inet_pton/inet_ntop", arguments: ["10.244.1.2", "169.254.7.127", "fd16:9254:7127:1337:ffff:ffff:ffff:ffff", "::1"])
    func roundTrip(_ text: String) throws {
        let ip = try #require(IPAddress(text))
        #expect(ip.description == text)
        #expect(ip.isIPv6 == text.contains(":"))
    }

    @Test("bad addresses are rejected", arguments: ["", "1.2.3", "300.1.1.1", "fd16::zz", "169.254.7.127/32", "10.0.0.1\0junk", "10.0.0.1\0"])
    func rejects(_ text: String) { #expect(IPAddress(text) == nil) }

    @Test("prefixes: empty and slash-only text is rejected, not a crash", arguments: ["", "/", "//", "/24", "10.0.0.1/", "10.0.0.1/33", "::/129", "x/1"])
    func badPrefixes(_ text: String) { #expect(IPPrefix(text) == nil) }

    @Test("prefixes parse with and without a length")
    func prefixParsing() {
        #expect(IPPrefix("10.244.1.2/24")?.ip == IPAddress("10.244.1.2"))
        #expect(IPPrefix("fd00::2")?.length == 128)
    }

    @Test("socket addresses parse both forms")
    func socketAddress() throws {
        #expect(SocketAddress(parsing: "10.0.0.1:80")?.description == "10.0.0.1:80")
        #expect(SocketAddress(parsing: "[fd00::1]:15008")?.port == 15008)
        #expect(SocketAddress(parsing: "10.0.0.1") == nil)
    }

    @Test("prefixes validate their length")
    func prefixes() {
        #expect(IPPrefix("10.244.0.0/16")?.length == 16)
        #expect(IPPrefix("fd00::/129") == nil)
        #expect(IPPrefix("1.2.3.4")?.length == 32)
    }

    @Test("system errors carry the operation and errno")
    func errors() {
        #expect(throws: SystemError.self) { try check("close -1", Int32(-1)) }
        let e = SystemError("connect 1.2.3.4:80", code: 111)
        #expect(e.description.contains("connect 1.2.3.4:80") && e.description.contains("111"))
    }
}
