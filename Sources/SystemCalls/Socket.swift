import CShim
import Glibc
import Synchronization

/// A TCP socket that owns its descriptor and closes it on deinit. Another thread may close it
/// (to stop a blocked accept or read): the descriptor is swapped out atomically, closed once.
public final class Socket: Sendable {
    private let descriptor: Atomic<Int32>

    /// The file descriptor; -1 once closed.
    public var fd: Int32 { descriptor.load(ordering: .acquiring) }

    /// Wraps an existing descriptor, taking ownership.
    public init(fd: Int32) { descriptor = Atomic(fd) }

    /// Opens a TCP stream socket for `family`, close-on-exec.
    public convenience init(tcp family: Int32) throws {
        let fd = try check("socket", Glibc.socket(family, cshim_sock_stream() | cshim_sock_cloexec(), 0))
        self.init(fd: fd)
    }

    /// Opens a UDP socket for `family`, close-on-exec.
    public convenience init(udp family: Int32) throws {
        let fd = try check("socket", Glibc.socket(family, cshim_sock_dgram() | cshim_sock_cloexec(), 0))
        self.init(fd: fd)
    }

    deinit { close() }

    /// Closes the descriptor (idempotent).
    public func close() {
        let old = descriptor.exchange(-1, ordering: .acquiringAndReleasing)
        if old >= 0 { _ = Glibc.close(old) }
    }

    /// shutdown(2) of the write side, so the peer reads EOF.
    public func shutdownWrite() { _ = Glibc.shutdown(fd, Int32(SHUT_WR)) }

