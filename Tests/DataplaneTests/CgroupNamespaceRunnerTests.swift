import CShim
import Dataplane
import Foundation
import Glibc
import SystemCalls
import Testing

/// An agent in a container has a cgroup namespace of its own, and iptables resolves `-m cgroup
/// --path` in the namespace of the process that loads the rule: the runner runs it in the node's.
@Suite("Programs in the node's cgroup namespace", .serialized)
struct CgroupNamespaceRunnerTests {
    @Test("iptables-restore from a container's cgroup namespace cannot find a node path; through the runner's node namespace it can")
    func iptablesPath() throws {
        if getuid() != 0 { Issue.record("cannot run: needs root (namespaces, cgroups, iptables)"); return }
        guard let mount = try? Cgroup.mountPoint() else { Issue.record("cannot run: no cgroup2 mount"); return }
        let base = "/ra-test-\(UInt32.random(in: 0..<UInt32.max))"
        let groups = try [base, base + "/agent", base + "/proxy"].map { try Cgroup.create(path: $0) }
        defer { for g in groups.reversed() { try? g.remove() } }
        let netns = "ra-test-ns-\(UInt32.random(in: 0..<UInt32.max))"
        try Command.run("ip", ["netns", "add", netns])
        defer { _ = try? Command.run("ip", ["netns", "del", netns]) }

        // A process whose cgroup namespace is rooted at the agent's group, as a container's is.
        let null = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { close(null) }
        let holder = try ChildProcess.spawn("/bin/sh", ["-c", "echo $$ > \"$0\" && exec unshare --cgroup sleep 30", mount + base + "/agent/cgroup.procs"],
                                            stdin: null, stdout: null, stderr: null)
        defer { holder.signal(SIGKILL); _ = holder.wait() }
        let container = "/proc/\(holder.pid)/ns/cgroup", node = "/proc/\(getpid())/ns/cgroup"
        for _ in 0..<200 where (try? FileManager.default.destinationOfSymbolicLink(atPath: container)) == (try? FileManager.default.destinationOfSymbolicLink(atPath: node)) {
            usleep(10_000)
        }
        let rules = "*filter\n-A OUTPUT -m cgroup --path \(base)/proxy -j ACCEPT\nCOMMIT\n"
        let path = "/run/netns/\(netns)"
        let fd = try check("open \(container)", open(container, O_RDONLY | O_CLOEXEC))
        defer { close(fd) }
        let (inContainer, throughNode) = try DedicatedThread.run { () throws -> (CommandResult, CommandResult) in
            if cshim_setns(fd, cshim_clone_newcgroup()) != 0 { throw SystemError("setns", code: cshim_errno()) }
            let plain = try ProcessRunner(defaultNetns: path).run("iptables-restore", ["-w"], netns: nil, input: rules, environment: [:])
            let node = try ProcessRunner(defaultNetns: path, cgroupNamespace: node).run("iptables-restore", ["-w"], netns: nil, input: rules, environment: [:])
            return (plain, node)
        }
        #expect(inContainer.status != 0, "the presence this test needs: the path does not resolve in the container's namespace")
        #expect(throughNode.status == 0, "\(throughNode.stderr)")
        let listed = try ProcessRunner(defaultNetns: path).checked("iptables", ["-w", "-S", "OUTPUT"])
        #expect(listed.contains("--path \"\(base)/proxy\""), "\(listed)")
    }
}
