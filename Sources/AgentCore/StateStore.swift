import Dataplane
import Foundation
import Glibc
import Synchronization
import SystemCalls

/// One enrolled pod as the agent remembers it.
public struct EnrolledPod: Codable, Sendable, Equatable {
    /// The dataplane's view.
    public var spec: PodSpec
    /// When it was enrolled.
    public var enrolledAt: Date
    /// The identity of its network namespace when it was enrolled (``NetworkNamespace/identity()``).
    public var netnsID: String?
    /// Creates one.
    public init(spec: PodSpec, enrolledAt: Date, netnsID: String?) { self.spec = spec; self.enrolledAt = enrolledAt; self.netnsID = netnsID }
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
public struct AgentState: Codable, Sendable, Equatable {
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
    /// Replaced proxies that were still draining their connections when this was written (a
    /// ztunnel rolling upgrade): a restarted agent keeps those that still run as the proxy's too.
    public var drainingProxyCgroups: [Cgroup] = []
    /// Pods the runtime added that are not in the mesh, by UID: what enrolling one later (a label
    /// set with kubectl) needs, since no ADD comes again for a running pod.
    public var known: [String: PodSpec] = [:]
    /// Creates an empty state.
    public init() {}

    private enum CodingKeys: String, CodingKey { case version, dataplane, probeIPv4, probeIPv6, pods, pending, proxyCgroup, drainingProxyCgroups, known }

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
        drainingProxyCgroups = try c.decodeIfPresent([Cgroup].self, forKey: .drainingProxyCgroups) ?? []
        known = try c.decodeIfPresent([String: PodSpec].self, forKey: .known) ?? [:]
    }
}

/// The agent's state on disk: a snapshot (`state.json`, written whole: write, fsync, rename) and
/// a journal beside it (`state.json.journal`): each save appends one line, what changed since the
/// last one, and syncs it before it returns. An ADD then costs a few hundred bytes written, not the
/// whole state, whatever the number of pods. The journal is folded into a new snapshot at the first
/// save of a process and once it grows past ``compactAfter`` lines.
///
/// Crash safety: a crash leaves the old snapshot or the new one, never half of one, and at most
/// the journal's last line torn (ignored on load; the next process starts with a new snapshot).
/// Lines carry the snapshot generation they follow, so lines a newer snapshot already holds (a
/// crash between the snapshot and truncating the journal) are skipped.
public final class StateStore: Sendable {
    /// The snapshot file.
    public let path: String
    /// The journal file.
    public var journalPath: String { "\(path).journal" }
    /// Journal lines after which a save writes a new snapshot instead.
    public let compactAfter: Int
    private let written = Mutex<Written?>(nil)

    /// What this process last saved: changes are computed against it.
    private struct Written {
        var state: AgentState
        var generation: Int
        var lines: Int
    }

    /// Creates a store.
    public init(path: String, compactAfter: Int = 512) { self.path = path; self.compactAfter = compactAfter }

    /// The saved state (snapshot, then the journal replayed), or an empty one when there is none.
    public func load() throws -> AgentState {
        try Self.read(path: path, journal: journalPath).state
    }

    /// Saves `state`, durable before it returns: one journal line, or a new snapshot (mode 0600 in
    /// a 0700 directory whatever the umask; file and directory synced).
    public func save(_ state: AgentState) throws {
        try written.withLock { last in
            if let previous = last, previous.lines < compactAfter {
                do {
                    try append(StateChange(from: previous.state, to: state, generation: previous.generation))
                } catch {
                    last = nil // the next save writes a whole snapshot, whatever the journal holds now
                    throw error
                }
                last = Written(state: state, generation: previous.generation, lines: previous.lines + 1)
                return
            }
            let generation = (last?.generation ?? (try? Self.read(path: path, journal: journalPath).generation) ?? 0) + 1
            try writeSnapshot(Snapshot(generation: generation, state: state))
            try emptyJournal()
            last = Written(state: state, generation: generation, lines: 0)
        }
    }

    /// Removes the snapshot, then the journal (a crash in between leaves a journal no snapshot
    /// generation matches, so nothing), and syncs the directory.
    public func remove() {
        written.withLock { $0 = nil }
        unlink(path)
        unlink(journalPath)
        syncDirectory((path as NSString).deletingLastPathComponent)
    }

    // MARK: files

    /// The snapshot's generation rides along in the state's own JSON object, so a snapshot stays
    /// an ordinary AgentState file for readers that know nothing of journals.
    struct Snapshot: Codable {
        var generation: Int
        var state: AgentState
        init(generation: Int, state: AgentState) { self.generation = generation; self.state = state }
        init(from decoder: any Decoder) throws {
            state = try AgentState(from: decoder)
            generation = try decoder.container(keyedBy: Key.self).decodeIfPresent(Int.self, forKey: .generation) ?? 0
        }
        func encode(to encoder: any Encoder) throws {
            try state.encode(to: encoder)
            var c = encoder.container(keyedBy: Key.self)
            try c.encode(generation, forKey: .generation)
        }
        private enum Key: String, CodingKey { case generation }
    }

