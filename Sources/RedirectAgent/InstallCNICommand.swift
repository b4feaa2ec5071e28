import SystemCalls
import AgentCore
import ArgumentParser
import Foundation

/// `redirect-agent install-cni`: put redirect-cni into the node's CNI chain (and keep it there).
struct InstallCNI: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "install-cni",
        abstract: "Copy redirect-cni into the plugin directory and append it to the runtime's primary network configuration; --watch keeps it there; --uninstall removes exactly it.")
    @Option(help: "The runtime's CNI configuration directory (env CNI_CONF_DIR).") var cniConfDir: String = env("CNI_CONF_DIR") ?? "/etc/cni/net.d"
    @Option(help: "The runtime's CNI plugin directory (env CNI_BIN_DIR).") var cniBinDir: String = env("CNI_BIN_DIR") ?? "/opt/cni/bin"
    @Option(help: "The redirect-cni binary to install (default: beside this binary).") var pluginBinary: String?
    @Option(help: "The agent's control socket, written into the plugin's configuration.") var agentSocket: String = env("REDIRECT_CONTROL_SOCKET") ?? "/run/redirect-agent/control.sock"
    @Option(help: "Where the original configuration is kept for uninstall.") var stateDir: String = env("REDIRECT_INSTALL_STATE_DIR") ?? "/var/lib/redirect-agent"
    @Flag(help: "Keep watching and re-insert when the primary CNI rewrites its file.") var watch = false
    @Flag(help: "Remove our entry and binary, restoring the original file.") var uninstall = false

    func run() throws {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        let plugin = pluginBinary ?? ((exe as NSString).deletingLastPathComponent + "/redirect-cni")
        let installer = CNIInstaller(confDir: cniConfDir, binDir: cniBinDir, stateDir: stateDir, pluginBinary: plugin, agentSocket: agentSocket)
        if uninstall {
            try installer.uninstall()
            print("removed redirect-cni from \(cniConfDir) and \(cniBinDir)")
            return
        }
        let changed = try installer.install()
        print("\(changed ? "installed" : "already installed"): redirect-cni in \((try? installer.primaryFile()) ?? "?")")
        flushOutput()
        guard watch else { return }
        installer.watch(onChange: { print("re-inserted redirect-cni into \($0)"); flushOutput() })
    }
}
