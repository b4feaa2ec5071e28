import Foundation

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
    public static func capture(_ executable: String, _ arguments: [String], environment: [String: String]? = nil, input: String? = nil) throws -> CommandResult {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable.hasPrefix("/") ? executable : try resolve(executable))
        p.arguments = arguments
        if let environment { p.environment = environment }
        let outPipe = Pipe(), errPipe = Pipe(), inPipe = Pipe()
        p.standardOutput = outPipe
        p.standardError = errPipe
        p.standardInput = inPipe
        try p.run()
        if let input { inPipe.fileHandleForWriting.write(Data(input.utf8)) }
        try? inPipe.fileHandleForWriting.close()
        // stderr is drained on its own thread so a chatty child cannot block on a full pipe.
        let errData = ResultSlot<Data>()
        let errReader = errPipe.fileHandleForReading
        DedicatedThread.detach { errData.fill(errReader.readDataToEndOfFile()) }
        let outData = outPipe.fileHandleForReading.readDataToEndOfFile()
        let errBytes = errData.wait()
        p.waitUntilExit()
        let status = p.terminationReason == .uncaughtSignal ? 128 + p.terminationStatus : p.terminationStatus
        return CommandResult(status: status, stdout: String(decoding: outData, as: UTF8.self), stderr: String(decoding: errBytes, as: UTF8.self))
    }

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
