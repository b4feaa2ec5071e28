import AgentAPI
import AgentCore
import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import SystemCalls

/// `redirect-agent run`: the daemon.
struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the node agent: pick the dataplane, reconcile enrolled pods, serve the CNI plugin and the proxy (ZDS).",
        discussion: "SIGTERM stops it gracefully and leaves capture in place; `redirect-agent uninstall` removes it.")
    @OptionGroup var flags: AgentFlags
    @Option(help: "Address for /metrics and /healthz (env REDIRECT_METRICS_ADDRESS).") var metricsAddress: String = env("REDIRECT_METRICS_ADDRESS") ?? "127.0.0.1:15029"
    @Option(help: "Log format: text or json (env REDIRECT_LOG_FORMAT).") var logFormat: String = env("REDIRECT_LOG_FORMAT") ?? "text"

    func run() throws {
        guard let format = LogFormat(rawValue: logFormat) else { throw ValidationError("--log-format: expected text or json, got '\(logFormat)'") }
        format.bootstrap()
        try flags.enterNamespace()
        let logger = Logger(label: "redirect-agent")
        let agent: Agent
        do {
            agent = try Agent(options: try flags.options(), logger: logger)
        } catch let e as AgentError {
            FileHandle.standardError.write(Data("redirect-agent: cannot start: \(e.message)\n".utf8))
            throw ExitCode(3)
        }
        try agent.reconcile()
        let opts = try flags.options()
        agent.startCluster() // before ZDS: the proxy's first snapshot reflects the cluster
        try agent.startZDS()
        DedicatedThread.detach(name: "prune-kept") { // closed kept connections leave the kernel's table
            while true {
                sleep(30)
                agent.pruneKeptConnections()
            }
        }
        DedicatedThread.detach(name: "every-second") { // exited draining proxies, expired monitor leases
            while true {
                sleep(1)
                agent.everySecond()
            }
        }
        let control = try AgentControlServer(agent: agent, path: opts.controlSocket, logger: logger)
        control.start()
        guard let metricsAddr = SocketAddress(parsing: metricsAddress) else { throw ValidationError("--metrics-address: expected ip:port") }
        try MetricsServer(agent: agent, address: metricsAddr).start()
        print("READY dataplane=\(agent.dataplane.mode.rawValue) reason=\"\(agent.reason)\" pods=\(agent.podCount)")
        flushOutput()
        runUntilSignal(logger: logger) {
            control.stop()
            logger.info("stopped; capture stays in place")
        }
    }
}

/// Waits for SIGTERM/SIGINT through swift-service-lifecycle, then runs `onShutdown`.
func runUntilSignal(logger: Logger, onShutdown: @escaping @Sendable () -> Void) {
    let done = DispatchSemaphore(value: 0)
    let group = ServiceGroup(configuration: .init(services: [.init(service: ShutdownWaiter(onShutdown: onShutdown))],
                                                  gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
    Task {
        try? await group.run()
        done.signal()
    }
    done.wait()
}

/// A service that does nothing but wait for the graceful shutdown, then runs its hook.
struct ShutdownWaiter: Service {
    let onShutdown: @Sendable () -> Void
    func run() async throws {
        try? await gracefulShutdown()
        onShutdown()
    }
}
