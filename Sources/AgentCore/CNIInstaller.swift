import Foundation
import Glibc

/// Installs redirect-cni into a node's CNI configuration the way runtimes will read it: the
/// lexically first `.conflist`/`.conf`/`.json` in the directory is the network, a single-plugin
/// `.conf` becomes a `.conflist`, our plugin is appended to its chain. Every write is a write to
/// a temporary name runtimes ignore plus a rename, so a runtime never reads half a file. The
/// original bytes are kept, so uninstalling restores the file exactly as it was.
public struct CNIInstaller: Sendable {
    /// The runtime's configuration directory (/etc/cni/net.d).
    public var confDir: String
    /// The runtime's plugin directory (/opt/cni/bin).
    public var binDir: String
    /// Where the original bytes are kept between install and uninstall.
    public var stateDir: String
    /// The plugin binary to copy.
    public var pluginBinary: String
    /// The agent's control socket, written into our plugin's entry.
    public var agentSocket: String
    /// Our plugin's entry in the chain.
    var pluginConfig: [String: Any] { ["type": Self.pluginType, "agentSocket": agentSocket] }

    /// The plugin type.
    public static let pluginType = "redirect-cni"

    /// Creates an installer.
    public init(confDir: String, binDir: String, stateDir: String, pluginBinary: String, agentSocket: String) {
        self.confDir = confDir; self.binDir = binDir; self.stateDir = stateDir; self.pluginBinary = pluginBinary
        self.agentSocket = agentSocket
    }

    /// What was installed.
    struct Record: Codable {
        var primary: String          // the file we edited (its current name)
        var originalName: String     // the file it was before (a .conf when we converted it)
        var original: Data           // its bytes before we touched it
        var written: Data            // what we wrote, to tell whether someone changed it since
    }

    /// The primary network configuration a runtime would use, nil when the directory has none.
    public func primaryFile() throws -> String? {
        try FileManager.default.contentsOfDirectory(atPath: confDir)
            .filter { $0.hasSuffix(".conflist") || $0.hasSuffix(".conf") || $0.hasSuffix(".json") }
            .filter { !$0.hasPrefix(".") }
            .sorted().first
    }

    /// Copies the plugin and inserts it into the primary configuration. Idempotent: returns false
    /// when our entry was already in place.
    @discardableResult
    public func install() throws -> Bool {
        try copyPlugin()
        guard let name = try primaryFile() else { throw InstallError("no CNI network configuration in \(confDir) yet") }
        let path = "\(confDir)/\(name)"
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        guard var obj = try JSONSerialization.jsonObject(with: bytes) as? [String: Any] else { throw InstallError("\(path) is not a JSON object") }
        var plugins: [[String: Any]]
        if let p = obj["plugins"] as? [[String: Any]] { plugins = p } else {
            // A single-plugin .conf: the network becomes a list with the same name.
            plugins = [obj]
            obj = ["cniVersion": obj["cniVersion"] ?? "1.0.0", "name": obj["name"] ?? "network"]
        }
        if plugins.contains(where: { $0["type"] as? String == Self.pluginType }) { return false }
        plugins.append(pluginConfig)
        obj["plugins"] = plugins
        let out = try JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys])
        let target = name.hasSuffix(".conflist") ? name : (name as NSString).deletingPathExtension + ".conflist"
        // Keep the first original we saw: after the primary CNI rewrites its file, that rewrite is the new original.
        try saveRecord(Record(primary: target, originalName: name, original: bytes, written: out))
        try atomicWrite(out, to: "\(confDir)/\(target)")
        if target != name { try FileManager.default.removeItem(atPath: path) }
        return true
    }

    /// Removes exactly our entry and binary. When nobody changed the file since we wrote it, the
    /// original bytes come back unchanged (a converted .conf returns under its own name).
    public func uninstall() throws {
        if let rec = try loadRecord() {
            let path = "\(confDir)/\(rec.primary)"
            let current = FileManager.default.contents(atPath: path)
            if current == rec.written {
                try atomicWrite(rec.original, to: "\(confDir)/\(rec.originalName)")
                if rec.originalName != rec.primary { try? FileManager.default.removeItem(atPath: path) }
            } else if let current, var obj = try JSONSerialization.jsonObject(with: current) as? [String: Any],
                      let plugins = obj["plugins"] as? [[String: Any]] {
                obj["plugins"] = plugins.filter { $0["type"] as? String != Self.pluginType }
                try atomicWrite(try JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys]), to: path)
            }
            try? FileManager.default.removeItem(atPath: recordPath)
        }
        try? FileManager.default.removeItem(atPath: "\(binDir)/\(Self.pluginType)")
    }

    /// Re-inserts our entry whenever the primary configuration loses it (the primary CNI
    /// rewrote its file), checking every `interval` seconds until `shouldStop` says so.
    public func watch(interval: Double = 0.5, shouldStop: () -> Bool = { false }, onChange: (String) -> Void = { _ in }) {
        while !shouldStop() {
            if let changed = try? install(), changed { onChange((try? primaryFile()) ?? "?") }
            usleep(UInt32(interval * 1_000_000))
        }
    }

    // MARK: files

    private var recordPath: String { "\(stateDir)/cni-install.json" }

    private func saveRecord(_ r: Record) throws {
        try FileManager.default.createDirectory(atPath: stateDir, withIntermediateDirectories: true)
        try atomicWrite(try JSONEncoder().encode(r), to: recordPath)
    }

    private func loadRecord() throws -> Record? {
        guard let d = FileManager.default.contents(atPath: recordPath) else { return nil }
        return try JSONDecoder().decode(Record.self, from: d)
    }

    private func copyPlugin() throws {
        try FileManager.default.createDirectory(atPath: binDir, withIntermediateDirectories: true)
        let data = try Data(contentsOf: URL(fileURLWithPath: pluginBinary))
        let target = "\(binDir)/\(Self.pluginType)"
        if FileManager.default.contents(atPath: target) == data { return }
        try atomicWrite(data, to: target)
        chmod(target, 0o755)
    }

    /// Write to `.<name>.tmp-<pid>` in the same directory (runtimes skip dot files and other
    /// extensions), then rename over the target.
    private func atomicWrite(_ data: Data, to path: String) throws {
        let dir = (path as NSString).deletingLastPathComponent, name = (path as NSString).lastPathComponent
        let tmp = "\(dir)/.\(name).tmp-\(getpid())"
        guard FileManager.default.createFile(atPath: tmp, contents: data) else { throw InstallError("cannot write \(tmp)") }
        let fd = open(tmp, O_RDONLY)
        if fd >= 0 { fsync(fd); close(fd) }
        guard rename(tmp, path) == 0 else { throw InstallError("cannot rename \(tmp) to \(path): \(String(cString: strerror(errno)))") }
    }
}

/// install-cni failed.
public struct InstallError: Error, CustomStringConvertible {
    /// What went wrong.
    public var description: String
    init(_ d: String) { description = d }
}
