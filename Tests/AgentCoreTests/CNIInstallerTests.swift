import AgentCore
import Foundation
import Testing

/// A throwaway node: a CNI configuration and plugin directory with realistic contents.
struct FakeNode {
    let root = NSTemporaryDirectory() + "ra-cni-\(UUID().uuidString.prefix(8))"
    var conf: String { "\(root)/net.d" }
    var bin: String { "\(root)/bin" }
    var state: String { "\(root)/state" }
    var plugin: String { "\(root)/redirect-cni-build" }

    static let bridge = """
    {
      "cniVersion": "1.0.0",
      "name": "cbr0",
      "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]]}},
        {"type": "portmap", "capabilities": {"portMappings": true}}
      ]
    }

    """
    static let flannelConf = "{\n  \"name\": \"cbr0\",\n  \"cniVersion\": \"0.3.1\",\n  \"type\": \"flannel\",\n  \"delegate\": {\"hairpinMode\": true, \"isDefaultGateway\": true}\n}\n"

    init(files: [String: String]) throws {
        try FileManager.default.createDirectory(atPath: conf, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
        for (name, text) in files { try text.write(toFile: "\(conf)/\(name)", atomically: true, encoding: .utf8) }
        try "#!/bin/sh\necho plugin\n".write(toFile: plugin, atomically: true, encoding: .utf8)
        try "loopback".write(toFile: "\(bin)/loopback", atomically: true, encoding: .utf8)
    }

    var installer: CNIInstaller { CNIInstaller(confDir: conf, binDir: bin, stateDir: state, pluginBinary: plugin, agentSocket: "/run/redirect-agent/control.sock") }

    func snapshot() throws -> [String: Data] {
        var out: [String: Data] = [:]
        for dir in [conf, bin] {
            for f in try FileManager.default.contentsOfDirectory(atPath: dir) { out["\(dir)/\(f)"] = FileManager.default.contents(atPath: "\(dir)/\(f)") }
        }
        return out
    }

    func plugins(_ file: String) throws -> [String] {
        let o = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(conf)/\(file)"))) as? [String: Any])
        return (o["plugins"] as? [[String: Any]] ?? []).compactMap { $0["type"] as? String }
    }

    func remove() { try? FileManager.default.removeItem(atPath: root) }
}

@Suite("install-cni")
struct CNIInstallerTests {
    @Test("inserts into the lexically first configuration, stays idempotent, uninstalls to the byte-identical original")
    func conflist() throws {
        let node = try FakeNode(files: ["10-bridge.conflist": FakeNode.bridge, "20-other.conflist": FakeNode.bridge, "99-loopback.conf": "{\"type\":\"loopback\"}"])
        defer { node.remove() }
        let before = try node.snapshot()
        #expect(try node.installer.primaryFile() == "10-bridge.conflist")
        #expect(try node.installer.install())
        #expect(try node.plugins("10-bridge.conflist") == ["bridge", "portmap", "redirect-cni"])
        #expect(FileManager.default.isExecutableFile(atPath: "\(node.bin)/redirect-cni"))
        let once = try node.snapshot()
        #expect(try !node.installer.install(), "a second install changes nothing")
        #expect(try node.snapshot() == once)
        #expect(try node.plugins("20-other.conflist") == ["bridge", "portmap"], "only the primary is edited")
        #expect(try FileManager.default.contentsOfDirectory(atPath: node.conf).allSatisfy { !$0.contains(".tmp") }, "no temporary file left")
        try node.installer.uninstall()
        #expect(try node.snapshot() == before, "byte for byte as before")
    }

    @Test("a single-plugin .conf becomes a .conflist and comes back as the original .conf")
    func convertsConf() throws {
        let node = try FakeNode(files: ["05-flannel.conf": FakeNode.flannelConf, "10-bridge.conflist": FakeNode.bridge])
        defer { node.remove() }
        let before = try node.snapshot()
        try node.installer.install()
        let files = try FileManager.default.contentsOfDirectory(atPath: node.conf).sorted()
        #expect(files == ["05-flannel.conflist", "10-bridge.conflist"], "the .conf is replaced, keeping its place in the order")
        #expect(try node.plugins("05-flannel.conflist") == ["flannel", "redirect-cni"])
        try node.installer.uninstall()
        #expect(try node.snapshot() == before)
    }

    @Test("re-inserts itself when the primary CNI rewrites its file; uninstall then removes only its entry")
    func reinsertsAfterRewrite() throws {
        let node = try FakeNode(files: ["10-bridge.conflist": FakeNode.bridge])
        defer { node.remove() }
        try node.installer.install()
        // The primary CNI rewrites its configuration (a new subnet), dropping our entry.
        let rewritten = FakeNode.bridge.replacingOccurrences(of: "10.88.0.0/16", with: "10.89.0.0/16")
        try rewritten.write(toFile: "\(node.conf)/10-bridge.conflist", atomically: true, encoding: .utf8)
        #expect(try node.plugins("10-bridge.conflist") == ["bridge", "portmap"])
        var reinserted: [String] = []
        let deadline = Date().addingTimeInterval(3)
        node.installer.watch(interval: 0.05, shouldStop: { !reinserted.isEmpty || Date() > deadline }) { reinserted.append($0) }
        #expect(reinserted == ["10-bridge.conflist"])
        #expect(try node.plugins("10-bridge.conflist") == ["bridge", "portmap", "redirect-cni"])
        try node.installer.uninstall()
        // The primary's own rewrite is what comes back (its bytes), without our entry.
        #expect(FileManager.default.contents(atPath: "\(node.conf)/10-bridge.conflist") == Data(rewritten.utf8))
    }

    @Test("an empty configuration directory is a clear error, nothing written")
    func emptyDirectory() throws {
        let node = try FakeNode(files: [:])
        defer { node.remove() }
        #expect(throws: InstallError.self) { try node.installer.install() }
        #expect(try FileManager.default.contentsOfDirectory(atPath: node.conf).isEmpty)
    }
}
