import ArgumentParser

/// `redirect-agent`: the node agent's command line.
struct RedirectAgentCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "redirect-agent",
        abstract: "Traffic capture for Istio ambient pods: eBPF on pod interfaces, with Istio's iptables rules as the fallback.",
        subcommands: [Run.self, Status.self, Uninstall.self, InstallCNI.self, NetPol.self])
}

RedirectAgentCommand.main()
