import Dataplane
import Foundation
import Glibc
import SystemCalls

/// One enrolled pod as the agent remembers it.
public struct EnrolledPod: Codable, Sendable, Equatable {
    /// The dataplane's view.
    public var spec: PodSpec
    /// When it was enrolled.
    public var enrolledAt: Date
    /// The identity of its network namespace when it was enrolled (``NetworkNamespace/identity()``).
    public var netnsID: String?
}

/// An enrolment or removal in flight, as recorded before the kernel was touched.
public struct PendingOperation: Codable, Sendable, Equatable {
    /// `add` or `del`.
    public var op: String
    /// The pod as the request described it.
    public var spec: PodSpec
    /// Creates one.
    public init(op: String, spec: PodSpec) { self.op = op; self.spec = spec }
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
    /// Operations begun but not finished, by UID: written before the kernel is touched, cleared
    /// after. A restart finishes a removal and undoes an enrolment found here.
    public var pending: [String: PendingOperation] = [:]
    /// The proxy's cgroup as last learned from its ZDS connection (with `--proxy-cgroup zds-peer`):
    /// a restarted agent keeps it, so the proxy's open connections stay its own.
    public var proxyCgroup: Cgroup?
    /// Pods the runtime added that are not in the mesh, by UID: what enrolling one later (a label
    /// set with kubectl) needs, since no ADD comes again for a running pod.
    public var known: [String: PodSpec] = [:]
    /// Creates an empty state.
    public init() {}

    private enum CodingKeys: String, CodingKey { case version, dataplane, probeIPv4, probeIPv6, pods, pending, proxyCgroup, known }

    /// Reads a state file; files from before `pending` existed have none.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        version = try c.decodeIfPresent(Int.self, forKey: .version) ?? 1
        dataplane = try c.decodeIfPresent(DataplaneMode.self, forKey: .dataplane)
        probeIPv4 = try c.decodeIfPresent(String.self, forKey: .probeIPv4)
        probeIPv6 = try c.decodeIfPresent(String.self, forKey: .probeIPv6)
        pods = try c.decodeIfPresent([String: EnrolledPod].self, forKey: .pods) ?? [:]
        pending = try c.decodeIfPresent([String: PendingOperation].self, forKey: .pending) ?? [:]
        proxyCgroup = try c.decodeIfPresent(Cgroup.self, forKey: .proxyCgroup)
        known = try c.decodeIfPresent([String: PodSpec].self, forKey: .known) ?? [:]
    }
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

    /// Saves `state`: mode 0600 in a 0700 directory whatever the umask, durable before it returns
    /// (file and directory synced).
    public func save(_ state: AgentState) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        enc.dateEncodingStrategy = .iso8601
        let data = try enc.encode(state)
        let dir = (path as NSString).deletingLastPathComponent
        do { try PrivateDirectory.prepare(dir) } catch { throw AgentError(.io, "\(error)") }
        let tmp = "\(path).tmp-\(getpid())"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw AgentError(.io, "cannot create \(tmp): \(String(cString: strerror(errno)))") }
        let written = data.withUnsafeBytes { raw in (fchmod(fd, 0o600), write(fd, raw.baseAddress, raw.count)) }
        let synced = fsync(fd)
        close(fd)
        guard written.1 == data.count, synced == 0 else {
            unlink(tmp)
            throw AgentError(.io, "cannot write \(tmp): \(String(cString: strerror(errno)))")
        }
        guard rename(tmp, path) == 0 else { throw AgentError(.io, "cannot rename \(tmp) to \(path): \(String(cString: strerror(errno)))") }
        let dirFD = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dirFD >= 0 { fsync(dirFD); close(dirFD) }
    }
}

/// An agent operation failed.
public struct AgentError: Error, CustomStringConvertible, Sendable {
    /// Stable codes.
    public enum Code: String, Sendable, Codable {
        /// A field is malformed (not an address, a bad name, a relative path...).
        case invalidRequest
        /// A field is longer than its limit.
        case fieldTooLong
        /// More addresses (per family) or labels than a pod may have.
        case tooManyValues
        /// The node is at its pod or map capacity.
        case capacityExceeded
        /// The request names something another pod owns (an address, a network namespace), or the node's own namespace.
        case conflict
        /// A ZDS peer whose cgroup cannot be the proxy's identity.
        case proxyUnidentified
        /// The Kubernetes API cannot say whether the pod is in the mesh (not reachable, or the pod not seen yet).
        case apiUnavailable
        case ebpfUnavailable, enrollFailed, removeFailed, notEnrolled, drift, io, proxyRejected
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
