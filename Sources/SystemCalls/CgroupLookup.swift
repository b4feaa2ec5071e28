import CShim
import Foundation
import Glibc

/// Finding the cgroup of another process: of a pid, of a cgroup id, of the peer of a unix socket.
extension Cgroup {
    /// The group of the process at the other end of a connected unix socket, and how it was found:
    /// by the peer's pid (SO_PEERCRED), which needs the peer's process visible in this pid
    /// namespace. (Linux has no socket option that names the peer's cgroup.)
    ///
    /// A pid names a process only while it lives: one that exited could be reused, and its number
    /// then names someone else's cgroup. On Linux 6.5+ the peer's pidfd (SO_PEERPIDFD, which cannot
    /// be reused) is taken first, and the group counts only if that process is still alive once it
    /// has been read, so the number still named it. Before 6.5 that check is not possible.
    public static func ofPeer(_ socket: Socket, procRoot: String = "/proc") throws -> (cgroup: Cgroup, how: String) {
        let pidfd = cshim_peer_pidfd(socket.fd)
        defer { if pidfd >= 0 { Glibc.close(pidfd) } }
        // Only a kernel without the option (before 6.5) falls back to the pid alone; any other
        // failure (a peer already reaped answers EINVAL on some kernels) is the case the check is for.
        if pidfd < 0, case let e = cshim_errno(), e != ENOPROTOOPT {
            throw SystemError("SO_PEERPIDFD: the peer cannot be pinned down (it may have exited)", code: e)
        }
        let pid = try socket.peerProcessID()
        guard pid > 0 else {
            throw SystemError("the peer's process is outside this pid namespace (the agent needs the node's: hostPID)", code: ESRCH)
        }
        let cgroup = try of(pid: pid, procRoot: procRoot)
        guard pidfd >= 0 else { return (cgroup, "SO_PEERCRED pid \(pid)") }
        guard cshim_pidfd_send_signal(pidfd, 0) == 0 else {
            throw SystemError("the peer (pid \(pid)) exited while its cgroup was read: the number may name another process now", code: ESRCH)
        }
        return (cgroup, "SO_PEERCRED pid \(pid), alive by its SO_PEERPIDFD")
    }

    /// Whether a process lives in this group or below it (`populated 1` in its cgroup.events); a
    /// group that no longer exists holds none.
    public func isPopulated() -> Bool {
        guard let text = try? String(contentsOfFile: try Self.mountPoint() + path + "/cgroup.events", encoding: .utf8) else { return false }
        return text.split(separator: "\n").contains("populated 1") && (try? Cgroup(path: path)) == self
    }

    /// How many groups lie below this one (`nr_descendants` in its cgroup.stat).
    public func descendantCount() throws -> Int {
        let text = try String(contentsOfFile: try Self.mountPoint() + path + "/cgroup.stat", encoding: .utf8)
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("nr_descendants ") }),
              let n = Int(line.dropFirst("nr_descendants ".count)) else {
            throw SystemError("no nr_descendants in \(path)/cgroup.stat", code: EINVAL)
        }
        return n
    }

    /// The cgroup v2 path in the text of /proc/PID/cgroup (its `0::` line).
    static func unifiedPath(in text: String) -> String? {
        text.split(separator: "\n").first(where: { $0.hasPrefix("0::") }).map { String($0.dropFirst(3)) }
    }

    /// The node's cgroup namespace (pid 1's) when it is not this process's: where cgroup paths
    /// read as the node names them. Nil when they are the same, or pid 1's cannot be read.
    public static func nodeNamespace(procRoot: String = "/proc") -> String? {
        let node = "\(procRoot)/1/ns/cgroup"
        let fm = FileManager.default
        guard let theirs = try? fm.destinationOfSymbolicLink(atPath: node),
              let mine = try? fm.destinationOfSymbolicLink(atPath: "/proc/self/ns/cgroup"), theirs != mine else { return nil }
        return node
    }

    /// The pid's group path as the node's cgroup namespace names it. /proc/PID/cgroup shows paths
    /// relative to the reader's cgroup namespace (`/../../kubepods/...` for a process outside an
    /// agent's own namespace, and `/x` for one inside it), so an agent whose namespace is not the
    /// node's reads it again from a thread in the node's (`nodeNamespace`, else pid 1's: the agent
    /// needs hostPID, CAP_SYS_ADMIN and CAP_SYS_PTRACE).
    static func nodePath(of pid: Int32, procRoot: String, nodeNamespace: String? = nil) throws -> String {
        let file = "\(procRoot)/\(pid)/cgroup"
        guard let seen = unifiedPath(in: try String(contentsOfFile: file, encoding: .utf8)) else {
            throw SystemError("process \(pid) has no cgroup v2 entry", code: ENOENT)
        }
        guard let node = nodeNamespace ?? Self.nodeNamespace(procRoot: procRoot) else {
            guard !seen.split(separator: "/").contains("..") else {
                throw SystemError("process \(pid)'s cgroup \(seen) lies outside this cgroup namespace, and pid 1's cannot be entered (the agent needs hostPID and CAP_SYS_PTRACE)", code: EXDEV)
            }
            return seen
        }
        let fd = try check("open \(node)", open(node, O_RDONLY | O_CLOEXEC))
        defer { Glibc.close(fd) }
        let text = try DedicatedThread.run { () throws -> String in
            if cshim_setns(fd, cshim_clone_newcgroup()) != 0 { throw SystemError("setns \(node)", code: cshim_errno()) }
            return try String(contentsOfFile: file, encoding: .utf8)
        }
        guard let path = unifiedPath(in: text), !path.split(separator: "/").contains("..") else {
            throw SystemError("process \(pid)'s cgroup \(seen) lies outside the node's cgroup namespace", code: EXDEV)
        }
        return path
    }
}
