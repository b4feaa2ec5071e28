import Dataplane
import Foundation
import Glibc

/// One enrolled pod as the agent remembers it.
public struct EnrolledPod: Codable, Sendable, Equatable {
    /// The dataplane's view.
    public var spec: PodSpec
    /// When it was enrolled.
    public var enrolledAt: Date
}

/// What survives an agent restart: the dataplane in use and the enrolled pods. The kernel holds
/// the capture itself; this file says which pods it should hold it for.
public struct AgentState: Codable, Sendable {
    /// Schema version.
    public var version = 1
    /// The dataplane the pods are enrolled with.
    public var dataplane: DataplaneMode?
    /// The probe IPs in force (text).
    public var probeIPv4: String?
    /// IPv6.
    public var probeIPv6: String?
    /// Enrolled pods by UID.
    public var pods: [String: EnrolledPod] = [:]
    /// Creates an empty state.
    public init() {}
}

/// Reads and writes the state file atomically (write, fsync, rename): a crash leaves the old
/// file or the new one, never half of one.
public struct StateStore: Sendable {
    /// The file.
    public var path: String
    /// Creates a store.
    public init(path: String) { self.path = path }

    /// The saved state, or an empty one when there is no file.
    public func load() throws -> AgentState {
        guard let data = FileManager.default.contents(atPath: path) else { return AgentState() }
        let dec = JSONDecoder()
        dec.dateDecodingStrategy = .iso8601
        return try dec.decode(AgentState.self, from: data)
    }

    /// Saves `state`.
    public func save(_ state: AgentState) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        enc.dateEncodingStrategy = .iso8601
        let data = try enc.encode(state)
        let dir = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let tmp = "\(path).tmp-\(getpid())"
        guard FileManager.default.createFile(atPath: tmp, contents: data) else { throw AgentError(.io, "cannot write \(tmp)") }
        let fd = open(tmp, O_RDONLY)
        if fd >= 0 { fsync(fd); close(fd) }
        guard rename(tmp, path) == 0 else { throw AgentError(.io, "cannot rename \(tmp) to \(path): \(String(cString: strerror(errno)))") }
    }
}

/// An agent operation failed.
public struct AgentError: Error, CustomStringConvertible, Sendable {
    /// Stable codes.
    public enum Code: String, Sendable, Codable {
        case invalidRequest, ebpfUnavailable, enrollFailed, removeFailed, notEnrolled, drift, io, proxyRejected
    }
    /// The code.
    public var code: Code
    /// The message.
    public var message: String
    /// Creates an error.
    public init(_ code: Code, _ message: String) { self.code = code; self.message = message }
    /// One line.
    public var description: String { "\(code.rawValue): \(message)" }
}
