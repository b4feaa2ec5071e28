import CShim
import Foundation
import Glibc

/// Finding the cgroup of another process: of a pid, of a cgroup id, of the peer of a unix socket.
extension Cgroup {
    /// The group of the process at the other end of a connected unix socket, and how it was found:
    /// by the peer's pid (SO_PEERCRED), which needs the peer's process visible in this pid
    /// namespace. (Linux has no socket option that names the peer's cgroup.)
    public static func ofPeer(_ socket: Socket, procRoot: String = "/proc") throws -> (cgroup: Cgroup, how: String) {
        let pid = try socket.peerProcessID()
        guard pid > 0 else {
            throw SystemError("the peer's process is outside this pid namespace (the agent needs the node's: hostPID)", code: ESRCH)
        }
        return (try of(pid: pid, procRoot: procRoot), "SO_PEERCRED pid \(pid)")
    }

    /// The cgroup v2 path in the text of /proc/PID/cgroup (its `0::` line).
    static func unifiedPath(in text: String) -> String? {
        text.split(separator: "\n").first(where: { $0.hasPrefix("0::") }).map { String($0.dropFirst(3)) }
    }

    /// The pid's group path as the node's cgroup namespace names it. /proc/PID/cgroup shows paths
    /// relative to the reader's cgroup namespace (`/../../kubepods/...` for a process outside an
    /// agent's own namespace), so such a path is read again by a thread in the namespace of the
    /// node's init (pid 1; the agent needs hostPID and CAP_SYS_ADMIN), or of `nodeNamespace`.
    static func nodePath(of pid: Int32, procRoot: String, nodeNamespace: String? = nil) throws -> String {
        let file = "\(procRoot)/\(pid)/cgroup"
        guard let seen = unifiedPath(in: try String(contentsOfFile: file, encoding: .utf8)) else {
            throw SystemError("process \(pid) has no cgroup v2 entry", code: ENOENT)
        }
        guard seen.split(separator: "/").contains("..") else { return seen }
        let nodeNamespace = nodeNamespace ?? "\(procRoot)/1/ns/cgroup"
        let fd = try check("open \(nodeNamespace)", open(nodeNamespace, O_RDONLY | O_CLOEXEC))
        defer { Glibc.close(fd) }
        let text = try DedicatedThread.run { () throws -> String in
            if cshim_setns(fd, cshim_clone_newcgroup()) != 0 { throw SystemError("setns \(nodeNamespace)", code: cshim_errno()) }
            return try String(contentsOfFile: file, encoding: .utf8)
        }
        guard let path = unifiedPath(in: text), !path.split(separator: "/").contains("..") else {
            throw SystemError("process \(pid)'s cgroup \(seen) lies outside the cgroup namespace of pid 1 (the agent needs the node's pid namespace: hostPID)", code: EXDEV)
        }
        return path
    }
}
