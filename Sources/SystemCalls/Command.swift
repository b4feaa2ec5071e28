import Foundation
import CShim
import Glibc

/// The outcome of a finished subprocess.
public struct CommandResult: Sendable {
    /// Exit status (or 128 + signal).
    public var status: Int32
    /// Everything it wrote to stdout.
    public var stdout: String
    /// Everything it wrote to stderr.
    public var stderr: String
    /// Creates a result.
    public init(status: Int32, stdout: String, stderr: String) { self.status = status; self.stdout = stdout; self.stderr = stderr }
}

/// A subprocess failed: which command, its status and stderr.
public struct CommandError: Error, CustomStringConvertible {
    /// The command line.
    public var command: String
    /// The result.
    public var result: CommandResult
    /// Creates an error.
    public init(command: String, result: CommandResult) { self.command = command; self.result = result }
    /// One line: the command, status and stderr.
    public var description: String {
        "\(command) exited \(result.status): \(result.stderr.trimmingCharacters(in: .whitespacesAndNewlines))"
    }
}

/// Runs programs to completion, capturing their output.
public enum Command {
    /// Runs `executable` with `arguments`; `input` goes to stdin. Does not throw on a non-zero exit.
    /// With `timeout` (seconds), the child runs in a process group of its own, and if it is still
    /// running then the group is killed and the child reported as status 137. Once the child has
    /// exited, its output is read for at most one more second (something it started may hold the
    /// pipes open). At most ``outputLimit`` bytes of each stream are kept.
    public static func capture(_ executable: String, _ arguments: [String], environment: [String: String]? = nil,
                               input: String? = nil, timeout: Double? = nil) throws -> CommandResult {
        let path = executable.hasPrefix("/") ? executable : try resolve(executable)
        var pipes: [Pipe2] = []
        defer { for i in pipes.indices { pipes[i].closeBoth() } }
        for _ in 0..<3 { pipes.append(try Pipe2()) }
        let child = try ChildProcess.spawn(path, arguments, environment: environment,
                                           stdin: pipes[0].read, stdout: pipes[1].write, stderr: pipes[2].write,
                                           ownGroup: timeout != nil)
        pipes[0].closeRead(); pipes[1].closeWrite(); pipes[2].closeWrite()
        var io = ChildIO(input: Array((input ?? "").utf8), stdin: pipes[0].take(\.write), stdout: pipes[1].take(\.read),
                         stderr: pipes[2].take(\.read), exit: cshim_pidfd_open(child.pid))
        defer { io.closeAll() }
        let timedOut = io.pump(until: timeout.map { Monotonic.now() + $0 }) == .deadline
        if timedOut {
            child.signalGroup(SIGKILL)
            _ = io.pump(until: Monotonic.now() + 1)
        }
        io.closeAll()
        let status = child.wait()
        var errText = String(decoding: io.err, as: UTF8.self)
        if timedOut, let timeout { errText += "\nkilled: still running after \(timeout) s" }
        return CommandResult(status: status, stdout: String(decoding: io.out, as: UTF8.self), stderr: errText)
    }

    /// The most bytes of stdout, and of stderr, a captured command keeps (the rest is read and dropped).
    public static let outputLimit = 32 << 20

    /// Runs and throws ``CommandError`` on a non-zero exit; returns stdout.
    @discardableResult
    public static func run(_ executable: String, _ arguments: [String], environment: [String: String]? = nil, input: String? = nil) throws -> String {
        let r = try capture(executable, arguments, environment: environment, input: input)
        if r.status != 0 {
            throw CommandError(command: ([executable] + arguments).joined(separator: " "), result: r)
        }
        return r.stdout
    }

    /// Finds `name` on PATH (plus the sbin directories, which a non-login PATH can lack).
    public static func resolve(_ name: String) throws -> String {
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "") + ":/usr/sbin:/sbin:/usr/bin:/bin"
        for dir in path.split(separator: ":") {
            let candidate = "\(dir)/\(name)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        throw CommandError(command: name, result: CommandResult(status: 127, stdout: "", stderr: "\(name): not found on PATH"))
    }
}

