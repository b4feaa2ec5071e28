import Foundation

/// The subset of Kubernetes' ObjectMeta the agent reads.
public struct ObjectMeta: Codable, Sendable, Equatable {
    /// Name.
    public var name: String
    /// Namespace (pods).
    public var namespace: String?
    /// UID.
    public var uid: String?
    /// Labels.
    public var labels: [String: String]?
    /// Annotations.
    public var annotations: [String: String]?
    /// resourceVersion.
    public var resourceVersion: String?
    /// Set once deletion has begun.
    public var deletionTimestamp: String?
    /// Creates metadata.
    public init(name: String, namespace: String? = nil, uid: String? = nil, labels: [String: String]? = nil, annotations: [String: String]? = nil) {
        self.name = name; self.namespace = namespace; self.uid = uid; self.labels = labels; self.annotations = annotations
    }
}

/// Any object with metadata: what a watch or list carries.
public protocol KubeObject: Codable, Sendable {
    /// Its metadata.
    var metadata: ObjectMeta { get }
    /// The collection path under /api/v1 (`pods`, `namespaces`).
    static var resource: String { get }
}

/// A pod, as far as mesh membership needs it.
public struct Pod: KubeObject, Equatable {
    /// Metadata.
    public var metadata: ObjectMeta
    /// Spec.
    public var spec: Spec?
    /// Status.
    public var status: Status?
    /// `pods`.
    public static let resource = "pods"

    /// The spec fields used.
    public struct Spec: Codable, Sendable, Equatable {
        /// The node it is scheduled to.
        public var nodeName: String?
        /// Host-network pods are never captured.
        public var hostNetwork: Bool?
        /// Creates a spec.
        public init(nodeName: String? = nil, hostNetwork: Bool? = nil) { self.nodeName = nodeName; self.hostNetwork = hostNetwork }
    }

    /// The status fields used.
    public struct Status: Codable, Sendable, Equatable {
        /// Pending, Running, Succeeded, Failed.
        public var phase: String?
        /// The pod's addresses, as the kubelet reported them.
        public var podIPs: [PodIP]?
        /// One address.
        public struct PodIP: Codable, Sendable, Equatable {
            /// The address.
            public var ip: String
            /// Creates one.
            public init(ip: String) { self.ip = ip }
        }
        /// Creates a status.
        public init(phase: String? = nil, podIPs: [String]? = nil) { self.phase = phase; self.podIPs = podIPs?.map(PodIP.init) }
    }

    /// Creates a pod.
    public init(metadata: ObjectMeta, spec: Spec? = nil, status: Status? = nil) { self.metadata = metadata; self.spec = spec; self.status = status }

    /// Finished pods (Succeeded, Failed) no longer run anything to capture.
    public var isFinished: Bool { status?.phase == "Succeeded" || status?.phase == "Failed" }
}

/// A namespace.
public struct Namespace: KubeObject, Equatable {
    /// Metadata.
    public var metadata: ObjectMeta
    /// `namespaces`.
    public static let resource = "namespaces"
    /// Creates a namespace.
    public init(metadata: ObjectMeta) { self.metadata = metadata }
}

/// A list answer.
struct ObjectList<T: KubeObject>: Decodable {
    struct Meta: Decodable { var resourceVersion: String? }
    var metadata: Meta?
    var items: [T]
}

/// A Status answer (errors, and a watch's ERROR event).
public struct StatusObject: Codable, Sendable {
    /// Message.
    public var message: String?
    /// Reason, e.g. Expired.
    public var reason: String?
    /// HTTP code, e.g. 410.
    public var code: Int?
}

/// A watch line's type, read before its object is decoded by what the type says it is.
struct WatchEventType: Decodable { var type: String }

/// A watch line carrying `T` (ADDED, MODIFIED, DELETED, and ERROR with a Status).
struct TypedWatchEvent<T: Decodable>: Decodable { var object: T }

/// A BOOKMARK's object: only its resourceVersion matters.
struct Bookmark: Decodable {
    struct Meta: Decodable { var resourceVersion: String? }
    var metadata: Meta
}
