import Dataplane
import Foundation
import KubeClient
import Logging
import SystemCalls

// Live mesh membership from the Kubernetes API: a label set or removed with kubectl on a running
// pod or its namespace enrols or releases it with no restart; a pod deleted or finished is
// removed. While the API is unreachable nothing changes: the informers keep their last view, and
// nothing is removed for being absent from a view that never synced.

extension Agent {
    /// Starts watching the cluster and the thread that applies what it says. Waits (up to
    /// `syncTimeout`) for the API's first answer and applies it once, so the proxy's first
    /// snapshot already reflects the cluster; an API that does not answer changes nothing.
    public func startCluster(syncTimeout: Double = 10) {
        guard let cluster else { return }
        cluster.start { [self] in membershipChanged() }
        let end = Date().addingTimeInterval(syncTimeout)
        while !cluster.hasSynced && Date() < end { usleep(20_000) }
        if cluster.hasSynced { reconcileMembership() } else {
            logger.warning("the Kubernetes API has not answered: enrolled pods stay as they are until it does")
        }
        DedicatedThread.detach(name: "membership") { [self] in
            while true {
                _ = membershipSignal.wait(timeout: .now() + 30) // also every 30 s: the proxy may have acked since
                while membershipSignal.wait(timeout: .now()) == .success {} // one pass for a burst of changes
                reconcileMembership()
            }
        }
    }

    /// Asks the membership thread for a pass.
    func membershipChanged() {
        if cluster != nil { membershipSignal.signal() }
    }

    /// One pass: every pod the agent knows (enrolled, or added by the runtime and not in the mesh)
    /// against the API's view; then each pod's `ambient.istio.io/redirection` annotation.
    public func reconcileMembership() {
        guard let cluster, cluster.hasSynced else { return }
        if let error = cluster.pods.lastError ?? cluster.namespaces.lastError {
            logger.warning("the Kubernetes API is unreachable: enrolled pods stay as they are until it answers", metadata: ["error": "\(error)"])
        }
        var annotations: [(PodSpec, String?)] = []
        let gone = confirmedGone(cluster)
        guarded.withLock { state in
            for (uid, pod) in state.pods.sorted(by: { $0.key < $1.key }) {
                let spec = pod.spec
                let api = cluster.pod(namespace: spec.namespace, name: spec.name, uid: uid)
                let decision = api.map(cluster.decide)
                if let decision, decision.inMesh == nil { continue } // its namespace is not known yet: no guess
                if api == nil, !gone.contains(uid) { continue }
                if let api, let decision, decision.inMesh == true {
                    // Still in the mesh; its annotations may have changed what its capture is.
                    var want = spec
                    try? applyAnnotations(api.metadata.annotations ?? [:], to: &want)
                    guard want != spec, let netnsID = pod.netnsID ?? (try? NetworkNamespace(path: spec.netns).identity()) else { continue }
                    do {
                        try enrollLocked(want, netnsID: netnsID, &state)
                        logger.info("pod's capture changed with its annotations", metadata: ["pod": "\(spec.namespace)/\(spec.name)"])
                    } catch {
                        logger.error("changing a pod's capture failed", metadata: ["pod": "\(spec.namespace)/\(spec.name)", "error": "\(error)"])
                    }
                    continue
                }
                do {
                    try removeLocked(spec, &state)
                    if api != nil {
                        state.known[uid] = spec
                        annotations.append((spec, nil))
                        try store.save(state)
                    }
                    logger.info("pod left the mesh", metadata: ["pod": "\(spec.namespace)/\(spec.name)", "why": "\(decision?.reason ?? "deleted from the API")"])
                } catch {
                    logger.error("releasing a pod failed", metadata: ["pod": "\(spec.namespace)/\(spec.name)", "error": "\(error)"])
                }
            }
            for (uid, spec) in state.known.sorted(by: { $0.key < $1.key }) {
                guard let api = cluster.pod(namespace: spec.namespace, name: spec.name, uid: uid), NetworkNamespace(path: spec.netns).exists else {
                    state.known[uid] = nil
                    try? store.save(state)
                    continue
                }
                guard cluster.decide(api).inMesh == true else { continue }
                do {
                    var s = spec
                    try applyAnnotations(api.metadata.annotations ?? [:], to: &s)
                    try enrollLocked(s, netnsID: try NetworkNamespace(path: s.netns).identity(), &state)
                    logger.info("pod joined the mesh", metadata: ["pod": "\(spec.namespace)/\(spec.name)", "why": "\(cluster.decide(api).reason)"])
                } catch {
                    logger.error("enrolling a running pod failed", metadata: ["pod": "\(spec.namespace)/\(spec.name)", "error": "\(error)"])
                }
            }
            adoptUnrecorded(cluster, &state)
            let status = zds?.connected == true ? "enabled" : "pending"
            for pod in state.pods.values { annotations.append((pod.spec, status)) }
        }
        for (spec, value) in annotations { annotate(spec, value, cluster) }
    }

