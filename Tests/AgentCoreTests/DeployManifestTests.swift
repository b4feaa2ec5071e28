import Foundation
import Testing
import Yams

let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

/// The deploy/ manifests, parsed, and checked against what the code actually reads and ships.
@Suite("Kubernetes manifests")
struct DeployManifestTests {
    func documents() throws -> [[String: Any]] {
        let text = try String(contentsOfFile: "\(root)/deploy/redirect-agent.yaml", encoding: .utf8)
        return try Yams.load_all(yaml: text).compactMap { $0 as? [String: Any] }
    }

    func object(_ kind: String) throws -> [String: Any] {
        try #require(try documents().first { $0["kind"] as? String == kind })
    }

    /// Environment variables the agent's command line reads (`env("NAME")` in its sources).
    func envNamesInCode() throws -> Set<String> {
        var names = Set<String>()
        for f in try FileManager.default.contentsOfDirectory(atPath: "\(root)/Sources/RedirectAgent") where f.hasSuffix(".swift") {
            let text = try String(contentsOfFile: "\(root)/Sources/RedirectAgent/\(f)", encoding: .utf8)
            let re = try NSRegularExpression(pattern: #"env\("([A-Z0-9_]+)"\)"#)
            for m in re.matches(in: text, range: NSRange(text.startIndex..., in: text)) {
                if let r = Range(m.range(at: 1), in: text) { names.insert(String(text[r])) }
            }
        }
        return names
    }

    var daemonSetPod: [String: Any] {
        get throws {
            let ds = try object("DaemonSet")
            return try #require(((ds["spec"] as? [String: Any])?["template"] as? [String: Any])?["spec"] as? [String: Any])
        }
    }

    func containers() throws -> [[String: Any]] { try #require(try daemonSetPod["containers"] as? [[String: Any]]) }

    func container(_ name: String) throws -> [String: Any] { try #require(try containers().first { $0["name"] as? String == name }) }

    func env(_ c: [String: Any]) -> [String: String] {
        Dictionary(uniqueKeysWithValues: (c["env"] as? [[String: Any]] ?? []).map { ($0["name"] as? String ?? "?", "\($0["value"] ?? "")") })
    }

    @Test("every object the install needs is there")
    func kinds() throws {
        let kinds = Set(try documents().compactMap { $0["kind"] as? String })
        #expect(kinds == ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"])
        let ds = try object("DaemonSet")
        #expect((ds["metadata"] as? [String: Any])?["namespace"] as? String == "redirect-system")
        #expect(try daemonSetPod["serviceAccountName"] as? String == "redirect-agent")
    }

    @Test("host network and pids, named capabilities, never privileged")
    func security() throws {
        #expect(try daemonSetPod["hostNetwork"] as? Bool == true)
        #expect(try daemonSetPod["hostPID"] as? Bool == true, "the proxy's pid from its ZDS connection, the kubelet's process")
        for c in try containers() {
            let sc = c["securityContext"] as? [String: Any] ?? [:]
            #expect(sc["privileged"] as? Bool != true, "\(c["name"] ?? "") is not privileged")
            #expect(((sc["capabilities"] as? [String: Any])?["drop"] as? [String]) == ["ALL"])
        }
        let add = Set((((try container("agent"))["securityContext"] as? [String: Any])?["capabilities"] as? [String: Any])?["add"] as? [String] ?? [])
        #expect(["NET_ADMIN", "SYS_ADMIN", "BPF"].allSatisfy(add.contains))
    }

    @Test("environment names are ones the agent reads; ports and paths agree with its flags")
    func consistentWithCode() throws {
        let known = try envNamesInCode()
        let agent = try container("agent")
        let e = env(agent)
        for name in e.keys { #expect(known.contains(name), "the agent reads \(name)") }
        let config = try #require(try object("ConfigMap")["data"] as? [String: Any])
        for name in config.keys { #expect(known.contains(name), "the agent reads \(name) from the ConfigMap") }
        #expect(["auto", "ebpf", "iptables"].contains(config["REDIRECT_DATAPLANE"] as? String ?? ""))
        let metricsPort = try #require(e["REDIRECT_METRICS_ADDRESS"]?.split(separator: ":").last.flatMap { Int($0) })
        let probe = try #require(((agent["readinessProbe"] as? [String: Any])?["httpGet"] as? [String: Any]))
        #expect(probe["port"] as? Int == metricsPort && probe["path"] as? String == "/healthz")
        let mounts = Dictionary(uniqueKeysWithValues: (agent["volumeMounts"] as? [[String: Any]] ?? []).map { ($0["mountPath"] as? String ?? "?", $0) })
        let pinRoot = try #require(e["REDIRECT_PIN_ROOT"]), stateDir = try #require(e["REDIRECT_STATE_DIR"])
        let zds = try #require(e["REDIRECT_ZDS_SOCKET"])
        #expect(mounts[(pinRoot as NSString).deletingLastPathComponent] != nil, "bpffs mounted where the pins go")
        #expect(mounts[stateDir] != nil, "state dir mounted")
        #expect(mounts[(zds as NSString).deletingLastPathComponent] != nil, "ZDS socket dir mounted")
        #expect(mounts["/var/run/netns"]?["mountPropagation"] as? String == "HostToContainer")
        // The control socket is at the same path on the host and in the container, because the
        // CNI plugin runs on the host.
        let volumes = Dictionary(uniqueKeysWithValues: (try daemonSetPod["volumes"] as? [[String: Any]] ?? []).map { ($0["name"] as? String ?? "?", $0) })
        let stateVolume = try #require(mounts[stateDir]?["name"] as? String)
        #expect((volumes[stateVolume]?["hostPath"] as? [String: Any])?["path"] as? String == e["REDIRECT_STATE_DIR"])
        let install = try container("install-cni")
        let args = install["command"] as? [String] ?? []
        func arg(_ flag: String) -> String? { args.firstIndex(of: flag).map { args[$0 + 1] } }
        #expect(arg("--agent-socket")?.hasPrefix(stateDir + "/") == true)
        let installMounts = Set((install["volumeMounts"] as? [[String: Any]] ?? []).compactMap { $0["mountPath"] as? String })
        for flag in ["--cni-conf-dir", "--cni-bin-dir", "--state-dir"] { #expect(installMounts.contains(arg(flag) ?? "?"), "\(flag) is mounted") }
    }

    @Test("one image; commands and files exist in what the repository builds")
    func imageAndBinaries() throws {
        let images = Set(try containers().compactMap { $0["image"] as? String })
        #expect(images.count == 1)
        let dockerfile = try String(contentsOfFile: "\(root)/deploy/Dockerfile", encoding: .utf8)
        let package = try String(contentsOfFile: "\(root)/Package.swift", encoding: .utf8)
        for c in try containers() {
            let cmd = c["command"] as? [String] ?? []
            #expect(cmd.first == "/usr/local/bin/redirect-agent" && dockerfile.contains("COPY .build/release/redirect-agent /usr/local/bin/redirect-agent"))
            #expect(["run", "install-cni"].contains(cmd.dropFirst().first ?? ""))
        }
        let install = try container("install-cni")["command"] as? [String] ?? []
        let plugin = install[try #require(install.firstIndex(of: "--plugin-binary")) + 1]
        #expect(dockerfile.contains("/usr/local/bin/redirect-cni") && plugin == "/usr/local/bin/redirect-cni")
        #expect(dockerfile.contains(try #require(env(try container("agent"))["REDIRECT_BPF_OBJECT"])))
        #expect(package.contains("name: \"redirect-agent\"") && package.contains("name: \"redirect-cni\""))
        #expect(FileManager.default.fileExists(atPath: "\(root)/bpf/redirect.bpf.c"))
    }
}