/// A close-on-exec pipe.
private struct Pipe2 {
    var read: Int32
    var write: Int32

    init() throws {
        var fds: [Int32] = [0, 0]
        try check("pipe", cshim_pipe_cloexec(&fds))
        read = fds[0]
        write = fds[1]
    }

    /// Hands one end over: this value no longer closes it.
    mutating func take(_ end: WritableKeyPath<Pipe2, Int32>) -> Int32 {
        let fd = self[keyPath: end]
        self[keyPath: end] = -1
        return fd
    }

    mutating func closeRead() { if read >= 0 { close(read); read = -1 } }
    mutating func closeWrite() { if write >= 0 { close(write); write = -1 } }
    mutating func closeBoth() { closeRead(); closeWrite() }
}

/// Moves bytes between us and a child: input to its stdin, its stdout and stderr into buffers,
/// all at once with poll, so a chatty child can never block on a full pipe; a pidfd tells when the
/// child itself has exited.
private struct ChildIO {
    enum Outcome { case finished, exited, deadline }

    var input: [UInt8]
    var written = 0
    var fds: [Int32]  // stdin (write end), stdout, stderr, the child's pidfd; -1 once closed
    var out: [UInt8] = []
    var err: [UInt8] = []
    var exitedAt: Double?

    init(input: [UInt8], stdin: Int32, stdout: Int32, stderr: Int32, exit: Int32) {
        self.input = input
        fds = [stdin, stdout, stderr, exit]
        _ = fcntl(stdin, F_SETFL, fcntl(stdin, F_GETFL) | O_NONBLOCK)
        if input.isEmpty { closeFD(0) }
    }

    /// True while the child may still produce output.
    var open: Bool { fds[1] >= 0 || fds[2] >= 0 }

    /// Runs until both output pipes reach end of file (`finished`), a second after the child exited
    /// with a pipe still open (`exited`), or `deadline` (monotonic seconds) passes (`deadline`).
    mutating func pump(until deadline: Double?) -> Outcome {
        while open {
            let now = Monotonic.now()
            if let deadline, now >= deadline { return .deadline }
            if let exitedAt, now >= exitedAt + 1 { return .exited }
            let limits = [deadline, exitedAt.map { $0 + 1 }, now + 1].compactMap { $0 }
            let wait = Int32(max(0, ((limits.min() ?? now + 1) - now) * 1000).rounded(.up))
            var polled = fds.enumerated().map { i, fd in pollfd(fd: fd, events: Int16(i == 0 ? POLLOUT : POLLIN), revents: 0) }
            if Glibc.poll(&polled, nfds_t(polled.count), wait) < 0 { continue } // EINTR: go round
            for i in 0..<4 where fds[i] >= 0 && polled[i].revents != 0 { service(i) }
        }
        return .finished
    }

    private mutating func service(_ i: Int) {
        switch i {
        case 0:
            let n = input[written...].withUnsafeBytes { Glibc.write(fds[0], $0.baseAddress, $0.count) }
            if n > 0 { written += n }
            // EPIPE (the child closed its stdin) or all written: nothing more to send.
            if written == input.count || (n < 0 && cshim_errno() != EAGAIN && cshim_errno() != EINTR) { closeFD(0) }
        case 3:
            exitedAt = Monotonic.now()
            closeFD(3)
        default:
            var buffer = [UInt8](repeating: 0, count: 65_536)
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fds[i], $0.baseAddress, $0.count) }
            if n > 0 {
                if i == 1 { keep(&out, buffer[0..<n]) } else { keep(&err, buffer[0..<n]) }
            } else if n == 0 || (cshim_errno() != EINTR && cshim_errno() != EAGAIN) {
                closeFD(i)
            }
        }
    }

    private func keep(_ sink: inout [UInt8], _ bytes: ArraySlice<UInt8>) {
        let room = Command.outputLimit - sink.count
        if room > 0 { sink += bytes.prefix(room) }
    }

    mutating func closeFD(_ i: Int) {
        if fds[i] >= 0 { close(fds[i]); fds[i] = -1 }
    }

    mutating func closeAll() { for i in fds.indices { closeFD(i) } }
}
