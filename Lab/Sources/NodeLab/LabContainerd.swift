import Foundation
import SystemCalls

/// A node's container runtime: Debian's containerd with its CRI plugin, run in the node's network
/// namespace with its own root, state, socket and runc root under the node's folder. Pods are
/// sandboxes it makes when told to over CRI (`scripts/cri.py` makes the kubelet's calls), so the
/// CNI configuration it picks, the CNI_ARGS it passes and its ADD and DEL are the runtime's own.
public final class LabContainerd: Sendable {
    /// The sandbox image every pod runs (a static pause, built and imported at start: no registry
    /// can be reached).
    public static let sandboxImage = "registry.lab/ra-pause:1"
    /// Its folder.
    public let directory: String
    /// The CRI (and containerd) gRPC socket.
    public var socket: String { "\(directory)/containerd.sock" }
    private let process: ManagedProcess

    /// A sandbox the runtime made: its id (the runtime's K8S_POD_INFRA_CONTAINER_ID), addresses and
    /// network namespace.
    public struct Sandbox: Sendable {
        /// Its id.
        public var id: String
        /// Its addresses, as the runtime reports them from the CNI result.
        public var ips: [IPAddress]
        /// The path of its network namespace (the runtime's own, under its state folder).
        public var netns: String
    }

    /// Starts containerd for `node` and imports the sandbox image.
    init(node: LabNode) throws {
        directory = "\(node.directory)/containerd"
        try FileManager.default.createDirectory(atPath: "\(directory)/cni-bin", withIntermediateDirectories: true)
        try Self.linkPlugins(into: "\(directory)/cni-bin", from: ["/usr/lib/cni", node.cniBinDir])
        let config = try Self.config(directory: directory, cniConfDir: node.cniConfDir)
        try config.write(toFile: "\(directory)/config.toml", atomically: true, encoding: .utf8)
        let containerd = try Command.resolve("containerd")
        process = try ManagedProcess("/usr/bin/nsenter", ["--net=\(node.netns.path)", containerd, "--config", "\(directory)/config.toml"],
                                     logPath: "\(directory)/containerd.log")
        do {
            try waitUntilServing()
            let image = "\(directory)/pause.tar"
            _ = try Self.cri(["pause-image", "--out", image, "--ref", Self.sandboxImage])
            try Command.run(try Command.resolve("ctr"), ["--address", socket, "-n", "k8s.io", "images", "import", image])
        } catch {
            stop()
            throw error
        }
    }

    /// RunPodSandbox, as the kubelet calls it; its cgroups go below `cgroupParent` (cgroupfs
    /// layout, relative to each hierarchy's root).
    public func runPodSandbox(name: String, namespace: String, uid: String, cgroupParent: String) throws -> Sandbox {
        let r = try Self.cri(["run", "--socket", socket, "--name", name, "--namespace", namespace, "--uid", uid,
                              "--cgroup-parent", cgroupParent, "--log-dir", "\(directory)/pods/\(uid)"])
        guard let id = r["id"] as? String, let netns = r["netns"] as? String, let ips = r["ips"] as? [String] else {
            throw LabError("RunPodSandbox \(namespace)/\(name): unexpected answer \(r)")
        }
        return Sandbox(id: id, ips: ips.compactMap(IPAddress.init), netns: netns)
    }

    /// StopPodSandbox (the runtime's CNI DEL), then RemovePodSandbox.
    public func removePodSandbox(_ id: String) throws {
        _ = try Self.cri(["stop", "--socket", socket, "--id", id])
        _ = try Self.cri(["remove", "--socket", socket, "--id", id])
    }

    /// Stops containerd (its sandboxes must be removed first), and removes the empty folders
    /// containerd 1.6 always makes under /run/containerd (shim sockets) when no other containerd
    /// uses them.
    public func stop() {
        process.stop(grace: 5)
        for dir in ["/run/containerd/s", "/run/containerd/runc/k8s.io", "/run/containerd/runc", "/run/containerd"] { rmdir(dir) }
    }

    private func waitUntilServing() throws {
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if FileManager.default.fileExists(atPath: socket), (try? Self.cri(["version", "--socket", socket])) != nil { return }
            if !process.isRunning { break }
            usleep(50_000)
        }
        throw LabError("containerd did not start: \(process.log().suffix(3000))")
    }

    /// containerd's defaults with every path moved under `directory`, the lab's CNI
    /// configuration and plugins, the local sandbox image, and OOM scores kept within its own
    /// (setting -998 needs CAP_SYS_RESOURCE, which this machine withholds).
    static func config(directory: String, cniConfDir: String) throws -> String {
        var text = try Command.run(try Command.resolve("containerd"), ["config", "default"])
        let edits: [(String, String)] = [
            ("root = \"/var/lib/containerd\"", "root = \"\(directory)/root\""),
            ("state = \"/run/containerd\"", "state = \"\(directory)/state\""),
            ("address = \"/run/containerd/containerd.sock\"", "address = \"\(directory)/containerd.sock\""),
            ("path = \"/opt/containerd\"", "path = \"\(directory)/opt\""),
            ("sandbox_image = \"registry.k8s.io/pause:3.6\"", "sandbox_image = \"\(sandboxImage)\""),
            ("bin_dir = \"/opt/cni/bin\"", "bin_dir = \"\(directory)/cni-bin\""),
            ("conf_dir = \"/etc/cni/net.d\"", "conf_dir = \"\(cniConfDir)\""),
            ("restrict_oom_score_adj = false", "restrict_oom_score_adj = true"),
            // Sandbox namespaces under the state folder, not /run/netns: a lab that crashes leaves
            // them where its sweep finds them (it unmounts everything below the run's folder).
            ("netns_mounts_under_state_dir = false", "netns_mounts_under_state_dir = true"),
            // runc's state for the CRI runtime, under the lab too (the only `Root = ""`: the runc
            // options; default /run/containerd/runc).
            ("Root = \"\"", "Root = \"\(directory)/runc\""),
        ]
        for (old, new) in edits {
            guard text.contains(old) else { throw LabError("containerd's default config has no \(old)") }
            text = text.replacingOccurrences(of: old, with: new)
        }
        return text
    }

    /// containerd looks in one plugin folder: links every plugin there, later folders winning.
    static func linkPlugins(into dir: String, from sources: [String]) throws {
        for source in sources {
            for name in (try? FileManager.default.contentsOfDirectory(atPath: source)) ?? [] {
                let link = "\(dir)/\(name)"
                try? FileManager.default.removeItem(atPath: link)
                try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: "\(source)/\(name)")
            }
        }
    }

    /// Runs the CRI client and returns its JSON answer.
    static func cri(_ arguments: [String]) throws -> [String: Any] {
        let r = try Command.capture(try LabBinaries.toolsPython(), [try LabBinaries.repoFile("scripts/cri.py")] + arguments)
        let line = r.stdout.split(separator: "\n").last.map(String.init) ?? ""
        let json = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any]
        guard r.status == 0, let json else { throw LabError("cri.py \(arguments.first ?? ""): exit \(r.status): \(r.stdout)\(r.stderr)") }
        return json
    }
}
