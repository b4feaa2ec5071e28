import Foundation
import Glibc
import SystemCalls
import Dataplane

/// A long-running helper process (app server, mesh proxy) with its output in a log file.
public final class ManagedProcess: Sendable {
    /// The process.
    public let child: ChildProcess
    /// Where stdout and stderr go.
    public let logPath: String

    /// Starts `executable` with `arguments`, output appended to `logPath`; with `cgroup` (a cgroup v2
    /// path), in that group from its first instruction, so every socket it makes belongs to it.
    public init(_ executable: String, _ arguments: [String], logPath: String, environment: [String: String]? = nil,
                cgroup: String? = nil) throws {
        let (executable, arguments) = try ManagedProcess.inCgroup(cgroup, executable, arguments)
        let log = open(logPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard log >= 0 else { throw SystemError("open \(logPath)", code: errno) }
        defer { close(log) }
        let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { close(null) }
        child = try ChildProcess.spawn(executable, arguments, environment: environment, stdin: null, stdout: log, stderr: log)
        self.logPath = logPath
    }

    /// The command that runs `executable` inside `cgroup` (unchanged when nil): a shell moves
    /// itself into the group, then execs the program.
    public static func inCgroup(_ cgroup: String?, _ executable: String, _ arguments: [String]) throws -> (String, [String]) {
        guard let cgroup else { return (executable, arguments) }
        let procs = try Cgroup.mountPoint() + cgroup + "/cgroup.procs"
        return ("/bin/sh", ["-c", "echo $$ > \"$0\" && exec \"$@\"", procs, executable] + arguments)
    }

    /// The pid.
    public var pid: Int32 { child.pid }

    /// True while it runs.
    public var isRunning: Bool { child.isRunning }

    /// The exit status once it has exited (the code, or 128 + signal), else nil.
    public var exitStatus: Int32? { child.poll() }

    /// Waits for exit; returns the status.
    @discardableResult
    public func wait() -> Int32 { child.wait() }

    /// SIGTERM, then SIGKILL after `grace` seconds; waits for exit.
    public func stop(grace: Double = 2) {
        guard child.isRunning else { return }
        child.signal(SIGTERM)
        let deadline = Monotonic.now() + grace
        while child.isRunning && Monotonic.now() < deadline { usleep(10_000) }
        child.signal(SIGKILL)
        child.wait()
    }

    /// SIGKILL, then waits.
    public func kill9() {
        child.signal(SIGKILL)
        child.wait()
    }

    /// The log's contents.
    public func log() -> String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
}

/// Where the project's own executables are: `REDIRECT_BIN_DIR`, else beside the running binary
/// (SwiftPM puts tests and executables in one build folder).
public enum LabBinaries {
    /// The directory.
    public static var directory: String {
        if let d = ProcessInfo.processInfo.environment["REDIRECT_BIN_DIR"], !d.isEmpty { return d }
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var dir = URL(fileURLWithPath: exe).deletingLastPathComponent()
        // A test bundle lives in .../debug/Foo.xctest on some layouts.
        if dir.path.hasSuffix(".xctest") { dir = dir.deletingLastPathComponent() }
        return dir.path
    }

    /// The compiled BPF object, found as the agent finds it.
    public static func bpfObject() throws -> String {
        let p = EBPFOptions.defaultObjectPath(besides: directory)
        guard FileManager.default.fileExists(atPath: p) else { throw LabError("\(p) not found: run `make bpf` or set REDIRECT_BPF_OBJECT") }
        return p
    }

    /// A file of the source tree (`scripts/...`), found upwards from the binaries' folder.
    public static func repoFile(_ relative: String) throws -> String {
        var dir = URL(fileURLWithPath: directory)
        while dir.path != "/" {
            let candidate = dir.appendingPathComponent(relative).path
            if FileManager.default.fileExists(atPath: candidate) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        throw LabError("\(relative) not found above \(directory)")
    }

    /// The Python of the tools venv (`.venv-tools`, which scripts/test.sh fills: grpcio for the CRI client).
    public static func toolsPython() throws -> String {
        let venv = try repoFile(".venv-tools")
        guard FileManager.default.isExecutableFile(atPath: "\(venv)/bin/python") else { throw LabError("\(venv)/bin/python missing: run scripts/test.sh") }
        return "\(venv)/bin/python"
    }

    /// Full path of one of the project's executables, checked to exist.
    public static func path(_ name: String) throws -> String {
        let p = "\(directory)/\(name)"
        guard FileManager.default.isExecutableFile(atPath: p) else {
            throw LabError("\(p) not found: run `swift build` first or set REDIRECT_BIN_DIR")
        }
        return p
    }
}
