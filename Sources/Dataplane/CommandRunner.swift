import Foundation
import SystemCalls

/// The seam between dataplane logic and the programs it runs (iptables-restore, ip, ipset):
/// the real runner executes them, a recording runner lets pure logic be tested.
public protocol CommandRunner: Sendable {
    /// Runs `program` with `arguments` inside `netns` (nil: the runner's own namespace), `input` on stdin.
    func run(_ program: String, _ arguments: [String], netns: String?, input: String?, environment: [String: String]) throws -> CommandResult
}

extension CommandRunner {
    /// Runs and throws ``CommandError`` on a non-zero exit; returns stdout.
    @discardableResult
    public func checked(_ program: String, _ arguments: [String], netns: String? = nil, input: String? = nil, environment: [String: String] = [:]) throws -> String {
        let r = try run(program, arguments, netns: netns, input: input, environment: environment)
        if r.status != 0 {
            throw CommandError(command: ([program] + arguments).joined(separator: " ") + (netns.map { " (in \($0))" } ?? ""), result: r)
        }
        return r.stdout
    }
}

/// Runs programs for real; `nsenter --net` enters a pod's namespace (never `ip netns exec`,
/// which remounts /sys and hides bpffs).
public struct ProcessRunner: CommandRunner {
    /// The namespace used when a call names none (the node's, in the lab); nil: this process's.
    public var defaultNetns: String?
    /// A cgroup namespace every program runs in (nil: this process's). iptables resolves
    /// `-m cgroup --path` in the cgroup namespace of the process that inserts the rule (Linux
    /// 6.1+), so an agent in a container's own cgroup namespace runs it in the node's.
    public var cgroupNamespace: String?
    /// Seconds a program may run before it is killed and its call fails (a wedged iptables must
    /// not wedge the agent).
    public var timeout: Double
    /// Creates a runner.
    public init(defaultNetns: String? = nil, timeout: Double = 30, cgroupNamespace: String? = nil) {
        self.defaultNetns = defaultNetns; self.timeout = timeout; self.cgroupNamespace = cgroupNamespace
    }

    /// Runs one program.
    public func run(_ program: String, _ arguments: [String], netns: String?, input: String?, environment: [String: String]) throws -> CommandResult {
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        let namespaces = (netns ?? defaultNetns).map { ["--net=\($0)"] } ?? []
        let cgroup = cgroupNamespace.map { ["--cgroup=\($0)"] } ?? []
        guard !namespaces.isEmpty || !cgroup.isEmpty else {
            return try Command.capture(program, arguments, environment: env, input: input, timeout: timeout)
        }
        return try Command.capture("nsenter", namespaces + cgroup + ["--", try Command.resolve(program)] + arguments, environment: env, input: input,
                                   timeout: timeout)
    }
}
