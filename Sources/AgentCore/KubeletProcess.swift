import Foundation
import SystemCalls

/// Finds the node's kubelet, so that only its connections are SNATed to the probe IP.
public enum KubeletProcess {
    /// The cgroup of the first process whose command name is `kubelet`; nil when none runs.
    public static func cgroup(procRoot: String = "/proc") -> Cgroup? {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: procRoot)) ?? []
        for pid in entries.compactMap(Int32.init) {
            let comm = (try? String(contentsOfFile: "\(procRoot)/\(pid)/comm", encoding: .utf8)) ?? ""
            if comm.trimmingCharacters(in: .whitespacesAndNewlines) == "kubelet", let c = try? Cgroup.of(pid: pid, procRoot: procRoot) { return c }
        }
        return nil
    }
}