    /// Sets an integer socket option.
    public func setOption(_ level: Int32, _ name: Int32, _ value: Int32, _ label: String) throws {
        var v = value
        try check("setsockopt \(label)", setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size)))
    }

    /// SO_REUSEADDR.
    public func setReuseAddress() throws { try setOption(SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR") }

    /// Sets SO_REUSEPORT: another socket of the same user may bind the same address and port.
    public func setReusePort() throws { try setOption(SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT") }

    /// TCP_NODELAY.
    public func setNoDelay() throws { try setOption(Int32(IPPROTO_TCP), TCP_NODELAY, 1, "TCP_NODELAY") }

    /// SO_MARK: the mark the kernel puts on every packet of this socket.
    public func setMark(_ mark: UInt32) throws { try check("setsockopt SO_MARK", cshim_set_mark(fd, mark)) }

    /// The socket's SO_MARK.
    public func mark() throws -> UInt32 {
        var m: UInt32 = 0
        try check("getsockopt SO_MARK", cshim_get_mark(fd, &m))
        return m
    }

    /// connect() to AF_UNSPEC: a connected TCP socket drops its connection (with a reset) and may
    /// connect again, elsewhere, keeping its identity (cookie).
    public func disconnect() throws {
        var sa = sockaddr()
        sa.sa_family = sa_family_t(AF_UNSPEC)
        try check("connect AF_UNSPEC", Glibc.connect(fd, &sa, socklen_t(MemoryLayout<sockaddr>.size)))
    }

    /// SO_COOKIE: the kernel's identity of the socket, what BPF programs read as its cookie.
    public func cookie() throws -> UInt64 {
        var v: UInt64 = 0
        var len = socklen_t(MemoryLayout<UInt64>.size)
        try check("getsockopt SO_COOKIE", getsockopt(fd, SOL_SOCKET, 57 /* SO_COOKIE */, &v, &len))
        return v
    }

    /// SO_PEERCRED of a connected unix socket: the peer's pid in this process's pid namespace
    /// (0 when the peer's process is outside it).
    public func peerProcessID() throws -> Int32 {
        var pid: Int32 = 0
        try check("getsockopt SO_PEERCRED", cshim_peer_pid(fd, &pid))
        return pid
    }

    /// IP_TRANSPARENT / IPV6_TRANSPARENT: bind to non-local addresses and accept redirected flows.
    public func setTransparent(ipv6: Bool) throws {
        try check("setsockopt IP_TRANSPARENT", cshim_set_transparent(fd, ipv6 ? 1 : 0))
    }

    /// IPV6_V6ONLY.
    public func setV6Only(_ on: Bool) throws { try setOption(Int32(IPPROTO_IPV6), IPV6_V6ONLY, on ? 1 : 0, "IPV6_V6ONLY") }

    /// bind(2).
    public func bind(_ address: SocketAddress) throws {
        _ = try address.withSockaddr { sa, len in
            _ = try check("bind \(address)", Glibc.bind(fd, sa, len))
        }
    }

    /// listen(2).
    public func listen(backlog: Int32 = 1024) throws { try check("listen", Glibc.listen(fd, backlog)) }

    /// accept4(2) with close-on-exec; retries EINTR.
    public func accept() throws -> Socket {
        let client = try retryingEINTR("accept") { cshim_accept_cloexec(fd) }
        return Socket(fd: client)
    }

    /// connect(2); retries EINTR.
    public func connect(_ address: SocketAddress) throws {
        _ = try address.withSockaddr { sa, len in
            try retryingEINTR("connect \(address)") { Glibc.connect(fd, sa, len) }
        }
    }

    /// Sets SO_RCVTIMEO and SO_SNDTIMEO.
    public func setTimeout(seconds: Double) throws {
        var tv = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1_000_000))
        try check("SO_RCVTIMEO", setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size)))
        try check("SO_SNDTIMEO", setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size)))
    }

    /// read(2) into `buffer`; 0 at EOF.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        try retryingEINTR("read") { Glibc.read(fd, buffer.baseAddress, buffer.count) }
    }

    /// Reads up to `max` bytes; empty at EOF.
    public func read(max: Int = 65536) throws -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: max)
        let n = try buf.withUnsafeMutableBytes { try read(into: $0) }
        return Array(buf[0..<n])
    }

    /// Writes all of `bytes`.
    public func writeAll(_ bytes: UnsafeRawBufferPointer) throws {
        var off = 0
        while off < bytes.count {
            let n = try retryingEINTR("write") {
                Glibc.send(fd, bytes.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL))
            }
            off += n
        }
    }

    /// Writes all of `bytes`.
    public func writeAll(_ bytes: [UInt8]) throws { try bytes.withUnsafeBytes { try writeAll($0) } }

    /// Writes a UTF-8 string.
    public func writeAll(_ text: String) throws { try writeAll(Array(text.utf8)) }

    /// Reads until EOF or `limit` bytes.
    public func readToEnd(limit: Int = 1 << 20) throws -> [UInt8] {
        var out: [UInt8] = []
        while out.count < limit {
            let chunk = try read()
            if chunk.isEmpty { break }
            out += chunk
        }
        return out
    }

    /// Reads one line (up to `\n`, which is dropped), byte by byte so nothing after it is consumed.
    public func readLine(limit: Int = 4096) throws -> String? {
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while line.count < limit {
            let n = try retryingEINTR("read") { Glibc.read(fd, &byte, 1) }
            if n == 0 { return line.isEmpty ? nil : String(decoding: line, as: UTF8.self) }
            if byte == UInt8(ascii: "\n") { return String(decoding: line, as: UTF8.self) }
            line.append(byte)
        }
        return String(decoding: line, as: UTF8.self)
    }

    /// getsockname(2).
    public func localAddress() throws -> SocketAddress {
        try address("getsockname") { getsockname(fd, $0, $1) }
    }

    /// getpeername(2).
    public func peerAddress() throws -> SocketAddress {
        try address("getpeername") { getpeername(fd, $0, $1) }
    }

    private func address(_ op: String, _ call: (UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> Int32) throws -> SocketAddress {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        try withUnsafeMutablePointer(to: &storage) {
            try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = try check(op, call($0, &len)) }
        }
        guard let a = SocketAddress(storage: storage) else { throw SystemError(op, code: EAFNOSUPPORT) }
        return a
    }

    /// SO_ORIGINAL_DST: the destination before NAT REDIRECT; nil when the flow was not NATed
    /// (or conntrack is not loaded in this namespace).
    public func originalDestination(ipv6: Bool) -> SocketAddress? {
        var storage = sockaddr_storage()
        let rc: Int32 = withUnsafeMutablePointer(to: &storage) { p in
            if ipv6 {
                return p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { cshim_original_dst6(fd, $0) }
            }
            return p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { cshim_original_dst4(fd, $0) }
        }
        if rc != 0 { return nil }
        if ipv6 { storage.ss_family = sa_family_t(AF_INET6) } else { storage.ss_family = sa_family_t(AF_INET) }
        return SocketAddress(storage: storage)
    }

    /// Opens a listening TCP socket on `address` with SO_REUSEADDR (and SO_REUSEPORT with `reusePort`).
    public static func listening(on address: SocketAddress, transparent: Bool = false, mark: UInt32? = nil, reusePort: Bool = false,
                                 backlog: Int32 = 1024) throws -> Socket {
        let s = try Socket(tcp: address.ip.family)
        try s.setReuseAddress()
        if reusePort { try s.setReusePort() }
        if address.ip.isIPv6 { try s.setV6Only(true) }
        if transparent { try s.setTransparent(ipv6: address.ip.isIPv6) }
        if let mark { try s.setMark(mark) }
        try s.bind(address)
        try s.listen(backlog: backlog)
        return s
    }

    /// Connects to `address`, optionally from `source` (transparent bind), with `mark`.
    public static func connected(to address: SocketAddress, from source: SocketAddress? = nil, mark: UInt32? = nil, timeout: Double? = nil) throws -> Socket {
        let s = try Socket(tcp: address.ip.family)
        if let mark { try s.setMark(mark) }
        if let source {
            try s.setTransparent(ipv6: source.ip.isIPv6)
            try s.setReuseAddress()
            try s.bind(source)
        }
        if let timeout { try s.setTimeout(seconds: timeout) }
        try s.connect(address)
        try? s.setNoDelay()
        return s
    }
}

