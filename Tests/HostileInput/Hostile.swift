import PropertyBased

/// Hostile values a runtime (or anyone who reaches the control socket) can put in a request.
public enum Hostile {
    public static let fragments = ["", "/", "//", "\0", "\n", "\r\n", "..", ".", " ", "\t", "\u{7f}", "\u{2028}", "é", "🙂", "%s", "$(id)",
                            "10.244.1.2", "10.244.1.2/24", "fd00:10:244:1::2", "fd00::1/64", "::", "0.0.0.0", "127.0.0.1", "224.0.0.1",
                            "255.255.255.255", "ff02::1", "::1", "/proc/1/ns/net", "/run/netns/x", "eth0", "lo", "a", "A", "-", "_",
                            String(repeating: "a", count: 300), String(repeating: "9", count: 5000)]
    /// A string made of 0 to 5 hostile fragments and random scalars.
    public static let string = Gen<String?>.element(of: fragments).map { $0 ?? "" }.array(of: 0...5).map { $0.joined() }
    /// Any Unicode text, control characters included.
    public static let unicode = Gen<UInt32>.value(in: 0...0x10FFFF)
        .map { Character(Unicode.Scalar($0) ?? "\u{FFFD}") } // surrogates are no scalars
        .string(of: 0...40)
    public static let text = Gen<String>.oneOf(string.eraseToAnySequence(), unicode.eraseToAnySequence())
    public static let ips = text.array(of: 0...12)
}
