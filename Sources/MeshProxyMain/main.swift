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
    @Option(help: "Unix socket for the control channel.") var control: String
    @Option(help: "JSON-lines file of handled connections.") var records: String?
    @Option(help: "Pinned sockhash of the eBPF dataplane to register listeners in (used when it exists).") var listenerMap: String?

    func run() throws {
        if let netns { try NetworkNamespace(path: netns).enterOnMainThread() }
        resetSignalHandling()
        ParentWatch.start()
        signal(SIGPIPE, SIG_IGN)
        let proxy = MeshProxy(records: RecordWriter(path: records), listenerMapPath: listenerMap)
        let server = try ControlServer(proxy: proxy, path: control)
        print("READY control=\(control)")
        fflush(stdout)
        server.serve()
    }
}

MeshProxyCommand.main()