extension Socket {
    /// sendto(2) of one datagram; retries EINTR.
    public func send(_ bytes: [UInt8], to address: SocketAddress) throws {
        _ = try address.withSockaddr { sa, len in
            try bytes.withUnsafeBytes { b in try retryingEINTR("sendto \(address)") { Int32(Glibc.sendto(fd, b.baseAddress, b.count, 0, sa, len)) } }
        }
    }

    /// recvfrom(2) of one datagram and its sender; retries EINTR.
    public func receive(max: Int = 65536) throws -> (bytes: [UInt8], from: SocketAddress) {
        var buffer = [UInt8](repeating: 0, count: max)
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let n = try buffer.withUnsafeMutableBytes { b in
            try withUnsafeMutablePointer(to: &storage) { sp in
                try sp.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                    try retryingEINTR("recvfrom") { Int32(Glibc.recvfrom(fd, b.baseAddress, b.count, 0, sa, &len)) }
                }
            }
        }
        guard let from = SocketAddress(storage: storage) else { throw SystemError("recvfrom: sender is not an IP address", code: EAFNOSUPPORT) }
        return (Array(buffer.prefix(Int(n))), from)
    }

    /// O_NONBLOCK on (reads and accepts answer EAGAIN instead of waiting) or off again.
    public func setNonBlocking(_ on: Bool = true) throws {
        let flags = try check("fcntl F_GETFL", fcntl(fd, F_GETFL))
        _ = try check("fcntl F_SETFL", fcntl(fd, F_SETFL, on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK))
    }

    /// Reads what is there without waiting: nil when nothing is (EAGAIN), empty at EOF.
    public func readAvailable(max: Int = 65536) throws -> [UInt8]? {
        do { return try read(max: max) } catch let e as SystemError where e.code == EAGAIN || e.code == EWOULDBLOCK { return nil }
    }

    /// Accepts without waiting: nil when no connection is pending.
    public func acceptAvailable() throws -> Socket? {
        do { return try accept() } catch let e as SystemError where e.code == EAGAIN || e.code == EWOULDBLOCK { return nil }
    }

    /// Waits until the socket is readable or `deadline` (monotonic seconds) passes; false on timeout.
    public func waitReadable(until deadline: Double) throws -> Bool {
        let remaining = deadline - Monotonic.now()
        guard remaining > 0 else { return false }
        return try Poll.wait([fd], timeout: remaining).first.map { $0 != 0 } ?? false
    }

    /// Reads until EOF or `limit` bytes, failing with ETIMEDOUT once `deadline` (monotonic
    /// seconds) passes: the whole exchange is bounded, not each read.
    public func readToEnd(limit: Int, deadline: Double) throws -> [UInt8] {
        var out: [UInt8] = []
        while out.count < limit {
            guard try waitReadable(until: deadline) else { throw SystemError("read: deadline passed", code: ETIMEDOUT) }
            let chunk = try read()
            if chunk.isEmpty { break }
            out += chunk
        }
        return out
    }
}

/// poll(2) over a set of descriptors.
public enum Poll {
    /// Waits up to `timeout` seconds for any of `fds` to be readable (or hung up); returns each
    /// one's revents (0 when nothing happened). EINTR is retried with the same timeout.
    public static func wait(_ fds: [Int32], timeout: Double) throws -> [Int16] {
        var set = fds.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        let ms = Int32(max(0, min(timeout, 3600)) * 1000)
        _ = try retryingEINTR("poll") { set.withUnsafeMutableBufferPointer { Glibc.poll($0.baseAddress, nfds_t($0.count), ms) } }
        return set.map(\.revents)
    }
}

/// A monotonic clock in seconds, for deadlines that wall-clock changes cannot move.
public enum Monotonic {
    /// Seconds since an arbitrary start.
    public static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    /// Nanoseconds of CLOCK_MONOTONIC: what bpf_ktime_get_ns returns.
    public static func nanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}
