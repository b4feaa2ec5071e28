import Foundation
import SystemCalls

/// The pod's policy routing that delivers marked packets locally: `ip rule fwmark 0x111/0xfff
/// lookup 100` and `local default dev lo table 100`, per family. Both dataplanes need it: iptables
/// for replies to the proxy's transparent sockets, eBPF for packets handed to proxy sockets.
struct PolicyRouting {
    let config: CaptureConfig
    let runner: CommandRunner

    var ruleText: String {
        "fwmark 0x\(String(config.connMark, radix: 16))/0x\(String(config.markMask, radix: 16)) lookup \(config.routeTable)"
    }

    private var ruleArgs: [String] { ruleText.split(separator: " ").map(String.init) + ["pref", "\(config.rulePriority)"] }

    /// Adds what is missing; idempotent.
    func apply(netns: String, families: [Bool]) throws {
        for v6 in families {
            let fam = v6 ? "-6" : "-4"
            if try !runner.checked("ip", [fam, "rule", "show"], netns: netns).contains(ruleText) {
                try runner.checked("ip", [fam, "rule", "add"] + ruleArgs, netns: netns)
            }
            try runner.checked("ip", [fam, "route", "replace", "local", v6 ? "::/0" : "0.0.0.0/0", "dev", "lo", "table", "\(config.routeTable)"], netns: netns)
        }
    }

    /// Removes the rule (every copy) and the table, both families.
    func remove(netns: String) throws {
        for fam in ["-4", "-6"] {
            while try runner.checked("ip", [fam, "rule", "show"], netns: netns).contains(ruleText) {
                try runner.checked("ip", [fam, "rule", "del"] + ruleArgs, netns: netns)
            }
            _ = try? runner.run("ip", [fam, "route", "flush", "table", "\(config.routeTable)"], netns: netns, input: nil, environment: [:])
        }
    }

    /// What is missing, per family.
    func drift(netns: String, families: [Bool]) throws -> [String] {
        var out: [String] = []
        for v6 in families {
            let fam = v6 ? "-6" : "-4", name = v6 ? "IPv6" : "IPv4"
            if try !runner.checked("ip", [fam, "rule", "show"], netns: netns).contains(ruleText) { out.append("\(name): missing ip rule \(ruleText)") }
            let routes = try runner.checked("ip", [fam, "route", "show", "table", "\(config.routeTable)"], netns: netns)
            if !routes.contains("local default dev lo") { out.append("\(name): missing local default route in table \(config.routeTable)") }
        }
        return out
    }
}
