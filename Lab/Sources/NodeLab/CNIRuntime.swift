import Foundation
import SystemCalls

/// A CNI error result (spec 1.0.0: `code`, `msg`, `details`) or a plugin that failed to run.
public struct CNIError: Error, CustomStringConvertible {
    /// The plugin type.
    public var plugin: String
    /// The CNI command.
    public var command: String
    /// The spec's error code, when the plugin printed one.
    public var code: Int?
    /// The message.
    public var message: String
    /// One line.
    public var description: String { "CNI \(command) \(plugin) failed (code \(code.map(String.init) ?? "-")): \(message)" }
}

/// Who a pod is, as a runtime tells CNI plugins through CNI_ARGS.
public struct PodIdentity: Sendable, Codable, Hashable {
    /// Pod name.
    public var name: String
    /// Kubernetes namespace.
    public var namespace: String
    /// Pod UID.
    public var uid: String
    /// Container (sandbox) ID.
    public var containerID: String
    /// Pod labels, passed as `POD_LABELS=k:v,k:v` in CNI_ARGS (the CNI library splits pairs on `=`) (runtimes pass no labels; the
    /// agent's selection seam also reads a node-local file).
    public var labels: [String: String]

    /// Creates an identity.
    public init(name: String, namespace: String, uid: String, containerID: String, labels: [String: String] = [:]) {
        self.name = name; self.namespace = namespace; self.uid = uid; self.containerID = containerID; self.labels = labels
    }

    /// The CNI_ARGS string a kubelet/containerd passes.
    public var cniArgs: String {
        var s = "IgnoreUnknown=1;K8S_POD_NAMESPACE=\(namespace);K8S_POD_NAME=\(name);K8S_POD_INFRA_CONTAINER_ID=\(containerID);K8S_POD_UID=\(uid)"
        if !labels.isEmpty { s += ";POD_LABELS=" + labels.sorted { $0.key < $1.key }.map { "\($0.key):\($0.value)" }.joined(separator: ",") }
        return s
    }
}

/// Executes CNI plugins exactly as a container runtime does: one process per plugin, CNI_*
/// variables, the network configuration on stdin with `prevResult` threaded through the chain,
/// DEL in reverse order. Plugins run inside the node's network namespace (via nsenter), which is
/// the "host" side for them.
public struct CNIRuntime: Sendable {
    /// The node namespace the plugins run in.
    public var hostNamespace: NetworkNamespace
    /// Directories searched for plugin binaries (CNI_PATH).
    public var pluginDirectories: [String]

    /// Creates a runtime.
    public init(hostNamespace: NetworkNamespace, pluginDirectories: [String]) {
        self.hostNamespace = hostNamespace
        self.pluginDirectories = pluginDirectories
    }

    /// Loads the network list a runtime would use from `directory`: the lexically first
    /// `.conflist`, `.conf` or `.json` file. A single-plugin `.conf` is wrapped into a list.
    public static func loadNetworkList(directory: String) throws -> [String: Any] {
        let files = try FileManager.default.contentsOfDirectory(atPath: directory)
            .filter { $0.hasSuffix(".conflist") || $0.hasSuffix(".conf") || $0.hasSuffix(".json") }
            .sorted()
        guard let first = files.first else {
            throw CNIError(plugin: "-", command: "load", code: nil, message: "no network configuration in \(directory)")
        }
        let data = try Data(contentsOf: URL(fileURLWithPath: "\(directory)/\(first)"))
        guard var obj = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw CNIError(plugin: "-", command: "load", code: nil, message: "\(first): not a JSON object")
        }
        if obj["plugins"] == nil {
            let version = obj["cniVersion"] ?? "1.0.0"
            let name = obj["name"] ?? "net"
            obj = ["cniVersion": version, "name": name, "plugins": [obj]]
        }
        return obj
    }

    /// Runs ADD for every plugin of `list`; returns the final result.
    public func add(list: [String: Any], pod: PodIdentity, netns: NetworkNamespace, ifname: String = "eth0") throws -> [String: Any] {
        var prev: [String: Any]? = nil
        for plugin in plugins(list) {
            prev = try invoke("ADD", plugin: plugin, list: list, prevResult: prev, pod: pod, netns: netns, ifname: ifname)
        }
        return prev ?? [:]
    }

    /// Runs DEL for every plugin in reverse order. Every plugin is called even if one fails;
    /// the first error is thrown at the end.
    public func del(list: [String: Any], result: [String: Any]?, pod: PodIdentity, netns: NetworkNamespace?, ifname: String = "eth0") throws {
        var firstError: Error?
        for plugin in plugins(list).reversed() {
            do {
                _ = try invoke("DEL", plugin: plugin, list: list, prevResult: result, pod: pod, netns: netns, ifname: ifname)
            } catch {
                if firstError == nil { firstError = error }
            }
        }
        if let firstError { throw firstError }
    }

    private func plugins(_ list: [String: Any]) -> [[String: Any]] {
        (list["plugins"] as? [[String: Any]]) ?? []
    }

    /// Runs one plugin binary and parses its stdout.
    public func invoke(_ command: String, plugin: [String: Any], list: [String: Any], prevResult: [String: Any]?,
                       pod: PodIdentity, netns: NetworkNamespace?, ifname: String) throws -> [String: Any]? {
        let type = plugin["type"] as? String ?? ""
        var conf = plugin
        conf["cniVersion"] = list["cniVersion"] ?? "1.0.0"
        conf["name"] = list["name"] ?? "net"
        if let prevResult { conf["prevResult"] = prevResult }
        let stdin = String(decoding: try JSONSerialization.data(withJSONObject: conf, options: [.sortedKeys]), as: UTF8.self)
        let binary = try findPlugin(type)
        var env = ProcessInfo.processInfo.environment
        env["CNI_COMMAND"] = command
        env["CNI_CONTAINERID"] = pod.containerID
        env["CNI_NETNS"] = netns?.path ?? ""
        env["CNI_IFNAME"] = ifname
        env["CNI_ARGS"] = pod.cniArgs
        env["CNI_PATH"] = pluginDirectories.joined(separator: ":")
        let r = try Command.capture("nsenter", ["--net=\(hostNamespace.path)", "--", binary], environment: env, input: stdin)
        let out = r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let parsed = out.isEmpty ? nil : (try? JSONSerialization.jsonObject(with: Data(out.utf8))) as? [String: Any]
        if r.status != 0 {
            throw CNIError(plugin: type, command: command, code: parsed?["code"] as? Int,
                           message: (parsed?["msg"] as? String ?? out) + (r.stderr.isEmpty ? "" : " [stderr: \(r.stderr.trimmingCharacters(in: .whitespacesAndNewlines))]"))
        }
        if command == "ADD" && parsed == nil {
            throw CNIError(plugin: type, command: command, code: nil, message: "ADD printed no result: \(out)")
        }
        return parsed ?? prevResult
    }

    private func findPlugin(_ type: String) throws -> String {
        for dir in pluginDirectories where FileManager.default.isExecutableFile(atPath: "\(dir)/\(type)") {
            return "\(dir)/\(type)"
        }
        throw CNIError(plugin: type, command: "find", code: nil, message: "plugin \(type) not found in \(pluginDirectories)")
    }

    /// The pod's addresses from a CNI result's `ips`.
    public static func addresses(in result: [String: Any]) -> [IPAddress] {
        let ips = result["ips"] as? [[String: Any]] ?? []
        return ips.compactMap { ($0["address"] as? String).flatMap { IPPrefix($0)?.ip } }
    }
}
