import Dataplane
import Foundation

/// The label that puts pods in the mesh.
public let dataplaneModeLabel = "istio.io/dataplane-mode"

/// Istio's pod annotation naming interfaces whose inbound traffic is the pod's outbound (comma-separated).
public let rerouteVirtualInterfacesAnnotation = "istio.io/reroute-virtual-interfaces"

/// Istio's pod annotation that turns inbound capture off for the pod (`"true"`); outbound stays captured.
public let bypassInboundCaptureAnnotation = "ambient.istio.io/bypass-inbound-capture"

/// Istio's pod annotation that turns DNS capture on (`"true"`) or off (`"false"`) for the pod,
/// whatever the node's setting.
public let dnsCaptureAnnotation = "ambient.istio.io/dns-capture"

/// The parts of a pod's capture its annotations decide.
func applyAnnotations(_ annotations: [String: String], to spec: inout PodSpec) throws {
    spec.rerouteInterfaces = try RequestValidation.rerouteInterfaces(annotations[rerouteVirtualInterfacesAnnotation])
    spec.bypassInboundCapture = annotations[bypassInboundCaptureAnnotation] == "true"
    spec.dnsCapture = RequestValidation.dnsCapture(annotations[dnsCaptureAnnotation])
}

/// Decides whether a pod is in the mesh. One seam: today labels come from CNI_ARGS or a
/// node-local selection file; a Kubernetes API watch can replace it.
public protocol PodSelection: Sendable {
    /// The pod's and its namespace's labels as this source knows them.
    func labels(namespace: String, pod: String, fromCNI: [String: String], namespaceFromCNI: [String: String]) -> (pod: [String: String], namespace: [String: String])
    /// The pod's annotations as this source knows them.
    func annotations(namespace: String, pod: String) -> [String: String]
}

extension PodSelection {
    /// No annotations known.
    public func annotations(namespace: String, pod: String) -> [String: String] { [:] }

    /// In the mesh when the pod or its namespace says `ambient` and the pod does not say `none`.
    public func isInMesh(namespace: String, pod: String, podLabels: [String: String], namespaceLabels: [String: String]) -> Bool {
        let (p, n) = labels(namespace: namespace, pod: pod, fromCNI: podLabels, namespaceFromCNI: namespaceLabels)
        if p[dataplaneModeLabel] == "none" { return false }
        return p[dataplaneModeLabel] == "ambient" || n[dataplaneModeLabel] == "ambient"
    }
}

/// Labels from CNI_ARGS, overlaid with a node-local JSON file (read on every decision, so it can
/// change while the agent runs):
///
///     {"namespaces": {"shop": {"istio.io/dataplane-mode": "ambient"}},
///      "pods": {"shop/cart-1": {"istio.io/dataplane-mode": "none"}},
///      "annotations": {"shop/vm-1": {"istio.io/reroute-virtual-interfaces": "tap0"}}}
public struct FileAndArgsSelection: PodSelection {
    /// The file; nil: CNI_ARGS only.
    public var path: String?
    /// Creates the selection.
    public init(path: String?) { self.path = path }

    struct File: Decodable {
        var namespaces: [String: [String: String]]?
        var pods: [String: [String: String]]?
        var annotations: [String: [String: String]]?
    }

    /// The file's annotations for the pod.
    public func annotations(namespace: String, pod: String) -> [String: String] {
        guard let path, let data = FileManager.default.contents(atPath: path), let f = try? JSONDecoder().decode(File.self, from: data) else { return [:] }
        return f.annotations?["\(namespace)/\(pod)"] ?? [:]
    }

    /// CNI_ARGS labels first, the file's on top.
    public func labels(namespace: String, pod: String, fromCNI: [String: String], namespaceFromCNI: [String: String]) -> (pod: [String: String], namespace: [String: String]) {
        var p = fromCNI, n = namespaceFromCNI
        if let path, let data = FileManager.default.contents(atPath: path), let f = try? JSONDecoder().decode(File.self, from: data) {
            p.merge(f.pods?["\(namespace)/\(pod)"] ?? [:]) { $1 }
            n.merge(f.namespaces?[namespace] ?? [:]) { $1 }
        }
        return (p, n)
    }
}
