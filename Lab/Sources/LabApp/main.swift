import ArgumentParser
import Foundation
import Glibc
import MeshProxy
import NodeLab
import SystemCalls

/// `lab-app`: the workload that runs in every lab pod: an app server, and a load client.
struct LabApp: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lab-app",
        abstract: "The lab pods' workload: an app server (HTTP /healthz and /whoami, TCP echo) and a load client.",
        subcommands: [Serve.self, Client.self, Get.self, DNS.self])
}

/// Enters `netns` on the main thread, before any other thread exists.
func enter(_ netns: String?) throws {
    if let netns { try NetworkNamespace(path: netns).enterOnMainThread() }
    resetSignalHandling()
    ParentWatch.start()
    signal(SIGPIPE, SIG_IGN)
}

/// The lab's cluster DNS: every name has the same addresses.
struct DNS: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Serve DNS (UDP and TCP) on every address; every name has the given addresses.")
    @Option(help: "Network namespace to serve in.") var netns: String?
    @Option(help: "Port.") var port: UInt16 = 53
    @Option(help: "Comma-separated addresses every name resolves to.") var answers: String

    func run() throws {
        try enter(netns)
        let addresses = answers.split(separator: ",").compactMap { IPAddress(String($0)) }
        let responder = DNSResponder(zone: "", addresses: addresses)
        let server = try DNSServer(addresses: [SocketAddress(IPAddress("0.0.0.0")!, port), SocketAddress(IPAddress("::")!, port)],
                                   responder: responder, mark: nil) { _, _, _ in }
        print("READY")
        flushOutput()
        withExtendedLifetime(server) { while true { sleep(3600) } }
    }
}

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Serve HTTP and TCP echo on all addresses.")
    @Option(help: "Network namespace to serve in.") var netns: String?
    @Option(help: "Pod name reported by /whoami.") var pod = "pod"
    @Option(help: "HTTP port.") var httpPort: UInt16 = 8080
    @Option(help: "TCP echo port.") var echoPort: UInt16 = 7777
    @Option(help: "JSON-lines file recording each accepted connection.") var records: String?

    func run() throws {
        try enter(netns)
        let writer = RecordWriter(path: records)
        let server = AppServer(pod: pod, records: writer)
        for (port, kind) in [(httpPort, AppServer.Kind.http), (echoPort, .echo)] {
            for any in ["0.0.0.0", "::"] {
                let listener = try Socket.listening(on: SocketAddress(IPAddress(any)!, port))
                server.serve(listener, kind: kind)
            }
        }
        print("READY pod=\(pod) http=\(httpPort) echo=\(echoPort)")
        flushOutput()
        while true { sleep(3600) }
    }
}

/// One HTTP GET from a fresh process: the lab's kubelet stand-in and other host processes run it
/// in their own cgroups, so their sockets carry those identities.
struct Get: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "One HTTP GET; prints {\"status\":..,\"body\":..} as JSON.")
    @Option(help: "Network namespace to connect from.") var netns: String?
    @Option(help: "Target address, e.g. 10.244.1.2:8080 or [fd00::2]:8080.") var target: String
    @Option(help: "Path.") var path = "/healthz"
    @Option(help: "Timeout in seconds.") var timeout = 3.0
    @Option(help: "SO_MARK for the socket (a process forging the proxy's mark).") var mark: UInt32?

    func run() throws {
        try enter(netns)
        guard let dst = SocketAddress(parsing: target) else { throw ValidationError("--target: '\(target)' is not an address") }
        let socket = try Socket(tcp: dst.ip.family)
        if let mark { try socket.setMark(mark) }
        try socket.setTimeout(seconds: timeout)
        try socket.connect(dst)
        let r = try MiniHTTP.get(socket, host: dst.description, path: path)
        let out = try JSONSerialization.data(withJSONObject: ["status": r.status, "body": r.body])
        print(String(decoding: out, as: UTF8.self))
        flushOutput()
    }
}

/// The app server's connection handling.
final class AppServer: Sendable {
    enum Kind: Sendable { case http, echo }
    let pod: String
    let records: RecordWriter
    init(pod: String, records: RecordWriter) { self.pod = pod; self.records = records }

    func serve(_ listener: Socket, kind: Kind) {
        Thread {
            while true {
                guard let conn = try? listener.accept() else { continue }
                Thread { self.handle(conn, kind: kind) }.start()
            }
        }.start()
    }

    func handle(_ conn: Socket, kind: Kind) {
        let client = (try? conn.peerAddress().description) ?? "?"
        let server = (try? conn.localAddress()) ?? SocketAddress(IPAddress("0.0.0.0")!, 0)
        switch kind {
        case .echo:
            records.write(AppRecord(pod: pod, port: server.port, client: client, server: server.description, path: nil))
            try? conn.setNoDelay()
            while let chunk = try? conn.read(), !chunk.isEmpty {
                if (try? conn.writeAll(chunk)) == nil { break }
            }
        case .http:
            let path = readRequestPath(conn) ?? "/"
            records.write(AppRecord(pod: pod, port: server.port, client: client, server: server.description, path: path))
            let body: String
            switch path {
            case "/healthz": body = "ok\n"
            case "/whoami": body = "{\"pod\":\"\(pod)\",\"client\":\"\(client)\",\"server\":\"\(server)\"}\n"
            default:
                try? conn.writeAll(MiniHTTP.response(status: 404, reason: "Not Found", body: "no \(path)\n"))
                return
            }
            try? conn.writeAll(MiniHTTP.response(status: 200, reason: "OK", body: body))
        }
        conn.shutdownWrite()
    }

    func readRequestPath(_ conn: Socket) -> String? {
        var head: [UInt8] = []
        while head.count < 16384 {
            guard let chunk = try? conn.read(max: 4096), !chunk.isEmpty else { break }
            head += chunk
            if String(decoding: head, as: UTF8.self).contains("\r\n\r\n") { break }
        }
        let line = String(decoding: head, as: UTF8.self).split(separator: "\r\n").first ?? ""
        let parts = line.split(separator: " ")
        return parts.count >= 2 ? String(parts[1]) : nil
    }
}

LabApp.main()
