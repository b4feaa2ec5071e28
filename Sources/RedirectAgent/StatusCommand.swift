import AgentAPI
import AgentCore
import ArgumentParser
import Foundation
import Logging

/// `redirect-agent status`: what the kernel is really doing, via the running agent.
struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the dataplane and why, kernel features, probe IPs, and each pod's attachment and counters.")
    @Option(help: "The agent's control socket (env REDIRECT_CONTROL_SOCKET).") var controlSocket: String = env("REDIRECT_CONTROL_SOCKET") ?? AgentClient.defaultSocket
    @Flag(help: "JSON output.") var json = false

    func run() throws {
        let r: ControlResponse
        do { r = try AgentClient.call(ControlRequest(op: "status"), socket: controlSocket) } catch {
            FileHandle.standardError.write(Data("redirect-agent status: the agent is not reachable at \(controlSocket): \(error)\n".utf8))
            throw ExitCode(2)
        }
        guard let s = r.status else { throw ValidationError(r.error ?? "no status") }
        if json {
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try enc.encode(s), as: UTF8.self))
            return
        }
        print("dataplane:  \(s.dataplane)  (\(s.reason))")
        print("kernel:     " + s.features.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value ? "yes" : "no")" }.joined(separator: " "))
        if let m = s.ebpfMissing { print("            ebpf unavailable: \(m)") }
        print("probe IPs:  \(s.probeIPv4)  \(s.probeIPv6)")
        print("proxy:      \(s.proxyConnected ? "connected (ZDS)" : "not connected"), identity: \(s.proxyIdentity ?? "?")")
        print("probes:     from \(s.probeSource ?? "?"); \(s.probePath ?? "?")")
        if let d = s.nodeDrift, !d.isEmpty { print("            NODE DRIFT: " + d.joined(separator: "; ")) }
        print("pods:       \(s.pods.count)")
        for p in s.pods {
            print("  \(p.pod)  \(p.ips.joined(separator: ","))  \(p.drift.isEmpty ? "ok" : "DRIFT: " + p.drift.joined(separator: "; "))")
            print("    \(p.attachment)")
            if !p.counters.isEmpty { print("    " + p.counters.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")) }
        }
    }
}

/// `redirect-agent uninstall`: removes everything of ours from the node and its pods.
struct Uninstall: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Remove every pod's capture, the node's rules, programs, maps and pins, and the state file. Stop the agent first.")
    @OptionGroup var flags: AgentFlags

    func run() throws {
        try flags.enterNamespace()
        var o = try flags.options()
        if let previous = try? StateStore(path: o.statePath).load().dataplane { o.mode = previous }
        let agent = try Agent(options: o, logger: Logger(label: "redirect-agent"))
        let pods = agent.podCount
        try agent.uninstall()
        print("removed capture of \(pods) pod(s) and the node's \(agent.dataplane.mode.rawValue) state")
    }
}
