import ArgumentParser
import Foundation
import Glibc
import MeshProxy
import SystemCalls

/// `mesh-proxy`: the stand-in for ztunnel, one per node.
struct MeshProxyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mesh-proxy",
        abstract: "Stand-in mesh proxy: listeners inside each enrolled pod on 15001/15006/15008, tunnels between pods.")
    @Option(help: "The node's network namespace (entered at start).") var netns: String?
    @Option(help: "Unix socket for the line control channel (the lab's direct mode).") var control: String?
    @Option(help: "The agent's ZDS socket: pods arrive over ztunnel's protocol.") var zds: String?
    @Option(help: "JSON-lines file of handled connections.") var records: String?
    @Option(help: "Where the pods' DNS listeners forward names outside the mesh's zone (IP:PORT).") var dnsUpstream: String?

    func run() throws {
        if let netns { try NetworkNamespace(path: netns).enterOnMainThread() }
        resetSignalHandling()
        ParentWatch.start()
        signal(SIGPIPE, SIG_IGN)
        var ports = ProxyPorts()
        if let dnsUpstream {
            guard let a = SocketAddress(parsing: dnsUpstream) else { throw ValidationError("--dns-upstream: '\(dnsUpstream)' is not IP:PORT") }
            ports.dnsUpstream = a
        }
        let proxy = MeshProxy(ports: ports, records: RecordWriter(path: records))
        guard control != nil || zds != nil else { throw ValidationError("give --control or --zds (or both)") }
        if let zds { Thread { ZDSClient(path: zds, proxy: proxy).run() }.start() }
        let server = try control.map { try ControlServer(proxy: proxy, path: $0) }
        print("READY control=\(control ?? "-") zds=\(zds ?? "-")")
        flushOutput()
        if let server { server.serve() } else { while true { sleep(3600) } }
    }
}

MeshProxyCommand.main()
