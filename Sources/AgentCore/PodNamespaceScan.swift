import Foundation
import SystemCalls

/// Finds a running pod's network namespace without its CNI ADD (a pod that started before this
/// agent did, or whose ADD the agent never recorded): a process whose cgroup path places it in the
/// pod, by the first pod-level component of the path, as the kubelet names it
/// (`/kubepods/besteffort/pod<uid>/...` with the cgroupfs driver,
/// `kubepods-besteffort-pod<uid with underscores>.slice` with systemd: a group a pod's own process
/// makes below its container cannot name another pod), then the runtime's bind mount of that
/// process's namespace (the same inode) under /run/netns. A namespace with no bind mount is not
/// taken: /proc/PID/ns/net would name whatever process holds that pid later.
public enum PodNamespaceScan {
    /// The first pod-level component of a cgroup path: `pod<uid>`, or a systemd `...-pod<uid>.slice`
    /// (its UID with underscores for dashes).
    static func podComponent(_ path: Substring) -> String? {
        for part in path.split(separator: "/") {
            if part.hasPrefix("pod") { return String(part.dropFirst(3)) }
            if part.hasSuffix(".slice"), let r = part.range(of: "-pod", options: .backwards) {
                return String(part[r.upperBound..<part.index(part.endIndex, offsetBy: -6)]).replacingOccurrences(of: "_", with: "-")
            }
        }
        return nil
    }

    /// Whether a /proc/PID/cgroup text places the process in the pod with `uid`.
    public static func names(pod uid: String, cgroupText: String) -> Bool {
        cgroupText.split(separator: "\n").contains { line in
            podComponent(line.split(separator: ":", maxSplits: 2).last ?? "") == uid
        }
    }

    /// The namespace path of the pod with `uid`, nil when no process of it is found or its
    /// namespace has no bind mount.
    public static func find(uid: String, procRoot: String = "/proc", bindMountDirectories: [String] = ["/run/netns", "/var/run/netns"]) -> String? {
        let fm = FileManager.default
        guard let entries = try? fm.contentsOfDirectory(atPath: procRoot) else { return nil }
        for pid in entries where Int32(pid) != nil {
            guard let text = try? String(contentsOfFile: "\(procRoot)/\(pid)/cgroup", encoding: .utf8), names(pod: uid, cgroupText: text) else { continue }
            guard let id = try? NetworkNamespace(path: "\(procRoot)/\(pid)/ns/net").identity() else { continue }
            for dir in bindMountDirectories {
                for name in (try? fm.contentsOfDirectory(atPath: dir)) ?? [] where (try? NetworkNamespace(path: "\(dir)/\(name)").identity()) == id {
                    return "\(dir)/\(name)"
                }
            }
        }
        return nil
    }
}
