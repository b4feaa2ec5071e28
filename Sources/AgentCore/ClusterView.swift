import Foundation
import KubeClient
import Logging
import Synchronization
import SystemCalls

/// The cluster as the agent sees it: the pods of this node and every namespace, kept by
/// informers. It answers CNI ADDs (is this pod in the mesh?) and tells the agent when anything
/// changed, so labels set with kubectl enrol or release running pods.
public final class ClusterView: Sendable {
    /// The pods scheduled to this node.
    public let pods: Informer<Pod>
    /// Every namespace.
    public let namespaces: Informer<Namespace>
    /// The client.
    public let client: KubeClient
    /// The selection rules.
    public let rules: MeshRules
    private let tasks = Mutex<[Task<Void, Never>]>([])

    /// A view of node `nodeName` through `client`.
    public init(client: KubeClient, nodeName: String, rules: MeshRules = MeshRules(), logger: Logger) {
        self.client = client
        self.rules = rules
        pods = Informer(client: client, fieldSelector: "spec.nodeName=\(nodeName)", logger: logger)
        namespaces = Informer(client: client, logger: logger)
    }

    /// Starts both informers; `changed` runs after each change either of them takes in.
    public func start(changed: @escaping @Sendable () -> Void) {
        let p = pods, n = namespaces
        tasks.withLock { $0 = [Task { await p.run { _ in changed() } }, Task { await n.run { _ in changed() } }] }
    }

    /// Stops them.
    public func stop() { tasks.withLock { for t in $0 { t.cancel() }; $0 = [] } }

    /// Whether both have listed at least once, so a decision can be made.
    public var hasSynced: Bool { pods.hasSynced && namespaces.hasSynced }

    /// The pod with this name and UID, if the API has it (a pod recreated under the same name is another pod).
    public func pod(namespace: String, name: String, uid: String) -> Pod? {
        guard let p = pods.get(namespace: namespace, name: name), p.metadata.uid == nil || p.metadata.uid == uid else { return nil }
        return p
    }

    /// The decision for a pod the cache has; nil when its namespace is not known yet.
    public func decide(_ pod: Pod) -> (inMesh: Bool?, reason: String) {
        rules.decide(pod, namespace: namespaces.get(namespace: nil, name: pod.metadata.namespace ?? ""))
    }

    /// Whether the API has really lost the pod (it is not in the cache): asked directly, so a
    /// watch that selects the wrong node, or a cache that missed something, never releases a
    /// running pod. Blocks the calling thread (never one of Swift's shared ones) up to `timeout`.
    public func confirmGone(namespace: String, name: String, uid: String, timeout: Double = 5) -> Bool {
        let slot = ResultSlot<Bool>()
        let client = self.client
        Task {
            do {
                let p = try await client.get(Pod.self, namespace: namespace, name: name)
                slot.fill(p == nil || (p?.metadata.uid != nil && p?.metadata.uid != uid))
            } catch { slot.fill(false) }
        }
        return slot.wait(timeout: timeout) ?? false
    }

    /// Waits up to `timeout` for the pod to be known (a CNI ADD can come before the watch
    /// delivers the pod); nil when it is not, with why.
    public func waitForPod(namespace: String, name: String, uid: String, timeout: Double) -> (pod: Pod?, why: String) {
        let end = Date().addingTimeInterval(timeout)
        repeat {
            if hasSynced, let p = pod(namespace: namespace, name: name, uid: uid) { return (p, "") }
            usleep(10_000)
        } while Date() < end
        let error = pods.lastError ?? namespaces.lastError
        if !hasSynced { return (nil, "the Kubernetes API has not answered yet\(error.map { ": \($0)" } ?? "")") }
        return (nil, "pod \(namespace)/\(name) (uid \(uid)) is not known to the Kubernetes API after \(timeout) s\(error.map { " (\($0))" } ?? "")")
    }
}
