import Foundation
import Glibc
import KubeClient
import KubeStandIn
import Logging
import Synchronization
import SystemCalls
import Testing

/// The agent's Kubernetes client against the lab's API server (itself proven with kubectl).
@Suite("Kubernetes client", .serialized)
struct KubeClientTests {
    func client(_ c: Credentials) throws -> KubeClient { try KubeClient(try KubeConfig.file(c.kubeconfig)) }

    func seed(_ store: ObjectStore) throws {
        try store.create(.namespace, namespace: nil, .object(["metadata": .object(["name": .string("shop")])]))
        try store.create(.pod, namespace: "shop", labPod("cart-1", namespace: "shop", node: "n1"))
        try store.create(.pod, namespace: "shop", labPod("cart-2", namespace: "shop", node: "n2"))
    }

    @Test("list by node, get, and a merge patch of pods/status; a token file is read on each request")
    func basics() async throws {
        try await withKubeAPIAsync { server, c in
            try seed(server.store)
            var config = try KubeConfig.file(c.kubeconfig)
            config.token = nil
            config.tokenFile = c.tokenFile
            let k = try KubeClient(config)
            defer { Task { await k.shutdown() } }
            let (pods, rv) = try await k.list(Pod.self, fieldSelector: "spec.nodeName=n1")
            #expect(pods.map(\.metadata.name) == ["cart-1"] && !rv.isEmpty)
            #expect(try await k.get(Pod.self, namespace: "shop", name: "nope") == nil)
            try await k.patchPodStatus(namespace: "shop", name: "cart-1", Data(#"{"metadata":{"annotations":{"ambient.istio.io/redirection":"enabled"}}}"#.utf8))
            #expect(try await k.get(Pod.self, namespace: "shop", name: "cart-1")?.metadata.annotations?["ambient.istio.io/redirection"] == "enabled")
            try "wrong".write(toFile: c.tokenFile, atomically: true, encoding: .utf8)
            do {
                _ = try await k.list(Namespace.self)
                Issue.record("a rotated (here: wrong) token is used at once: the list should have been refused")
            } catch let e as KubeError {
                #expect(e.httpStatus == 401, "\(e)")
            }
        }
    }

    @Test("every kind of kubeconfig user reaches the API, with our client and with kubectl: token, client certificate (files, inline data), exec plugin; a certificate from another CA and no credentials are refused")
    func userKinds() async throws {
        try await withKubeAPIAsync { server, c in
            try seed(server.store)
            let kinds: [(String, Credentials.User)] = [("token", .token), ("cert", .clientCertificate), ("certdata", .clientCertificateData),
                                                       ("exec", .exec(command: "\(c.directory)/exec-credential"))]
            try c.writeExecPlugin(to: "\(c.directory)/exec-credential")
            for (name, user) in kinds {
                let path = "\(c.directory)/kubeconfig-\(name)"
                try c.writeKubeconfig(server: server.url, to: path, user: user)
                let k = try KubeClient(try KubeConfig.file(path))
                let pods = try await k.list(Pod.self).items.map(\.metadata.name).sorted()
                await k.shutdown()
                #expect(pods == ["cart-1", "cart-2"], "\(name)")
                let kubectl = try Command.run(try Command.resolve("kubectl"), ["--kubeconfig", path, "get", "pods", "-n", "shop", "-o", "name"])
                #expect(kubectl.split(separator: "\n") == ["pod/cart-1", "pod/cart-2"], "kubectl with \(name): \(kubectl)")
            }
            // The presence of the refusal: no credentials at all.
            let anonymous = "\(c.directory)/kubeconfig-anonymous"
            try String(contentsOfFile: "\(c.directory)/kubeconfig-token", encoding: .utf8).replacingOccurrences(of: "token: \(c.token)", with: "username: nobody")
                .write(toFile: anonymous, atomically: true, encoding: .utf8)
            await #expect(throws: KubeError.self) { try await self.listOnce(anonymous) }
            // A certificate another CA signed: TLS refuses it.
            let other = try Credentials.make(in: "\(c.directory)/other")
            var forged = try KubeConfig.file("\(c.directory)/kubeconfig-cert")
            forged.clientCertificate = [UInt8](try Data(contentsOf: URL(fileURLWithPath: other.clientCertificateFile)))
            forged.clientKey = [UInt8](try Data(contentsOf: URL(fileURLWithPath: other.clientKeyFile)))
            let k = try KubeClient(forged)
            await #expect(throws: KubeError.self) { _ = try await k.list(Pod.self) }
            await k.shutdown()
        }
    }

    func listOnce(_ kubeconfig: String) async throws {
        let k = try KubeClient(try KubeConfig.file(kubeconfig))
        defer { Task { await k.shutdown() } }
        _ = try await k.list(Pod.self)
    }

    @Test("an exec plugin runs once and its token is reused until the server refuses it; then it runs again")
    func execPluginCache() async throws {
        try await withKubeAPIAsync { server, c in
            try seed(server.store)
            let tokenFile = "\(c.directory)/exec-token", runs = "\(c.directory)/exec-runs", plugin = "\(c.directory)/counting-plugin"
            try "wrong".write(toFile: tokenFile, atomically: true, encoding: .utf8)
            try """
            #!/bin/sh
            echo run >> \(runs)
            printf '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"%s"}}' "$(cat \(tokenFile))"
            """.write(toFile: plugin, atomically: true, encoding: .utf8)
            #expect(chmod(plugin, 0o700) == 0)
            try c.writeKubeconfig(server: server.url, to: "\(c.directory)/kubeconfig-exec", user: .exec(command: plugin))
            let k = try KubeClient(try KubeConfig.file("\(c.directory)/kubeconfig-exec"))
            defer { Task { await k.shutdown() } }
            func runCount() -> Int { ((try? String(contentsOfFile: runs, encoding: .utf8)) ?? "").split(separator: "\n").count }
            await #expect(throws: KubeError.self, "the plugin's first token is wrong") { _ = try await k.list(Pod.self) }
            #expect(runCount() == 1)
            try c.token.write(toFile: tokenFile, atomically: true, encoding: .utf8)
            #expect(try await k.list(Pod.self).items.count == 2, "refused once, the plugin ran again and its new token works")
            _ = try await k.list(Pod.self)
            #expect(runCount() == 2, "a working token is reused")
        }
    }

    @Test("an informer follows changes, and loses none across a server restart or an expired resourceVersion")
    func informer() async throws {
        try await withKubeAPIAsync { server, c in
            try seed(server.store)
            let k = try client(c)
            defer { Task { await k.shutdown() } }
            let informer = Informer<Pod>(client: k, fieldSelector: "spec.nodeName=n1", watchTimeoutSeconds: 5, logger: Logger(label: "test"))
            let heard = Heard()
            let task = Task(executorPreference: QueueExecutor.shared) { await informer.run { change in
                let s: String
                switch change {
                case .synced(let all): s = "synced " + all.map(\.metadata.name).sorted().joined(separator: ",")
                case .upserted(let p): s = "upserted \(p.metadata.name) \(p.metadata.labels?["istio.io/dataplane-mode"] ?? "-")"
                case .deleted(let p): s = "deleted \(p.metadata.name)"
                }
                heard.lines.withLock { $0.append(s) }
            } }
            defer { task.cancel() }
            func saw(_ s: String, times: Int = 1) async throws {
                do { try await waitForAsync(s) { heard.lines.withLock { $0.filter { $0 == s }.count >= times } } } catch {
                    throw LabErrorText("\(error); heard \(heard.lines.withLock { $0 }); last error \(informer.lastError ?? "none")")
                }
            }
            try await saw("synced cart-1")
            try server.store.patch(.pod, namespace: "shop", name: "cart-1", .object(["metadata": .object(["labels": .object(["istio.io/dataplane-mode": .string("ambient")])])]))
            try await saw("upserted cart-1 ambient")
            // Restart: what changes while the server is down arrives after it.
            server.stop()
            try server.store.create(.pod, namespace: "shop", labPod("cart-3", namespace: "shop", node: "n1"))
            try server.start()
            try await saw("upserted cart-3 -")
            // Expired: the history is gone while down; a relist brings the whole set, deletions included.
            server.stop()
            try server.store.delete(.pod, namespace: "shop", name: "cart-3")
            server.store.compact()
            try server.start()
            try await saw("synced cart-1", times: 2)
            #expect(heard.lines.withLock { $0.last } == "synced cart-1", "\(heard.lines.withLock { $0 })")
            #expect(informer.get(namespace: "shop", name: "cart-3") == nil && informer.hasSynced)
        }
    }
}

/// withKubeAPI for async bodies, which run on threads of their own (``QueueExecutor``): the lab
/// suites in the same process block Swift's shared pool, which would starve an informer.
func withKubeAPIAsync(_ body: @escaping (APIServer, Credentials) async throws -> Void) async throws {
    let (server, creds, cleanup) = try makeKubeAPI()
    defer { cleanup() }
    try await withTaskExecutorPreference(QueueExecutor.shared) { try await body(server, creds) }
}

/// Polls `condition` for up to `seconds`.
func waitForAsync(_ what: String, seconds: Double = 60, _ condition: () -> Bool) async throws {
    let end = Date().addingTimeInterval(seconds)
    while Date() < end {
        if condition() { return }
        try await Task.sleep(for: .milliseconds(20))
    }
    if !condition() { throw LabErrorText("timed out waiting for \(what)") }
}

struct LabErrorText: Error, CustomStringConvertible { var description: String; init(_ d: String) { description = d } }

/// What a test heard, from any thread.
final class Heard: Sendable {
    let lines = Mutex<[String]>([])
}
