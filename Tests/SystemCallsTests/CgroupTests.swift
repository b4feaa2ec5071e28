import Foundation
import SystemCalls
import Testing

/// cgroup v2 identities: paths checked before they reach iptables rules, ids read from the kernel.
@Suite("cgroup identities")
struct CgroupTests {
    @Test("paths that are relative, climb, or could break an iptables rule are refused",
          arguments: ["relative", "/a/../b", "/a/./b", "/with space", "/quote\"d", "/quote'd", "/back\\slash", "/tab\there", "/nul\0x", "/ünïcode"])
    func refused(_ path: String) {
        #expect(throws: SystemError.self) { try Cgroup(path: path) }
    }

    @Test("a group made here has the id the kernel reports for this process's sockets' cgroup, and goes away")
    func realGroup() throws {
        guard let mount = try? Cgroup.mountPoint() else { Issue.record("cannot run: no cgroup2 mount"); return }
        let path = "/ra-test-\(UInt32.random(in: 0..<UInt32.max))"
        let made = try Cgroup.create(path: path)
        defer { try? made.remove() }
        var st = stat()
        #expect(stat(mount + path, &st) == 0 && UInt64(st.st_ino) == made.id)
        #expect(try Cgroup(path: path + "/") == made, "a trailing slash names the same group")
        try made.remove()
        #expect(!FileManager.default.fileExists(atPath: mount + path))
        #expect(throws: SystemError.self) { try Cgroup(path: path) }
    }

    @Test("a process's own group is read from /proc")
    func ofProcess() throws {
        guard (try? Cgroup.mountPoint()) != nil else { Issue.record("cannot run: no cgroup2 mount"); return }
        let mine = try Cgroup.of(pid: getpid())
        let line = try String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8).split(separator: "\n").first { $0.hasPrefix("0::") }
        #expect(mine.path == String(line!.dropFirst(3)) || mine.path == "/" + String(line!.dropFirst(3)).split(separator: "/").joined(separator: "/"))
    }
}
