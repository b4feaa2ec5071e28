import ArgumentParser
import Glibc

/// `redirect-agent`: the node agent's command line.
struct RedirectAgentCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "redirect-agent",
        abstract: "Traffic capture for Istio ambient pods: eBPF on pod interfaces, with Istio's iptables rules as the fallback.",
        subcommands: [Run.self, Status.self, Maps.self, Monitor.self, Uninstall.self, InstallCNI.self, NetPol.self])
}

// A peer that goes away mid-write (a control client, a program that exits before reading all its
// stdin) is an EPIPE to handle, never a signal that kills the agent. Children get SIGPIPE back.
signal(SIGPIPE, SIG_IGN)
RedirectAgentCommand.main()
