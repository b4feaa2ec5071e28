import AgentCore
import Dataplane
import SystemCalls
import Testing

/// Where BPF cannot be used, `auto` picks the rule system the node already uses (pure logic: the
/// save programs' output comes from a fake runner; the lab's AgentTests.seccompFallback runs both
/// choices for real).
@Suite("auto's fallback between nftables and iptables")
struct FallbackModeTests {
    /// Answers each save program with the rules it was given, and nothing for the rest.
    struct SaveOutput: CommandRunner {
        var rules: [String: String]
        func run(_ program: String, _ arguments: [String], netns: String?, input: String?, environment: [String: String]) throws -> CommandResult {
            CommandResult(status: rules[program] == nil ? 1 : 0, stdout: rules[program] ?? "", stderr: "")
        }
    }

    @Test("iptables rules from another component (either backend) keep the node on iptables; none, and it is nftables")
    func choice() throws {
        guard (try? Command.resolve("nft")) != nil else { Issue.record("cannot run: no nft program (apt-get install nftables)"); return }
        let kubeProxy = "*nat\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -j KUBE-SERVICES\n-A OUTPUT -j KUBE-SERVICES\nCOMMIT\n"
        let legacy = Agent.fallbackMode(runner: SaveOutput(rules: ["iptables-legacy-save": kubeProxy]))
        #expect(legacy.0 == .iptables && legacy.1 == "the node has 2 iptables rules", "\(legacy)")
        let nft = Agent.fallbackMode(runner: SaveOutput(rules: ["ip6tables-nft-save": kubeProxy]))
        #expect(nft.0 == .iptables, "\(nft)")
        let chainsOnly = Agent.fallbackMode(runner: SaveOutput(rules: ["iptables-nft-save": "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"]))
        #expect(chainsOnly.0 == .nftables && chainsOnly.1 == "the node has no iptables rules", "\(chainsOnly)")
        #expect(Agent.fallbackMode(runner: SaveOutput(rules: [:])).0 == .nftables)
    }
}
