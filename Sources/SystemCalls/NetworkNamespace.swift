import CShim
import Foundation
import Glibc

/// A network namespace, named by a path such as `/run/netns/NAME` or `/proc/PID/ns/net`.
///
/// Sockets keep the namespace they were created in, so code that needs a socket in a pod makes it
/// through ``run(_:)``: the body runs on a fresh, dedicated thread that enters the namespace and
/// then exits. Swift concurrency's shared threads never change namespace.
public struct NetworkNamespace: Sendable, Hashable, CustomStringConvertible {
    /// The namespace file.
    public var path: String

    /// Names a namespace by path.
    public init(path: String) { self.path = path }

    /// Names a namespace made by `ip netns add NAME`.
    public init(named name: String) { self.path = "/run/netns/\(name)" }

    /// The path.
    public var description: String { path }

    /// The kernel's identity of the namespace (device and inode of its nsfs file): two paths name
    /// the same namespace exactly when their identities are equal.
    public func identity() throws -> String {
        var st = stat()
        try check("stat \(path)", stat(path, &st))
        return "\(st.st_dev):\(st.st_ino)"
    }

    /// The namespace's inode number: the kernel's `ns.inum`, which BPF programs read to tell
    /// namespaces apart.
    public func inode() throws -> UInt32 {
        var st = stat()
        try check("stat \(path)", stat(path, &st))
        return UInt32(truncatingIfNeeded: st.st_ino)
    }

    /// The calling thread's namespace cookie (SO_NETNS_COOKIE, Linux 5.14+): the value
    /// `bpf_get_netns_cookie` returns for sockets made there.
    public static func currentCookie() throws -> UInt64 {
        let fd = try check("socket", socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0))
        defer { Glibc.close(fd) }
        var cookie: UInt64 = 0
        var len = socklen_t(MemoryLayout<UInt64>.size)
        try check("getsockopt SO_NETNS_COOKIE", getsockopt(fd, SOL_SOCKET, 71 /* SO_NETNS_COOKIE */, &cookie, &len))
        return cookie
    }

    /// True when the namespace file exists.
    public var exists: Bool { FileManager.default.fileExists(atPath: path) }

    /// Runs `body` on a dedicated thread inside this namespace and returns its result.
    public func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) throws -> T {
        let fd = try check("open \(path)", open(path, O_RDONLY | O_CLOEXEC))
        defer { Glibc.close(fd) }
        let path = self.path
        return try DedicatedThread.run {
            if cshim_setns(fd, cshim_clone_newnet()) != 0 { throw SystemError("setns \(path)", code: cshim_errno()) }
            return try body()
        }
    }

    /// Runs `body` on a dedicated thread inside a new, empty network namespace (only `lo`, down),
    /// which disappears with the thread: for tests that need sockets nobody else can see.
    public static func runInFreshNamespace<T: Sendable>(_ body: @escaping @Sendable () throws -> T) throws -> T {
        try DedicatedThread.run {
            if cshim_unshare_net() != 0 { throw SystemError("unshare(CLONE_NEWNET)", code: cshim_errno()) }
            return try body()
        }
    }

    /// Enters this namespace on the calling thread. Only for a process's main thread before it
    /// starts any other thread (a child process that lives in one pod).
    public func enterOnMainThread() throws {
        let fd = try check("open \(path)", open(path, O_RDONLY | O_CLOEXEC))
        defer { Glibc.close(fd) }
        try check("setns \(path)", cshim_setns(fd, cshim_clone_newnet()))
    }
}
