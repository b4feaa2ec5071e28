import Foundation
import Synchronization

/// A kind the stand-in serves.
public enum Kind: String, Sendable, CaseIterable {
    /// Pods (namespaced).
    case pod = "Pod"
    /// Namespaces.
    case namespace = "Namespace"

    /// The resource name in URLs.
    public var resource: String { self == .pod ? "pods" : "namespaces" }
    /// Whether objects live in a namespace.
    public var namespaced: Bool { self == .pod }
}

/// One change, as a watch delivers it.
public struct WatchEvent: Sendable {
    /// ADDED, MODIFIED, DELETED, BOOKMARK or ERROR.
    public var type: String
    /// The object after the change (before, for DELETED).
    public var object: JSONValue
    /// Its kind.
    public var kind: Kind
    /// The store's resourceVersion after the change.
    public var resourceVersion: Int
}

/// Which objects a list or watch wants.
public struct Selection: Sendable {
    /// The namespace (nil: every namespace).
    public var namespace: String?
    /// `fieldSelector` terms: metadata.name, metadata.namespace, spec.nodeName (`=`, `==`, `!=`).
    public var fields: [(path: [String], value: String, equal: Bool)] = []
    /// `labelSelector` terms: `k=v`, `k==v`, `k!=v`, `k`, `!k`.
    public var labels: [(key: String, value: String?, equal: Bool)] = []

    /// Parses the query parameters.
    public init(namespace: String?, fieldSelector: String?, labelSelector: String?) throws {
        self.namespace = namespace
        for term in (fieldSelector ?? "").split(separator: ",") {
            let (k, v, eq) = try Self.term(String(term))
            guard let v else { throw StoreError(400, "BadRequest", "field selector '\(term)' has no value") }
            let paths = ["metadata.name": ["metadata", "name"], "metadata.namespace": ["metadata", "namespace"], "spec.nodeName": ["spec", "nodeName"]]
            guard let path = paths[k] else { throw StoreError(400, "BadRequest", "field label not supported: \(k)") }
            fields.append((path, v, eq))
        }
        for term in (labelSelector ?? "").split(separator: ",") {
            var t = String(term).trimmingCharacters(in: .whitespaces)
            if t.hasPrefix("!") { t.removeFirst(); labels.append((t, nil, false)); continue }
            let (k, v, eq) = try Self.term(t)
            labels.append((k, v, eq))
        }
    }

    private static func term(_ t: String) throws -> (String, String?, Bool) {
        for (op, eq) in [("!=", false), ("==", true), ("=", true)] {
            if let r = t.range(of: op) { return (String(t[..<r.lowerBound]), String(t[r.upperBound...]), eq) }
        }
        return (t, nil, true)
    }

    /// Whether `object` is selected.
    public func matches(_ object: JSONValue) -> Bool {
        if let namespace, object[path: ["metadata", "namespace"]]?.string != namespace { return false }
        for f in fields where (object[path: f.path]?.string ?? "" == f.value) != f.equal { return false }
        let have = object[path: ["metadata", "labels"]]?.stringMap ?? [:]
        for l in labels {
            let ok = l.value.map { have[l.key] == $0 } ?? (have[l.key] != nil)
            if ok != l.equal { return false }
        }
        return true
    }
}

/// A failure the API answers with a Status object.
public struct StoreError: Error, Sendable {
    /// HTTP code.
    public var code: Int
    /// Status reason (NotFound, AlreadyExists, Expired, ...).
    public var reason: String
    /// Message.
    public var message: String
    /// Creates an error.
    public init(_ code: Int, _ reason: String, _ message: String) { self.code = code; self.reason = reason; self.message = message }

    /// The Status object.
    public var status: JSONValue {
        .object(["kind": .string("Status"), "apiVersion": .string("v1"), "metadata": .object([:]), "status": .string("Failure"),
                 "message": .string(message), "reason": .string(reason), "code": .number(Double(code))])
    }
}

/// The stand-in's objects, their resourceVersions and a bounded history of changes that watches
/// resume from (older resourceVersions get 410 Gone, as from a real API server after compaction).
public final class ObjectStore: Sendable {
    private struct State {
        var version = 1
        var objects: [String: JSONValue] = [:]
        var history: [WatchEvent] = []
        var oldestKept = 1
        var watchers: [UUID: AsyncStream<WatchEvent>.Continuation] = [:]
    }
    private let state = Mutex(State())
    /// How many changes watches can resume from.
    public let historyLimit: Int

    /// An empty store.
    public init(historyLimit: Int = 1000) { self.historyLimit = historyLimit }

    private static func key(_ kind: Kind, _ namespace: String?, _ name: String) -> String { "\(kind.rawValue)|\(namespace ?? "")|\(name)" }

    /// The current resourceVersion.
    public var resourceVersion: Int { state.withLock { $0.version } }

    /// The object, or NotFound.
    public func get(_ kind: Kind, namespace: String?, name: String) throws -> JSONValue {
        guard let o = state.withLock({ $0.objects[Self.key(kind, namespace, name)] }) else {
            throw StoreError(404, "NotFound", "\(kind.resource) \"\(name)\" not found")
        }
        return o
    }

    /// Every selected object and the resourceVersion they are current at.
    public func list(_ kind: Kind, _ selection: Selection) -> (items: [JSONValue], resourceVersion: Int) {
        state.withLock { s in
            let items = s.objects.filter { $0.key.hasPrefix(kind.rawValue + "|") && selection.matches($0.value) }
                .sorted { $0.key < $1.key }.map(\.value)
            return (items, s.version)
        }
    }