    /// The enrolled pods missing from the API's view that a direct GET confirms are gone, asked
    /// before the pass takes the agent's lock: a slow or unreachable API (each GET may wait its
    /// timeout) must not hold up ADDs and DELs meanwhile. A pod that comes back between the GET
    /// and the pass is in the view again, and stays.
    private func confirmedGone(_ cluster: ClusterView) -> Set<String> {
        let missing = guarded.withLock { state in
            state.pods.filter { cluster.pod(namespace: $0.value.spec.namespace, name: $0.value.spec.name, uid: $0.key) == nil }.map(\.value.spec)
        }
        return Set(missing.filter { cluster.confirmGone(namespace: $0.namespace, name: $0.name, uid: $0.uid) }.map(\.uid))
    }

    /// Pods the API puts in the mesh on this node that the agent holds no record of (they started
    /// before it, or their ADD was never recorded): found through their processes' cgroups
    /// (``PodNamespaceScan``), at most once every 30 s each, and enrolled.
    private func adoptUnrecorded(_ cluster: ClusterView, _ state: inout AgentState) {
        let recorded = Set(state.pods.keys).union(state.known.keys)
        for api in cluster.pods.objects where api.status?.phase == "Running" {
            guard let uid = api.metadata.uid, !recorded.contains(uid), cluster.decide(api).inMesh == true else { continue }
            let due = scanned.withLock { last in
                defer { last[uid] = Date() }
                return last[uid].map { Date().timeIntervalSince($0) > 30 } ?? true
            }
            guard due, let netns = PodNamespaceScan.find(uid: uid) else { continue }
            do {
                // The addresses are the API's (the kubelet's report), and the namespace must hold
                // them: a pod cannot claim another's address by adding it to its interface.
                let ips = (api.status?.podIPs ?? []).compactMap { IPAddress($0.ip) }
                let held = Set(try NetworkNamespace(path: netns).run { try Netlink.addresses() })
                guard !ips.isEmpty, ips.allSatisfy(held.contains) else {
                    throw AgentError(.invalidRequest, "the namespace found for it does not hold its addresses \(ips) (it has \(held.sorted { $0.description < $1.description }))")
                }
                var spec = PodSpec(uid: uid, name: api.metadata.name, namespace: api.metadata.namespace ?? "", netns: netns, ips: ips)
                try applyAnnotations(api.metadata.annotations ?? [:], to: &spec)
                try enrollLocked(spec, netnsID: try podNamespace(spec), &state)
                logger.info("pod joined the mesh, found by its processes", metadata: ["pod": "\(spec.namespace)/\(spec.name)", "netns": "\(netns)"])
            } catch {
                logger.error("enrolling a pod found by its processes failed", metadata: ["pod": "\(api.metadata.namespace ?? "")/\(api.metadata.name)", "error": "\(error)"])
            }
        }
    }

    /// Writes the pod's redirection annotation through pods/status (as Istio does), when the API's
    /// copy differs; nil removes it.
    private func annotate(_ spec: PodSpec, _ value: String?, _ cluster: ClusterView) {
        guard let pod = cluster.pod(namespace: spec.namespace, name: spec.name, uid: spec.uid),
              pod.metadata.annotations?[redirectionAnnotation] != value else { return }
        let json = value.map { "\"\($0)\"" } ?? "null"
        let patch = Data("{\"metadata\":{\"annotations\":{\"\(redirectionAnnotation)\":\(json)}}}".utf8)
        let client = cluster.client, logger = self.logger
        Task {
            do { try await client.patchPodStatus(namespace: spec.namespace, name: spec.name, patch) } catch {
                logger.warning("writing the pod's redirection annotation failed", metadata: ["pod": "\(spec.namespace)/\(spec.name)", "error": "\(error)"])
            }
        }
    }
}