    static func read(path: String, journal: String) throws -> (state: AgentState, generation: Int) {
        var snapshot = Snapshot(generation: 0, state: AgentState())
        if let data = FileManager.default.contents(atPath: path) { snapshot = try decoder.decode(Snapshot.self, from: data) }
        let lines = (FileManager.default.contents(atPath: journal) ?? Data()).split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true)
        for line in lines {
            // A torn line (a crash mid-append) is skipped: the writer counted it as not written,
            // so the next line changes the state from before it.
            guard let change = try? decoder.decode(StateChange.self, from: Data(line)) else { continue }
            if change.generation == snapshot.generation { change.apply(to: &snapshot.state) }
        }
        return (snapshot.state, snapshot.generation)
    }

    private func writeSnapshot(_ snapshot: Snapshot) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        enc.dateEncodingStrategy = .iso8601
        let data = try enc.encode(snapshot)
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
        syncDirectory(dir)
    }

    /// Appends one line and syncs it. The journal exists (``emptyJournal()`` made it, durably);
    /// a line that fails part-way is cut off again, so the next one starts on a line of its own.
    private func append(_ change: StateChange) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        enc.dateEncodingStrategy = .iso8601
        let line = try enc.encode(change) + Data("\n".utf8)
        let fd = open(journalPath, O_WRONLY | O_APPEND | O_CLOEXEC)
        guard fd >= 0 else { throw AgentError(.io, "cannot open \(journalPath): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let end = lseek(fd, 0, SEEK_END)
        let n = line.withUnsafeBytes { raw in write(fd, raw.baseAddress, raw.count) }
        guard n == line.count, fdatasync(fd) == 0 else {
            let why = String(cString: strerror(errno))
            if end >= 0 { _ = ftruncate(fd, end) }
            throw AgentError(.io, "cannot append to \(journalPath): \(why)")
        }
    }

    /// An empty journal, mode 0600, synced with its directory, after each snapshot: appends never
    /// create the file, whose directory entry a crash could otherwise lose.
    private func emptyJournal() throws {
        let fd = open(journalPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw AgentError(.io, "cannot create \(journalPath): \(String(cString: strerror(errno)))") }
        let ok = fchmod(fd, 0o600) == 0 && fsync(fd) == 0
        close(fd)
        guard ok else { throw AgentError(.io, "cannot sync \(journalPath): \(String(cString: strerror(errno)))") }
        syncDirectory((path as NSString).deletingLastPathComponent)
    }

    private func syncDirectory(_ dir: String) {
        let dirFD = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dirFD >= 0 { fsync(dirFD); close(dirFD) }
    }

    private static var decoder: JSONDecoder {
        let dec = JSONDecoder()
        dec.dateDecodingStrategy = .iso8601
        return dec
    }
}

/// One journal line: the state's small fields as they now are, and the entries of its three maps
/// that were set or removed since the line before.
struct StateChange: Codable, Equatable {
    var generation: Int
    var version: Int
    var dataplane: DataplaneMode?
    var probeIPv4: String?
    var probeIPv6: String?
    var proxyCgroup: Cgroup?
    /// Optional: journal lines written before draining proxies were kept have none.
    var drainingProxyCgroups: [Cgroup]?
    var pods: [String: EnrolledPod] = [:]
    var podsRemoved: [String] = []
    var pending: [String: PendingOperation] = [:]
    var pendingRemoved: [String] = []
    var known: [String: PodSpec] = [:]
    var knownRemoved: [String] = []

    init(from old: AgentState, to new: AgentState, generation: Int) {
        self.generation = generation
        version = new.version; dataplane = new.dataplane; probeIPv4 = new.probeIPv4; probeIPv6 = new.probeIPv6; proxyCgroup = new.proxyCgroup
        drainingProxyCgroups = new.drainingProxyCgroups
        (pods, podsRemoved) = Self.diff(old.pods, new.pods)
        (pending, pendingRemoved) = Self.diff(old.pending, new.pending)
        (known, knownRemoved) = Self.diff(old.known, new.known)
    }

    func apply(to state: inout AgentState) {
        state.version = version; state.dataplane = dataplane; state.probeIPv4 = probeIPv4; state.probeIPv6 = probeIPv6; state.proxyCgroup = proxyCgroup
        state.drainingProxyCgroups = drainingProxyCgroups ?? []
        Self.patch(&state.pods, pods, podsRemoved)
        Self.patch(&state.pending, pending, pendingRemoved)
        Self.patch(&state.known, known, knownRemoved)
    }

    private static func diff<V: Equatable>(_ old: [String: V], _ new: [String: V]) -> ([String: V], [String]) {
        (new.filter { old[$0.key] != $0.value }, old.keys.filter { new[$0] == nil }.sorted())
    }

    private static func patch<V>(_ map: inout [String: V], _ set: [String: V], _ removed: [String]) {
        for k in removed { map.removeValue(forKey: k) }
        map.merge(set) { _, new in new }
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
