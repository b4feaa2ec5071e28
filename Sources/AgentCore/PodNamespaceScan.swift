import Foundation
import SystemCalls

/// Finds a running pod's network namespace without its CNI ADD (a pod that started before this
/// agent did, or whose ADD the agent never recorded): a process whose cgroup path names the pod's
/// UID, in either of the kubelet's layouts (`/kubepods/besteffort/pod<uid>/...` with the cgroupfs
/// driver, `kubepods-besteffort-pod<uid with underscores>.slice` with systemd), then the runtime's
/// bind mount of that process's namespace (the same inode) under /run/netns, else the process's own
/// /proc/PID/ns/net.
public enum PodNamespaceScan {
    /// Whether a /proc/PID/cgroup text places the process in the pod with `uid`.
    public static func names(pod uid: String, cgroupText: String) -> Bool {
        let needles = ["pod" + uid, "pod" + uid.replacingOccurrences(of: "-", with: "_")]
        return cgroupText.split(separator: "\n").contains { line in
            let path = line.split(separator: ":", maxSplits: 2).last ?? ""
            return path.split(separator: "/").contains { part in needles.contains { part == $0 || part.hasSuffix("-\($0).slice") } }
        }
    }

    /// The namespace path of the pod with `uid`, nil when no process of it is found.
    public static func find(uid: String, procRoot: String = "/proc", bindMountDirectories: [String] = ["/run/netns", "/var/run/netns"]) -> String? {
        let fm = FileManager.default
        guard let entries = try? fm.contentsOfDirectory(atPath: procRoot) else { return nil }
        for pid in entries where Int32(pid) != nil {
            guard let text = try? String(contentsOfFile: "\(procRoot)/\(pid)/cgroup", encoding: .utf8), names(pod: uid, cgroupText: text) else { continue }
            let own = "\(procRoot)/\(pid)/ns/net"
            guard let id = try? NetworkNamespace(path: own).identity() else { continue }
            for dir in bindMountDirectories {
                for name in (try? fm.contentsOfDirectory(atPath: dir)) ?? [] where (try? NetworkNamespace(path: "\(dir)/\(name)").identity()) == id {
                    return "\(dir)/\(name)"
                }
            }
            return own
        }
        return nil
    }
}
