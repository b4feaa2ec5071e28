import KubeClient

/// Istio's annotation on an enrolled pod: `enabled` once capture is in place and the proxy has it.
public let redirectionAnnotation = "ambient.istio.io/redirection"

/// Which pods are in the mesh, by istio-cni's rules, from the pod and its namespace as the API
/// has them.
public struct MeshRules: Sendable, Equatable {
    /// Namespaces never captured (Istio's chart: kube-system).
    public var excludedNamespaces: Set<String> = ["kube-system"]
    /// Istio's defaults.
    public init() {}

    /// In the mesh when the pod, or its namespace without the pod saying `none`, has
    /// `istio.io/dataplane-mode=ambient`; never a host-network pod, a pod with a sidecar, the
    /// proxy's own pods (`ambient.istio.io/redirection: disabled`), a pod in an excluded namespace,
    /// or one that has finished. A pod being deleted stays as it is until it has finished or is
    /// gone (its author decides how long it runs after the delete). Returns the decision and why;
    /// nil when it depends on a namespace the cache does not have (the caller must not guess).
    public func decide(_ pod: Pod, namespace: Namespace?) -> (inMesh: Bool?, reason: String) {
        let annotations = pod.metadata.annotations ?? [:]
        if pod.spec?.hostNetwork == true { return (false, "host network") }
        if annotations["sidecar.istio.io/status"] != nil { return (false, "has a sidecar") }
        if annotations[redirectionAnnotation] == "disabled" { return (false, "\(redirectionAnnotation): disabled") }
        if excludedNamespaces.contains(pod.metadata.namespace ?? "") { return (false, "namespace \(pod.metadata.namespace ?? "") is excluded") }
        if pod.isFinished { return (false, "finished") }
        switch pod.metadata.labels?[dataplaneModeLabel] {
        case "none": return (false, "the pod says \(dataplaneModeLabel)=none")
        case "ambient": return (true, "the pod says \(dataplaneModeLabel)=ambient")
        default:
            guard let namespace else { return (nil, "its namespace \(pod.metadata.namespace ?? "") is not known yet") }
            if namespace.metadata.labels?[dataplaneModeLabel] == "ambient" { return (true, "its namespace says \(dataplaneModeLabel)=ambient") }
            return (false, "neither the pod nor its namespace says \(dataplaneModeLabel)=ambient")
        }
    }
}
