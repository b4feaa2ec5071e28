import Foundation
import Glibc
import Testing
@testable import SystemCalls

/// Subprocesses through posix_spawn: output, input, status, signals, deadlines, concurrency.
@Suite struct CommandTests {
    @Test("stdout and stderr of several MiB each arrive whole, with stdin of several MiB")
    func largeStreams() throws {
        // The child echoes its input to stdout and writes 3 MiB to stderr at the same time; a reader
        // that drained one pipe at a time would deadlock here.
        let input = String(repeating: "0123456789abcdef", count: 4 << 16) // 4 MiB
        let r = try Command.capture("/bin/sh", ["-c", "head -c 3145728 /dev/zero | tr '\\0' x >&2 & cat; wait"], input: input)
        #expect(r.status == 0)
        #expect(r.stdout.utf8.count == input.utf8.count)
        #expect(r.stdout == input)
        #expect(r.stderr.utf8.count == 3 << 20)
    }

    @Test("exit codes and signals are reported; run throws on failure with the stderr")
    func status() throws {
        #expect(try Command.capture("/bin/sh", ["-c", "exit 7"]).status == 7)
        #expect(try Command.capture("/bin/sh", ["-c", "kill -TERM $$"]).status == 128 + SIGTERM)
        do {
            try Command.run("/bin/sh", ["-c", "echo boom >&2; exit 3"])
            Issue.record("run did not throw")
        } catch let e as CommandError {
            #expect(e.result.status == 3)
            #expect(e.description.contains("boom"))
        }
        #expect(throws: SystemError.self) { try Command.capture("/nonexistent/program", []) }
        #expect(throws: CommandError.self) { try Command.capture("no-such-program-anywhere", []) }
    }

    @Test("a child sees default signal dispositions, the environment given, and none of our descriptors")
    func childEnvironment() throws {
        signal(SIGPIPE, SIG_IGN)
        // A descriptor without close-on-exec, as a library might leave one: the child must not get it.
        let leaky = open("/dev/null", O_RDONLY)
        defer { close(leaky) }
        #expect(leaky > 2)
        let r = try Command.capture("/bin/sh", ["-c", "grep -E '^SigIgn' /proc/self/status; echo \"v=$RA_TEST_VALUE\"; ls /proc/self/fd | wc -l"],
                                    environment: ["RA_TEST_VALUE": "42", "PATH": "/usr/bin:/bin"])
        let lines = r.stdout.split(separator: "\n").map(String.init)
        #expect(lines.count == 3)
        // Only the bits of standard signals: glibc keeps its internal real-time signals to itself.
        let ignored = UInt64(lines.first?.split(separator: "\t").last ?? "", radix: 16)
        #expect(ignored.map { $0 & 0x7fff_ffff } == 0, "SIGPIPE ignored in the parent must not be inherited: \(lines.first ?? "")")
        #expect(lines.dropFirst().first == "v=42")
        // 0, 1, 2 and the one ls opens for /proc/self/fd.
        #expect(Int(lines.last?.trimmingCharacters(in: .whitespaces) ?? "") == 4)
    }

    @Test("a child past its deadline is killed, silent or writing without pause")
    func deadline() throws {
        for script in ["sleep 30", "yes"] {
            let start = Monotonic.now()
            let r = try Command.capture("/bin/sh", ["-c", script], timeout: 0.3)
            #expect(r.status == 128 + SIGKILL, "\(script)")
            #expect(r.stderr.contains("still running after 0.3 s"), "\(script)")
            #expect(Monotonic.now() - start < 10, "\(script)")
            #expect(r.stdout.utf8.count <= Command.outputLimit, "\(script): output is bounded")
        }
    }

    @Test("a child that exits while something it started holds the pipes returns at once, with its own status")
    func grandchildHoldsPipes() throws {
        let start = Monotonic.now()
        let r = try Command.capture("/bin/sh", ["-c", "(sleep 27.125 &); echo hi; exit 3"])
        #expect(r.status == 3)
        #expect(r.stdout == "hi\n")
        #expect(!r.stderr.contains("killed"))
        #expect(Monotonic.now() - start < 10, "took \(Monotonic.now() - start) s")
        _ = try? Command.capture("pkill", ["-f", "^sleep 27.125$"]) // the grandchild, by its unique duration
    }

    @Test("twenty commands at once from twenty threads all finish with their own output")
    func concurrent() throws {
        let results = SharedResults([:])
        let group = DispatchGroup()
        for i in 0..<20 {
            group.enter()
            DedicatedThread.detach {
                let out = (try? Command.run("/bin/sh", ["-c", "echo \(i)"])) ?? "failed"
                results.set(i, out)
                group.leave()
            }
        }
        #expect(group.wait(timeout: .now() + 60) == .success)
        let got = results.value
        for i in 0..<20 { #expect(got[i] == "\(i)\n") }
    }
}

/// Results shared between threads (NSLock: the test needs a class it can capture).
private final class SharedResults: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: [Int: String]
    init(_ v: [Int: String]) { stored = v }
    var value: [Int: String] { lock.withLock { stored } }
    func set(_ k: Int, _ v: String) { lock.withLock { stored[k] = v } }
}
