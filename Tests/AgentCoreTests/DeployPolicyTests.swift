import Foundation
import Testing

/// The hardening a node agent's DaemonSet should carry: resources, probes, a seccomp profile, a
/// read-only root, no privilege escalation and only the capabilities it explains. (Schema validity
/// is checked by kubernetes-validate in scripts/validate-manifests.sh.)
extension DeployManifestTests {
    @Test("every container has CPU and memory requests and limits, requests within limits")
    func resources() throws {
        for c in try containers() {
            let name = c["name"] as? String ?? "?"
            let r = c["resources"] as? [String: Any]
            for kind in ["requests", "limits"] {
                let values = r?[kind] as? [String: Any]
                #expect(values?["cpu"] != nil, "\(name): no cpu \(kind)")
                #expect(values?["memory"] != nil, "\(name): no memory \(kind)")
            }
            let req = r?["requests"] as? [String: Any], lim = r?["limits"] as? [String: Any]
            #expect(Quantity.bytes(req?["memory"]) ?? .infinity <= Quantity.bytes(lim?["memory"]) ?? 0, "\(name): memory request above limit")
            #expect(Quantity.cores(req?["cpu"]) ?? .infinity <= Quantity.cores(lim?["cpu"]) ?? 0, "\(name): cpu request above limit")
        }
    }

    @Test("the agent has readiness and liveness probes on the /healthz it serves")
    func probes() throws {
        let agent = try #require(try containers().first { $0["name"] as? String == "agent" })
        let env = (agent["env"] as? [[String: Any]]) ?? []
        let metrics = env.first { $0["name"] as? String == "REDIRECT_METRICS_ADDRESS" }?["value"] as? String
        let port = try #require(metrics?.split(separator: ":").last.flatMap { Int($0) }, "REDIRECT_METRICS_ADDRESS must be set with a port")
        for probe in ["readinessProbe", "livenessProbe"] {
            let get = (agent[probe] as? [String: Any])?["httpGet"] as? [String: Any]
            #expect(get?["path"] as? String == "/healthz", "\(probe) path")
            #expect(get?["port"] as? Int == port, "\(probe) port must be the metrics port \(port)")
        }
    }

    @Test("seccomp RuntimeDefault, read-only root, no privilege escalation, nothing privileged, ALL dropped")
    func hardening() throws {
        let podSeccomp = ((try daemonSetPod["securityContext"] as? [String: Any])?["seccompProfile"] as? [String: Any])?["type"] as? String
        for c in try containers() {
            let name = c["name"] as? String ?? "?"
            let sc = c["securityContext"] as? [String: Any] ?? [:]
            let seccomp = (sc["seccompProfile"] as? [String: Any])?["type"] as? String ?? podSeccomp
            #expect(seccomp == "RuntimeDefault", "\(name): seccomp")
            #expect(sc["readOnlyRootFilesystem"] as? Bool == true, "\(name): readOnlyRootFilesystem")
            #expect(sc["allowPrivilegeEscalation"] as? Bool == false, "\(name): allowPrivilegeEscalation")
            #expect(sc["privileged"] as? Bool != true, "\(name): privileged")
            let caps = sc["capabilities"] as? [String: Any]
            #expect(caps?["drop"] as? [String] == ["ALL"], "\(name): drop ALL")
            // The API server rejects allowPrivilegeEscalation: false beside a literal CAP_SYS_ADMIN.
            for cap in caps?["add"] as? [String] ?? [] { #expect(!cap.hasPrefix("CAP_"), "\(name): write \(cap) without CAP_") }
        }
    }

    @Test("only the capabilities the agent needs, each explained by the comment above it")
    func capabilities() throws {
        let expected = ["agent": ["NET_ADMIN", "SYS_ADMIN", "BPF", "PERFMON", "SYS_RESOURCE", "SYS_PTRACE"],
                        "install-cni": ["CHOWN", "FOWNER", "DAC_OVERRIDE"]]
        for c in try containers() {
            let name = c["name"] as? String ?? "?"
            let add = ((c["securityContext"] as? [String: Any])?["capabilities"] as? [String: Any])?["add"] as? [String] ?? []
            #expect(Set(add) == Set(expected[name] ?? []), "\(name): capabilities \(add)")
        }
        // Each "- CAP" line of an add list follows a comment naming it (a comment may name several).
        let lines = try String(contentsOfFile: "\(root)/deploy/redirect-agent.yaml", encoding: .utf8).split(separator: "\n").map(String.init)
        let allCaps = Set(expected.values.joined())
        var explained = Set<String>()
        var comments: [String] = []
        for line in lines.map({ $0.trimmingCharacters(in: .whitespaces) }) {
            if line.hasPrefix("#") { comments.append(line); continue }
            if line.hasPrefix("- "), allCaps.contains(String(line.dropFirst(2))) {
                let cap = String(line.dropFirst(2))
                if comments.contains(where: { $0.contains(cap) }) || explained.contains(cap) { explained.insert(cap) }
                continue
            }
            comments = []
        }
        #expect(explained == allCaps, "capabilities without an explaining comment: \(allCaps.subtracting(explained).sorted())")
    }

    @Test("what a read-only root still lets the agent write is mounted: state, ZDS, bpffs, the xtables lock")
    func writablePaths() throws {
        let agent = try #require(try containers().first { $0["name"] as? String == "agent" })
        let mounts = Set(((agent["volumeMounts"] as? [[String: Any]]) ?? []).compactMap { $0["mountPath"] as? String })
        let env = Dictionary(uniqueKeysWithValues: ((agent["env"] as? [[String: Any]]) ?? []).compactMap { e in
            (e["name"] as? String).map { ($0, e["value"] as? String ?? "") } })
        #expect(mounts.contains(env["REDIRECT_STATE_DIR"] ?? "unset"))
        #expect(mounts.contains(((env["REDIRECT_ZDS_SOCKET"] ?? "unset") as NSString).deletingLastPathComponent))
        #expect(mounts.contains("/sys/fs/bpf"))
        #expect(mounts.contains("/run/xtables.lock"))
    }

    @Test("the docs show the image pinned by digest")
    func digest() throws {
        let doc = try String(contentsOfFile: "\(root)/deploy/README.md", encoding: .utf8)
        #expect(doc.range(of: #"redirect-agent@sha256:[0-9a-f<]"#, options: .regularExpression) != nil)
    }
}

/// Kubernetes resource quantities, as far as the manifest uses them.
enum Quantity {
    static func bytes(_ v: Any?) -> Double? {
        guard let s = v.map({ "\($0)" }) else { return nil }
        let units: [(String, Double)] = [("Ki", 1024), ("Mi", 1_048_576), ("Gi", 1_073_741_824), ("k", 1e3), ("M", 1e6), ("G", 1e9)]
        for (u, f) in units where s.hasSuffix(u) { return Double(s.dropLast(u.count)).map { $0 * f } }
        return Double(s)
    }

    static func cores(_ v: Any?) -> Double? {
        guard let s = v.map({ "\($0)" }) else { return nil }
        return s.hasSuffix("m") ? Double(s.dropLast()).map { $0 / 1000 } : Double(s)
    }
}
