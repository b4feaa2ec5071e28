import AgentAPI
import Foundation
import Glibc
import Logging
import SystemCalls

/// Serves the control socket: one JSON request per connection, each on its own thread. A bad
/// request gets an error answer; it never stops the server or touches other pods.
public final class AgentControlServer: Sendable {
    private let agent: Agent
    private let listener: Socket
    private let logger: Logger

    /// Listens on `path` (mode 0600: only root may enroll pods).
    public init(agent: Agent, path: String, logger: Logger) throws {
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        self.agent = agent
        self.listener = try UnixSocket.listen(path: path)
        chmod(path, 0o600)
        self.logger = logger
    }

    /// Accepts on a background thread.
    public func start() {
        Thread { [self] in
            while true {
                guard let conn = try? listener.accept() else { usleep(10_000); continue }
                Thread { self.serve(conn) }.start()
            }
        }.start()
    }

    /// Stops accepting new requests.
    public func stop() { _ = shutdown(listener.fd, Int32(SHUT_RDWR)) }

    private func serve(_ conn: Socket) {
        try? conn.setTimeout(seconds: 30)
        let response: ControlResponse
        if let line = try? conn.readLine(limit: 1 << 20), let req = try? JSONDecoder().decode(ControlRequest.self, from: Data(line.utf8)) {
            response = handle(req)
        } else {
            response = ControlResponse(ok: false, code: AgentError.Code.invalidRequest.rawValue, error: "the request is not valid JSON")
        }
        if let data = try? JSONEncoder().encode(response) { try? conn.writeAll([UInt8](data)) }
        conn.close()
    }

    /// Executes one request.
    public func handle(_ req: ControlRequest) -> ControlResponse {
        do {
            switch req.op {
            case "add":
                guard let pod = req.pod else { throw AgentError(.invalidRequest, "add needs a pod") }
                return ControlResponse(ok: true, enrolled: try agent.add(pod))
            case "del":
                guard let pod = req.pod else { throw AgentError(.invalidRequest, "del needs a pod") }
                try agent.remove(pod)
            case "check":
                guard let pod = req.pod else { throw AgentError(.invalidRequest, "check needs a pod") }
                try agent.check(pod)
            case "status":
                return ControlResponse(ok: true, status: agent.status())
            case "set-probe-ips":
                try agent.setProbeIPs(v4: req.probeIPv4, v6: req.probeIPv6)
            default:
                throw AgentError(.invalidRequest, "unknown op '\(req.op)'")
            }
            return ControlResponse(ok: true)
        } catch let e as AgentError {
            logger.warning("request failed", metadata: ["op": "\(req.op)", "error": "\(e)"])
            return ControlResponse(ok: false, code: e.code.rawValue, error: e.message)
        } catch {
            return ControlResponse(ok: false, code: AgentError.Code.enrollFailed.rawValue, error: "\(error)")
        }
    }
}
