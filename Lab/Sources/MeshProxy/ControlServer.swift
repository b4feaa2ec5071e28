import Foundation
import Glibc
import SystemCalls

/// The proxy's control channel: a Unix stream socket, one command per line.
///
///     ADD <uid> <netns-path> <ip[,ip]> spoof|nospoof   -> OK | ERR <why>
///     DEL <uid>                                        -> OK
///     LIST                                             -> OK <uid,uid,...>
public final class ControlServer: Sendable {
    private let proxy: MeshProxy
    private let listener: Socket

    /// Listens on `path`.
    public init(proxy: MeshProxy, path: String) throws {
        self.proxy = proxy
        self.listener = try UnixSocket.listen(path: path)
    }

    /// Serves forever on the calling thread.
    public func serve() {
        while true {
            guard let conn = try? listener.accept() else { continue }
            Thread {
                while let line = try? conn.readLine() {
                    try? conn.writeAll(self.execute(line) + "\n")
                }
            }.start()
        }
    }

    /// Executes one command line and returns the answer.
    public func execute(_ line: String) -> String {
        let f = line.split(separator: " ").map(String.init)
        switch f.first {
        case "ADD":
            guard f.count == 5 else { return "ERR usage: ADD <uid> <netns> <ips> spoof|nospoof" }
            let ips = f[3].split(separator: ",").compactMap { IPAddress(String($0)) }
            guard !ips.isEmpty else { return "ERR no valid address in \(f[3])" }
            do {
                try proxy.add(ProxyWorkload(uid: f[1], netns: f[2], addresses: ips, spoofSource: f[4] == "spoof"))
                return "OK"
            } catch { return "ERR \(error)" }
        case "DEL":
            guard f.count == 2 else { return "ERR usage: DEL <uid>" }
            proxy.remove(uid: f[1])
            return "OK"
        case "LIST":
            return "OK " + proxy.enrolled.joined(separator: ",")
        default:
            return "ERR unknown command"
        }
    }
}
