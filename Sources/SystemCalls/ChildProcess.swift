import CShim
import Glibc
import Synchronization

/// A child process started with posix_spawn and reaped with waitpid.
///
/// Foundation's `Process` waits for exit through its run loop and once hung there for good
/// (a benchmark removing 1000 pods); this type waits with `waitid` on the calling thread, so
/// nothing but the kernel decides when a wait returns.
public final class ChildProcess: Sendable {
    /// The child's pid.
    public let pid: Int32
    /// The exit status once reaped: the exit code, or 128 + the signal that killed it.
    private let status = Mutex<Int32?>(nil)

    private init(pid: Int32) { self.pid = pid }

    /// Starts `path` with `arguments` (without argv[0]) and `environment` (the current one when
    /// nil). The child gets `stdin`, `stdout` and `stderr` as its fds 0-2, default signal
    /// dispositions and an empty signal mask, and none of our other descriptors (whether or not
    /// close-on-exec: libraries may open theirs without it). With `ownGroup`, the child leads a new process group, so
    /// ``signalGroup(_:)`` reaches whatever it forked too.
    public static func spawn(_ path: String, _ arguments: [String], environment: [String: String]? = nil,
                             stdin: Int32, stdout: Int32, stderr: Int32, ownGroup: Bool = false) throws -> ChildProcess {
        let argv = CStringArray([path] + arguments)
        let envp = environment.map { env in CStringArray(env.map { "\($0.key)=\($0.value)" }.sorted()) }
        var actions = posix_spawn_file_actions_t()
        var attributes = posix_spawnattr_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawnattr_init(&attributes)
        defer { posix_spawn_file_actions_destroy(&actions); posix_spawnattr_destroy(&attributes) }
        for (fd, target) in [(stdin, Int32(0)), (stdout, 1), (stderr, 2)] {
            posix_spawn_file_actions_adddup2(&actions, fd, target)
        }
        cshim_spawn_add_closefrom(&actions, 3)
        // Our executables ignore SIGPIPE and threads may block signals; a child must inherit neither.
        var all = sigset_t(), none = sigset_t()
        sigfillset(&all)
        sigemptyset(&none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setsigmask(&attributes, &none)
        var flags = POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK
        if ownGroup { flags |= POSIX_SPAWN_SETPGROUP; posix_spawnattr_setpgroup(&attributes, 0) }
        posix_spawnattr_setflags(&attributes, Int16(flags))
        var pid: pid_t = 0
        let rc = argv.withPointers { argvp in
            if let envp { return envp.withPointers { posix_spawn(&pid, path, &actions, &attributes, argvp, $0) } }
            return posix_spawn(&pid, path, &actions, &attributes, argvp, environ)
        }
        // posix_spawn returns the error number instead of setting errno.
        if rc != 0 { throw SystemError("spawn \(path)", code: rc) }
        return ChildProcess(pid: pid)
    }

    /// The exit status if the child has exited (reaping it), else nil. Never blocks.
    public func poll() -> Int32? {
        status.withLock { stored in
            if let stored { return stored }
            var raw: Int32 = 0
            let r = waitpid(pid, &raw, WNOHANG)
            guard r == pid else { return nil }
            stored = ChildProcess.decode(raw)
            return stored
        }
    }

    /// True until the child has exited.
    public var isRunning: Bool { poll() == nil }

    /// Blocks until the child exits; returns its status (see ``poll()``).
    @discardableResult
    public func wait() -> Int32 {
        while true {
            if let s = poll() { return s }
            // Wait without reaping, so the reaping and the stored status stay under one lock.
            var info = siginfo_t()
            let r = waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT)
            if r == -1 && cshim_errno() == EINTR { continue }
            if r == -1 {
                // ECHILD: reaped by a concurrent poll, whose status is stored by now.
                return poll() ?? 127
            }
        }
    }

    /// Sends `signal` unless the child has already been reaped (its pid may be reused).
    public func signal(_ signal: Int32) {
        status.withLock { stored in
            if stored == nil { _ = kill(pid, signal) }
        }
    }

    /// Sends `signal` to the child's process group (see `ownGroup`) unless the child has been reaped.
    public func signalGroup(_ signal: Int32) {
        status.withLock { stored in
            if stored == nil { _ = kill(-pid, signal) }
        }
    }

    /// The exit code, or 128 + the terminating signal, from a wait status.
    static func decode(_ raw: Int32) -> Int32 {
        let signal = raw & 0x7f
        return signal == 0 ? (raw >> 8) & 0xff : 128 + signal
    }
}

/// A NUL-terminated array of C strings that lives as long as the value.
private final class CStringArray {
    private var pointers: [UnsafeMutablePointer<CChar>?]

    init(_ strings: [String]) {
        pointers = strings.map { strdup($0) } + [nil]
    }

    func withPointers<R>(_ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
        pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
    }

    deinit { for p in pointers { free(p) } }
}
