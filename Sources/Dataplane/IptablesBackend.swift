import SystemCalls

/// Which iptables implementation the node uses.
public enum IptablesBackend: String, Sendable, Codable, CaseIterable {
    /// iptables-legacy (x_tables).
    case legacy
    /// iptables-nft (nf_tables with the xtables compatibility layer).
    case nft

    /// The restore program for a family.
    public func restore(ipv6: Bool) -> String { "\(ipv6 ? "ip6tables" : "iptables")-\(rawValue)-restore" }
    /// The save program for a family.
    public func save(ipv6: Bool) -> String { "\(ipv6 ? "ip6tables" : "iptables")-\(rawValue)-save" }

    /// Picks the backend as istio-cni does: a configured one wins; else the one that already
    /// holds rules on the node (kube-proxy and the primary CNI wrote them); else nft.
    /// Returns the choice and the reason, for the log and `status`.
    public static func detect(runner: CommandRunner, override: IptablesBackend? = nil) -> (IptablesBackend, String) {
        if let override { return (override, "configured") }
        func ruleCount(_ b: IptablesBackend) -> Int {
            var n = 0
            for v6 in [false, true] {
                let out = (try? runner.run(b.save(ipv6: v6), [], netns: nil, input: nil, environment: [:]))?.stdout ?? ""
                n += out.split(separator: "\n").filter { $0.hasPrefix("-A ") }.count
            }
            return n
        }
        let nft = ruleCount(.nft), legacy = ruleCount(.legacy)
        if legacy > nft { return (.legacy, "the node has \(legacy) iptables-legacy rules and \(nft) nft ones") }
        if nft > 0 { return (.nft, "the node has \(nft) iptables-nft rules and \(legacy) legacy ones") }
        return (.nft, "no existing rules on the node; nft preferred")
    }
}
