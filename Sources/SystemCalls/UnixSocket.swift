import CShim
import Foundation
import Glibc

/// Unix-domain socket helpers for the project's local control channels.
public enum UnixSocket {
    /// Fills a sockaddr_un for `path` and calls `body`.
    public static func withAddress<T>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) throws -> T) throws -> T {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard bytes.count < capacity else { throw SystemError("unix socket path too long: \(path)", code: ENAMETOOLONG) }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return try withUnsafePointer(to: &addr) {
            try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }

    /// A listening socket of `type` (SOCK_STREAM or SOCK_SEQPACKET) at `path`; a stale file is
    /// replaced. With `mode`, the file gets exactly that mode whatever the umask; put the socket in
    /// a directory only its owner can enter (``PrivateDirectory``) so the moment between bind and
    /// chmod exposes nothing.
    public static func listen(path: String, type: Int32 = cshim_sock_stream(), mode: mode_t? = nil) throws -> Socket {
        let fd = try check("socket AF_UNIX", Glibc.socket(AF_UNIX, type | cshim_sock_cloexec(), 0))
        let s = Socket(fd: fd)
        unlink(path)
        try withAddress(path) { sa, len in _ = try check("bind \(path)", Glibc.bind(fd, sa, len)) }
        if let mode { _ = try check("chmod \(path)", chmod(path, mode)) }
        try s.listen(backlog: 128)
        return s
    }

    /// A socket of `type` connected to `path`. With `timeout`, connecting, reading and writing
    /// each give up after that many seconds (a full listen queue blocks connect on Unix sockets).
    public static func connect(path: String, type: Int32 = cshim_sock_stream(), timeout: Double? = nil) throws -> Socket {
        let fd = try check("socket AF_UNIX", Glibc.socket(AF_UNIX, type | cshim_sock_cloexec(), 0))
        let s = Socket(fd: fd)
        if let timeout { try s.setTimeout(seconds: timeout) }
        _ = try withAddress(path) { sa, len in try retryingEINTR("connect \(path)") { Glibc.connect(fd, sa, len) } }
        return s
    }
}

/// A directory with an exact mode, whatever the umask: the agent's state directory (0700).
public enum PrivateDirectory {
    /// Creates `path` (and parents) if needed and sets its mode to `mode`.
    public static func prepare(_ path: String, mode: mode_t = 0o700) throws {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        _ = try check("chmod \(path)", chmod(path, mode))
    }
}

/// Writes `value` to `/proc/sys/<name with dots as slashes>` from the calling thread's namespace.
public func writeSysctl(_ name: String, _ value: String) throws {
    let path = sysctlPath(name)
    let fd = try check("open \(path)", open(path, O_WRONLY | O_CLOEXEC))
    defer { close(fd) }
    let bytes = Array(value.utf8)
    try check("write \(path)", write(fd, bytes, bytes.count))
}

/// Reads `/proc/sys/<name>` from the calling thread's namespace.
public func readSysctl(_ name: String) throws -> String {
    let path = sysctlPath(name)
    let fd = try check("open \(path)", open(path, O_RDONLY | O_CLOEXEC))
    defer { close(fd) }
    var buf = [UInt8](repeating: 0, count: 256)
    let n = try check("read \(path)", read(fd, &buf, buf.count))
    return String(decoding: buf[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
}

/// `/proc/sys/` path of a dotted sysctl name; as sysctl(8) writes it, a "/" inside a component
/// stands for a "." (an interface named `eth0.100` is `net.ipv4.conf.eth0/100.accept_local`).
func sysctlPath(_ name: String) -> String {
    "/proc/sys/" + String(name.map { $0 == "." ? "/" : $0 == "/" ? "." : $0 })
}

/// The dotted sysctl name of a per-interface setting: `interfaceSysctl("ipv4", "eth0.100", "accept_local")`.
public func interfaceSysctl(_ family: String, _ interface: String, _ key: String) -> String {
    "net.\(family).conf.\(interface.replacingOccurrences(of: ".", with: "/")).\(key)"
}
