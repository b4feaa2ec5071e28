import Foundation
import SystemCalls

/// The pod's policy routing that delivers marked packets locally: `ip rule fwmark 0x111/0xfff
/// lookup 100 pref 32764` and `local default dev lo table 100`, per family. Both dataplanes need
/// it: iptables for replies to the proxy's transparent sockets, eBPF for packets handed to proxy
/// sockets. Done over rtnetlink inside the pod's namespace: no `ip` process per pod.
struct PolicyRouting {
    let config: CaptureConfig

    var rule: NetlinkRouting.MarkRule {
        .init(mark: config.connMark, mask: config.markMask, table: UInt32(config.routeTable), priority: UInt32(config.rulePriority))
    }

    var ruleText: String {
        "fwmark 0x\(String(config.connMark, radix: 16))/0x\(String(config.markMask, radix: 16)) lookup \(config.routeTable)"
    }

    /// Adds what is missing; idempotent.
    func apply(netns: String, families: [Bool]) throws {
        let rule = rule, table = UInt32(config.routeTable)
        try NetworkNamespace(path: netns).run {
            for v6 in families {
                try NetlinkRouting.addRule(rule, ipv6: v6)
                try NetlinkRouting.addLocalDefault(table: table, ipv6: v6)
            }
        }
    }

    /// Removes the rule (every copy) and the route, both families.
    func remove(netns: String) throws {
        let rule = rule, table = UInt32(config.routeTable)
        try NetworkNamespace(path: netns).run {
            for v6 in [false, true] {
                try NetlinkRouting.deleteRule(rule, ipv6: v6)
                try NetlinkRouting.deleteLocalDefault(table: table, ipv6: v6)
            }
        }
    }

    /// What is missing, per family.
    func drift(netns: String, families: [Bool]) throws -> [String] {
        let rule = rule, table = UInt32(config.routeTable), text = ruleText
        return try NetworkNamespace(path: netns).run {
            var out: [String] = []
            for v6 in families {
                let name = v6 ? "IPv6" : "IPv4"
                if try !NetlinkRouting.hasRule(rule, ipv6: v6) { out.append("\(name): missing ip rule \(text)") }
                if try !NetlinkRouting.hasLocalDefault(table: table, ipv6: v6) { out.append("\(name): missing local default route in table \(table)") }
            }
            return out
        }
    }
}
