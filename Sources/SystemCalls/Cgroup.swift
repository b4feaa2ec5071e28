import CShim
import Foundation
import Glibc
import Synchronization

/// A cgroup v2 group, named by its path below the cgroup2 mount (as /proc/PID/cgroup and
/// iptables' `-m cgroup --path` name it) and identified by its id (the directory's inode number,
/// which `bpf_sk_cgroup_id` and `bpf_skb_cgroup_id` return).
public struct Cgroup: Sendable, Equatable, Codable, CustomStringConvertible {
    /// The path below the cgroup2 mount, starting with `/`.
    public var path: String
    /// The cgroup id.
    public var id: UInt64

    /// Creates a value without touching the filesystem (tests, state files).
    public init(path: String, id: UInt64) { self.path = path; self.id = id }

    /// Resolves `path` to the group that exists now.
    public init(path: String) throws {
        let clean = try Self.checked(path)
        let mount = try Self.mountPoint()
        var st = stat()
        try check("stat cgroup \(clean)", stat(mount + clean, &st))
        guard (st.st_mode & S_IFMT) == S_IFDIR else { throw SystemError("cgroup \(clean) is not a directory", code: ENOTDIR) }
        self.init(path: clean, id: UInt64(st.st_ino))
    }

    /// The group of a running process (its cgroup v2 line in /proc/PID/cgroup), named as the
    /// node's cgroup namespace (that of pid 1, or the one at `nodeNamespace`) names it.
    public static func of(pid: Int32, procRoot: String = "/proc", nodeNamespace: String? = nil) throws -> Cgroup {
        try Cgroup(path: try nodePath(of: pid, procRoot: procRoot, nodeNamespace: nodeNamespace))
    }

    private static let hierarchy = Mutex<String?>(nil)

    /// Makes `root` the node's cgroup v2 hierarchy for every later resolution: an agent in its own
    /// cgroup namespace sees only its own group under its cgroup2 mount, so the node's hierarchy
    /// comes from a host mount (the DaemonSet's `/host/sys/fs/cgroup`).
    public static func useHierarchy(at root: String) { hierarchy.withLock { $0 = root } }

    /// Where the node's cgroup2 hierarchy is: the one ``useHierarchy(at:)`` named, else the cgroup2
    /// mount, /sys/fs/cgroup on a unified host, /sys/fs/cgroup/unified on a hybrid one.
    public static func mountPoint() throws -> String {
        if let root = hierarchy.withLock({ $0 }) { return root }
        let text = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        for line in text.split(separator: "\n") {
            let halves = line.components(separatedBy: " - ")
            guard halves.count == 2, halves[1].hasPrefix("cgroup2 ") else { continue }
            let fields = halves[0].split(separator: " ")
            if fields.count > 4 { return String(fields[4]) }
        }
        throw SystemError("no cgroup2 mount", code: ENOENT)
    }

    /// Creates the group (and its parents) if missing.
    public static func create(path: String) throws -> Cgroup {
        let clean = try checked(path)
        try FileManager.default.createDirectory(atPath: try mountPoint() + clean, withIntermediateDirectories: true)
        return try Cgroup(path: clean)
    }

    /// Moves a process into this group.
    public func add(pid: Int32) throws {
        try "\(pid)\n".write(toFile: try Self.mountPoint() + path + "/cgroup.procs", atomically: false, encoding: .utf8)
    }

    /// Removes the group; it must hold no process. Missing groups are fine.
    public func remove() throws {
        let dir = try Self.mountPoint() + path
        if rmdir(dir) != 0 {
            let code = cshim_errno()
            if code != ENOENT { throw SystemError("rmdir \(dir)", code: code) }
        }
    }

    /// `path (id N)`.
    public var description: String { "\(path) (id \(id))" }

    private static func checked(_ path: String) throws -> String {
        let parts = path.split(separator: "/", omittingEmptySubsequences: true)
        let plain = path.unicodeScalars.allSatisfy { $0.value > 0x20 && $0.value < 0x7f && $0 != "\"" && $0 != "'" && $0 != "\\" }
        guard path.hasPrefix("/"), !parts.contains(".."), !parts.contains("."), plain, path.utf8.count < 4096 else {
            throw SystemError("cgroup path '\(path)' must be absolute, printable ASCII without spaces or quotes, without . or ..", code: EINVAL)
        }
        return "/" + parts.joined(separator: "/")
    }
}
