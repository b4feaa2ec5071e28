import Foundation
import Logging
import Synchronization

/// A cache of one kind kept current by list and watch: it resumes a watch from the last
/// resourceVersion it saw (bookmarks included), lists again when the server says that version is
/// gone (410), and backs off while the server cannot be reached. Nothing is lost across a watch
/// timeout, an expired version or a server restart: a relist hands the consumer the whole set.
public final class Informer<T: KubeObject>: Sendable {
    /// What the consumer hears.
    public enum Change: Sendable {
        /// The full set after a (re)list: what is not in it is gone.
        case synced([T])
        /// An object added or changed.
        case upserted(T)
        /// An object deleted.
        case deleted(T)
    }

    private struct State {
        var objects: [String: T] = [:]
        var synced = false
        var lastError: String?
    }
    private let client: KubeClient
    private let fieldSelector: String?
    private let state = Mutex(State())
    private let logger: Logger
    private let watchTimeout: Int

    /// An informer for the objects `fieldSelector` picks.
    public init(client: KubeClient, fieldSelector: String? = nil, watchTimeoutSeconds: Int = 300, logger: Logger) {
        self.client = client
        self.fieldSelector = fieldSelector
        self.watchTimeout = watchTimeoutSeconds
        self.logger = logger
    }

    private static func key(_ m: ObjectMeta) -> String { "\(m.namespace ?? "")/\(m.name)" }

    /// The cached object.
    public func get(namespace: String?, name: String) -> T? { state.withLock { $0.objects["\(namespace ?? "")/\(name)"] } }
    /// Every cached object.
    public var objects: [T] { state.withLock { Array($0.objects.values) } }
    /// Whether a list has succeeded (the cache can answer).
    public var hasSynced: Bool { state.withLock { $0.synced } }
    /// The last failure talking to the server, nil while all is well.
    public var lastError: String? { state.withLock { $0.lastError } }

    /// Runs until the task is cancelled, calling `onChange` after the cache has taken each change.
    public func run(_ onChange: @escaping @Sendable (Change) -> Void) async {
        var version: String?
        var backoff = 0.2
        while !Task.isCancelled {
            do {
                if version == nil {
                    let (items, rv) = try await client.list(T.self, fieldSelector: fieldSelector)
                    state.withLock { s in
                        s.objects = Dictionary(items.map { (Self.key($0.metadata), $0) }, uniquingKeysWith: { $1 })
                        s.synced = true
                        s.lastError = nil
                    }
                    onChange(.synced(items))
                    version = rv
                }
                for try await event in client.watch(T.self, fieldSelector: fieldSelector, from: version ?? "", timeoutSeconds: watchTimeout) {
                    backoff = 0.2
                    state.withLock { $0.lastError = nil }
                    switch event {
                    case .bookmark(let rv): version = rv
                    case .upserted(let o):
                        state.withLock { $0.objects[Self.key(o.metadata)] = o }
                        version = o.metadata.resourceVersion ?? version
                        onChange(.upserted(o))
                    case .deleted(let o):
                        state.withLock { $0.objects[Self.key(o.metadata)] = nil }
                        version = o.metadata.resourceVersion ?? version
                        onChange(.deleted(o))
                    }
                }
            } catch let e as KubeError where e.code == .expired {
                logger.info("watch expired: listing again", metadata: ["resource": "\(T.resource)"])
                version = nil
            } catch {
                if Task.isCancelled { return }
                state.withLock { $0.lastError = "\(error)" }
                logger.warning("Kubernetes API unavailable, retrying", metadata: ["resource": "\(T.resource)", "error": "\(error)", "retry_s": "\(backoff)"])
                try? await Task.sleep(for: .milliseconds(Int(backoff * 1000)))
                backoff = min(backoff * 2, 10)
            }
        }
    }
}
