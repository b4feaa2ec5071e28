import AgentAPI
import Foundation
import Glibc
import Logging
import Synchronization
import SystemCalls

/// Bounds of the control socket: however many clients connect and however slowly they write,
/// the agent holds a fixed number of connections and threads, and valid requests stay fast.
public struct ControlServerLimits: Sendable {
    /// Connections held open while their request arrives; past this the oldest is dropped.
    public var connections = 256
    /// Seconds a client has to send its whole request (not per read).
    public var requestDeadline = 5.0
    /// Threads that execute complete requests.
    public var workers = 4
    /// Largest request accepted.
    public var requestBytes = 1 << 20
    /// Creates the defaults.
    public init() {}
}

/// Serves the control socket: one JSON request per connection. One thread reads every
/// connection without blocking (poll), so idle or slow clients cost a descriptor, not a thread;
/// complete requests go to a small pool of workers. A bad request gets an error answer; it never
/// stops the server or touches other pods.
public final class AgentControlServer: Sendable {
    private let agent: Agent
    private let listener: Socket
    private let logger: Logger
    private let limits: ControlServerLimits
    private let jobs: WorkQueue<Socket>

    /// Listens on `path` with mode 0600 (only root may enroll pods), in a 0700 directory.
    public init(agent: Agent, path: String, limits: ControlServerLimits = ControlServerLimits(), logger: Logger) throws {
        try PrivateDirectory.prepare((path as NSString).deletingLastPathComponent)
        self.agent = agent
        self.listener = try UnixSocket.listen(path: path, mode: 0o600)
        try listener.setNonBlocking()
        self.logger = logger
        self.limits = limits
        self.jobs = WorkQueue(capacity: limits.connections)
    }

    /// Starts the reader and the workers on their own threads.
    public func start() {
        DedicatedThread.detach(name: "control-reader") { [self] in readLoop() }
        for i in 0..<max(limits.workers, 1) {
            DedicatedThread.detach(name: "control-worker-\(i)") { [self] in
                while let conn = jobs.take() { answer(conn) }
            }
        }
    }

    /// Stops accepting new requests.
    public func stop() {
        _ = shutdown(listener.fd, Int32(SHUT_RDWR))
        jobs.close(waking: max(limits.workers, 1))
    }

    // MARK: reading

    private final class Pending {
        let socket: Socket
        let deadline: Double
        var bytes: [UInt8] = []
        init(_ s: Socket, deadline: Double) { socket = s; self.deadline = deadline }
    }

    private func readLoop() {
        var pending: [Pending] = []   // oldest first
        while listener.fd >= 0 {
            let now = Monotonic.now()
            let timeout = pending.map(\.deadline).min().map { $0 - now } ?? 3600
            guard let events = try? Poll.wait([listener.fd] + pending.map(\.socket.fd), timeout: timeout) else { continue }
            if events.first.map({ $0 & Int16(POLLIN | POLLHUP | POLLERR | POLLNVAL) != 0 }) == true {
                if events[0] & Int16(POLLNVAL | POLLHUP) != 0 { break }
                acceptAll(&pending)
            }
            var keep: [Pending] = []
            for (i, p) in pending.enumerated() where !progress(p, ready: i + 1 < events.count && events[i + 1] != 0) {
                keep.append(p)
            }
            pending = keep
        }
    }

    private func acceptAll(_ pending: inout [Pending]) {
        while let conn = try? listener.acceptAvailable() {
            if pending.count >= limits.connections {
                let oldest = pending.removeFirst()
                logger.debug("control connection dropped: too many open")
                oldest.socket.close()
            }
            try? conn.setNonBlocking()
            pending.append(Pending(conn, deadline: Monotonic.now() + limits.requestDeadline))
        }
    }

    /// Reads what arrived; true when the connection is done with here (handed on or closed).
    private func progress(_ p: Pending, ready: Bool) -> Bool {
        if ready {
            switch Result(catching: { try p.socket.readAvailable() }) {
            case .success(nil): break
            case .success(let chunk?):
                p.bytes += chunk
                if chunk.isEmpty || p.bytes.contains(UInt8(ascii: "\n")) { return dispatch(p) }
                if p.bytes.count > limits.requestBytes { return refuse(p, "the request is larger than \(limits.requestBytes) bytes") }
            case .failure: p.socket.close(); return true
            }
        }
        if Monotonic.now() >= p.deadline { return refuse(p, "the request did not arrive within \(limits.requestDeadline) s") }
        return false
    }

    private func dispatch(_ p: Pending) -> Bool {
        guard jobs.offer(p.socket, with: p.bytes) else { return refuse(p, "the agent is busy; retry") }
        return true
    }

    private func refuse(_ p: Pending, _ why: String) -> Bool {
        reply(p.socket, ControlResponse(ok: false, code: AgentError.Code.invalidRequest.rawValue, error: why))
        return true
    }

    // MARK: answering

    private func answer(_ job: (Socket, [UInt8])) {
        let (conn, bytes) = job
        let line = bytes.split(separator: UInt8(ascii: "\n"), maxSplits: 1, omittingEmptySubsequences: false).first ?? []
        let response: ControlResponse
        if let req = try? JSONDecoder().decode(ControlRequest.self, from: Data(line)) {
            response = handle(req)
        } else {
            response = ControlResponse(ok: false, code: AgentError.Code.invalidRequest.rawValue, error: "the request is not valid JSON")
        }
        reply(conn, response)
    }

    private func reply(_ conn: Socket, _ response: ControlResponse) {
        // Blocking again with a send timeout: answers are small, a peer that never reads is cut off.
        try? conn.setNonBlocking(false)
        try? conn.setTimeout(seconds: limits.requestDeadline)
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
                throw AgentError(.invalidRequest, "unknown op \(RequestValidation.quoted(req.op))")
            }
            return ControlResponse(ok: true)
        } catch let e as AgentError {
            logger.warning("request failed", metadata: ["op": "\(LogEscaping.escape(String(req.op.prefix(40))))", "error": "\(e)"])
            return ControlResponse(ok: false, code: e.code.rawValue, error: e.message)
        } catch {
            return ControlResponse(ok: false, code: AgentError.Code.enrollFailed.rawValue, error: "\(error)")
        }
    }
}

/// A bounded queue between the reader and the workers.
final class WorkQueue<T: Sendable>: Sendable {
    private struct State { var items: [(T, [UInt8])] = []; var closed = false }
    private let state = Mutex(State())
    private let available = DispatchSemaphore(value: 0)
    private let capacity: Int

    init(capacity: Int) { self.capacity = capacity }

    /// Adds a job; false when the queue is full or closed.
    func offer(_ item: T, with bytes: [UInt8]) -> Bool {
        let added = state.withLock { s -> Bool in
            guard !s.closed, s.items.count < capacity else { return false }
            s.items.append((item, bytes))
            return true
        }
        if added { available.signal() }
        return added
    }

    /// The next job; nil once closed.
    func take() -> (T, [UInt8])? {
        while true {
            available.wait()
            let next = state.withLock { s -> (T, [UInt8])?? in
                if s.closed { return .some(nil) }
                return s.items.isEmpty ? nil : s.items.removeFirst()
            }
            if let next { return next }
        }
    }

    /// Wakes `waking` waiting workers to exit.
    func close(waking: Int) {
        state.withLock { $0.closed = true }
        for _ in 0..<waking { available.signal() }
    }
}
