import AgentCore
import Foundation
import SystemCalls
import Testing

/// Finding the kubelet for `--kubelet-cgroup auto`, over a fake /proc.
@Suite("kubelet discovery")
struct KubeletProcessTests {
    @Test("the process named kubelet gives its cgroup; none named so gives nil")
    func discovery() throws {
        guard let mount = try? Cgroup.mountPoint() else { Issue.record("cannot run: no cgroup2 mount"); return }
        let root = NSTemporaryDirectory() + "proc-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let group = try Cgroup.create(path: "/ra-kubelet-\(UInt32.random(in: 0..<UInt32.max))")
        defer { try? group.remove() }
        func process(_ pid: Int, _ comm: String, _ cgroup: String) throws {
            try FileManager.default.createDirectory(atPath: "\(root)/\(pid)", withIntermediateDirectories: true)
            try "\(comm)\n".write(toFile: "\(root)/\(pid)/comm", atomically: true, encoding: .utf8)
            try "0::\(cgroup)\n".write(toFile: "\(root)/\(pid)/cgroup", atomically: true, encoding: .utf8)
        }
        try process(10, "containerd", "/")
        try process(11, "kubelet-helper", "/")
        #expect(KubeletProcess.cgroup(procRoot: root) == nil, "no process is named exactly kubelet")
        try process(12, "kubelet", group.path)
        _ = mount
        #expect(KubeletProcess.cgroup(procRoot: root) == group)
    }
}
