import CShim
import Foundation
import Glibc
import SystemCalls
import Testing

/// Finding another process's cgroup, as the agent finds the proxy's from its ZDS connection:
/// real groups, real processes in them, a real unix socket between them.
@Suite("cgroup lookup", .serialized)
struct CgroupLookupTests {
    /// A process that moves into `group`, then runs `command` (a shell command line).
    private func spawn(in group: Cgroup, _ command: String) throws -> ChildProcess {
        let procs = try Cgroup.mountPoint() + group.path + "/cgroup.procs"
        let null = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { close(null) }
        return try ChildProcess.spawn("/bin/sh", ["-c", "echo $$ > \"$0\" && exec \(command)", procs], stdin: null, stdout: null, stderr: null)
    }

    private func stop(_ child: ChildProcess) {
        child.signal(SIGKILL)
        _ = child.wait()
    }

    private func groups(_ names: [String]) throws -> [Cgroup] {
        let base = "/ra-test-\(UInt32.random(in: 0..<UInt32.max))"
        return try [Cgroup.create(path: base)] + names.map { try Cgroup.create(path: base + "/" + $0) }
    }

    private func remove(_ groups: [Cgroup]) { for g in groups.reversed() { try? g.remove() } }

    @Test("the peer of a unix socket is found in its group, by its pid")
    func peer() throws {
        guard (try? Cgroup.mountPoint()) != nil else { Issue.record("cannot run: no cgroup2 mount"); return }
        let made = try groups(["proxy"])
        defer { remove(made) }
        let dir = NSTemporaryDirectory() + "ra-peer-\(UInt32.random(in: 0..<UInt32.max))"
        try PrivateDirectory.prepare(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let listener = try UnixSocket.listen(path: dir + "/zds.sock", type: cshim_sock_seqpacket())
        defer { listener.close() }
        let client = "import socket, time; s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); s.connect('\(dir)/zds.sock'); time.sleep(30)"
        let child = try spawn(in: made[1], "python3 -c \"\(client)\"")
        defer { stop(child) }
        try listener.setTimeout(seconds: 10)
        let conn = try listener.accept()
        defer { conn.close() }

        let (found, how) = try Cgroup.ofPeer(conn)
        #expect(found == made[1], "found by \(how)")
        #expect(try conn.peerProcessID() == child.pid)
    }

    @Test("a peer that has exited is not identified by its pid, which another process may hold by then",
          .enabled(if: KernelRelease.atLeast(6, 5), "SO_PEERPIDFD needs Linux 6.5 or later"))
    func exitedPeer() throws {
        guard (try? Cgroup.mountPoint()) != nil else { Issue.record("cannot run: no cgroup2 mount"); return }
        let made = try groups(["reused"])
        defer { remove(made) }
        let dir = NSTemporaryDirectory() + "ra-peer-\(UInt32.random(in: 0..<UInt32.max))"
        try PrivateDirectory.prepare(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let listener = try UnixSocket.listen(path: dir + "/zds.sock", type: cshim_sock_seqpacket())
        defer { listener.close() }
        // The connecting process leaves the socket to a child (which exits once the socket closes)
        // and waits to be killed.
        let client = "import os, socket, time; s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); s.connect('\(dir)/zds.sock'); "
            + "os.fork() == 0 and (s.recv(1), os._exit(0)); time.sleep(30)"
        let null = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { close(null) }
        let peer = try ChildProcess.spawn("/usr/bin/env", ["python3", "-c", client], stdin: null, stdout: null, stderr: null)
        defer { stop(peer) }
        try listener.setTimeout(seconds: 10)
        let conn = try listener.accept()
        defer { conn.close() }
        // /proc as it would read if the peer's pid now belonged to a process in another group.
        let proc = dir + "/proc"
        try FileManager.default.createDirectory(atPath: "\(proc)/\(peer.pid)", withIntermediateDirectories: true)
        try "0::\(made[1].path)\n".write(toFile: "\(proc)/\(peer.pid)/cgroup", atomically: true, encoding: .utf8)
        #expect(try Cgroup.ofPeer(conn, procRoot: proc).cgroup == made[1], "the presence: while the peer lives, its pid's group is read")
        stop(peer)
        #expect(throws: SystemError.self, "the peer is gone: its pid proves nothing") { try Cgroup.ofPeer(conn, procRoot: proc) }
    }

    @Test("a pid read from inside another cgroup namespace (as /proc shows it to a containerized agent: /../...) is named as the node names it")
    func outsideOwnNamespace() throws {
        guard (try? Cgroup.mountPoint()) != nil else { Issue.record("cannot run: no cgroup2 mount"); return }
        let made = try groups(["agent", "proxy"])
        defer { remove(made) }
        // A process whose cgroup namespace is rooted at the agent's group: its namespace is the one
        // an agent in a container would have.
        let holder = try spawn(in: made[1], "unshare --cgroup sleep 30")
        defer { stop(holder) }
        let proxy = try spawn(in: made[2], "sleep 30")
        defer { stop(proxy) }
        let namespace = "/proc/\(holder.pid)/ns/cgroup"
        try waitUntil { (try? FileManager.default.destinationOfSymbolicLink(atPath: namespace)) != (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/cgroup")) }
        let fd = try check("open \(namespace)", open(namespace, O_RDONLY | O_CLOEXEC))
        defer { close(fd) }
        let pid = proxy.pid
        let (seen, resolved) = try DedicatedThread.run { () throws -> (String, Cgroup) in
            if cshim_setns(fd, cshim_clone_newcgroup()) != 0 { throw SystemError("setns", code: cshim_errno()) }
            let text = try String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8)
            // The node's namespace is this process's (the main thread's); pid 1's on a node.
            return (text, try Cgroup.of(pid: pid, nodeNamespace: "/proc/\(getpid())/ns/cgroup"))
        }
        #expect(seen.contains("0::/../proxy"), "the presence this test needs: a path relative to another namespace: \(seen)")
        #expect(resolved == made[2])
    }

    private func waitUntil(_ condition: () -> Bool) throws {
        for _ in 0..<200 where !condition() { usleep(10_000) }
        guard condition() else { throw SystemError("timed out waiting for the helper", code: ETIMEDOUT) }
    }
}