    /// Creates an object: uid, creationTimestamp and resourceVersion are the store's.
    @discardableResult
    public func create(_ kind: Kind, namespace: String?, _ object: JSONValue) throws -> JSONValue {
        guard let name = object[path: ["metadata", "name"]]?.string, !name.isEmpty else { throw StoreError(422, "Invalid", "metadata.name is required") }
        if kind.namespaced, (try? get(.namespace, namespace: nil, name: namespace ?? "")) == nil {
            throw StoreError(404, "NotFound", "namespaces \"\(namespace ?? "")\" not found")
        }
        return try change(kind, namespace: namespace, name: name, type: "ADDED") { existing in
            guard existing == nil else { throw StoreError(409, "AlreadyExists", "\(kind.resource) \"\(name)\" already exists") }
            var o = object
            o["kind"] = .string(kind.rawValue)
            o["apiVersion"] = .string("v1")
            o[path: ["metadata", "uid"]] = o[path: ["metadata", "uid"]] ?? .string(UUID().uuidString.lowercased())
            o[path: ["metadata", "creationTimestamp"]] = .string(ISO8601DateFormatter().string(from: Date()))
            if kind.namespaced { o[path: ["metadata", "namespace"]] = .string(namespace ?? "") }
            return o
        }
    }

    /// Applies a merge patch. `statusOnly`: the status subresource, which changes status and
    /// metadata only (Istio patches its annotation there).
    @discardableResult
    public func patch(_ kind: Kind, namespace: String?, name: String, _ patch: JSONValue, statusOnly: Bool = false) throws -> JSONValue {
        try change(kind, namespace: namespace, name: name, type: "MODIFIED") { existing in
            guard let existing else { throw StoreError(404, "NotFound", "\(kind.resource) \"\(name)\" not found") }
            var p = patch
            if statusOnly { p = .object(["status": patch["status"] ?? .object([:]), "metadata": patch["metadata"] ?? .object([:])]) }
            for fixed in ["uid", "name", "namespace", "creationTimestamp", "resourceVersion"] { p[path: ["metadata", fixed]] = nil }
            return existing.merged(with: p)
        }
    }

    /// Deletes an object.
    @discardableResult
    public func delete(_ kind: Kind, namespace: String?, name: String) throws -> JSONValue {
        try change(kind, namespace: namespace, name: name, type: "DELETED") { existing in
            guard let existing else { throw StoreError(404, "NotFound", "\(kind.resource) \"\(name)\" not found") }
            return existing
        }
    }

    /// One change: a new resourceVersion, the history, every watcher.
    private func change(_ kind: Kind, namespace: String?, name: String, type: String,
                        _ body: (JSONValue?) throws -> JSONValue) throws -> JSONValue {
        try state.withLock { s in
            let key = Self.key(kind, kind.namespaced ? namespace : nil, name)
            var o = try body(s.objects[key])
            s.version += 1
            o[path: ["metadata", "resourceVersion"]] = .string("\(s.version)")
            s.objects[key] = type == "DELETED" ? nil : o
            let event = WatchEvent(type: type, object: o, kind: kind, resourceVersion: s.version)
            s.history.append(event)
            if s.history.count > historyLimit {
                s.history.removeFirst(s.history.count - historyLimit)
                s.oldestKept = s.history.first?.resourceVersion ?? s.version
            }
            for w in s.watchers.values { w.yield(event) }
            return o
        }
    }

    /// Forgets the history (as compaction does): a watch that resumes from before now gets 410.
    public func compact() {
        state.withLock { s in
            s.history.removeAll()
            s.oldestKept = s.version + 1
        }
    }

    /// Events after `resourceVersion` followed by live ones, or Expired when the history no
    /// longer reaches back that far. Nil `resourceVersion` (or "0"): the current objects as ADDED first.
    public func watch(_ kind: Kind, _ selection: Selection, from resourceVersion: Int?) throws -> (events: AsyncStream<WatchEvent>, cancel: @Sendable () -> Void) {
        let id = UUID()
        let (stream, continuation) = AsyncStream<WatchEvent>.makeStream(bufferingPolicy: .unbounded)
        try state.withLock { s in
            if let rv = resourceVersion, rv > 0 {
                guard rv + 1 >= s.oldestKept else { throw StoreError(410, "Expired", "too old resource version: \(rv) (\(s.oldestKept - 1))") }
                for e in s.history where e.resourceVersion > rv { continuation.yield(e) }
            } else {
                for (key, o) in s.objects.sorted(by: { $0.key < $1.key }) where key.hasPrefix(kind.rawValue + "|") {
                    continuation.yield(WatchEvent(type: "ADDED", object: o, kind: kind, resourceVersion: s.version))
                }
            }
            s.watchers[id] = continuation
        }
        let cancel: @Sendable () -> Void = { [weak self] in
            self?.state.withLock { s in s.watchers[id] = nil }
            continuation.finish()
        }
        return (stream, cancel)
    }

    /// Ends every watch (as an API server that restarts does).
    public func dropWatches() {
        let all = state.withLock { s in
            defer { s.watchers.removeAll() }
            return Array(s.watchers.values)
        }
        for w in all { w.finish() }
    }
}
