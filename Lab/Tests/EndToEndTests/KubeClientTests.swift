import Foundation
import KubeClient
import KubeStandIn
import Logging
import Synchronization
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
