import Foundation
import Glibc
import KubeStandIn
import SystemCalls
import Testing

/// A stand-in API server with fresh credentials and a kubeconfig, and what tears it all down.
func makeKubeAPI() throws -> (APIServer, Credentials, @Sendable () -> Void) {
    let dir = "/tmp/ra-kube-\(UInt32.random(in: 0..<UInt32.max))"
    do {
        let creds = try Credentials.make(in: dir)
        let server = try APIServer(store: ObjectStore(historyLimit: 50), certificate: creds.certificateFile, key: creds.keyFile,
                                   token: creds.token, clientCA: creds.caFile, bookmarkInterval: .milliseconds(200))
        let cleanup: @Sendable () -> Void = {
            server.shutdown()
            try? FileManager.default.removeItem(atPath: dir)
        }
        do { try creds.writeKubeconfig(server: server.url) } catch { cleanup(); throw error }
        return (server, creds, cleanup)
    } catch {
        try? FileManager.default.removeItem(atPath: dir)
        throw error
    }
}

/// A stand-in API server for `body`, torn down afterwards.
func withKubeAPI(_ body: (APIServer, Credentials) throws -> Void) throws {
    let (server, creds, cleanup) = try makeKubeAPI()
    defer { cleanup() }
    try body(server, creds)
}

/// A namespace and a pod on `node`, as the lab's stand-in holds them.
func labPod(_ name: String, namespace: String, node: String = "n1", labels: [String: String] = [:]) -> JSONValue {
    .object(["metadata": .object(["name": .string(name), "namespace": .string(namespace), "labels": .object(labels.mapValues(JSONValue.string))]),
             "spec": .object(["nodeName": .string(node), "containers": .array([.object(["name": .string("app"), "image": .string("lab-app")])])]),
             "status": .object(["phase": .string("Running"), "podIP": .string("10.244.1.9")])])
}

/// The stand-in speaks the real protocol: proven with the real kubectl, not with our own client.
@Suite("The lab's Kubernetes API, through the real kubectl", .serialized)
struct KubeStandInTests {
    func kubectl(_ c: Credentials, _ args: [String]) throws -> String {
        try Command.run("kubectl", ["--kubeconfig", c.kubeconfig, "--request-timeout", "10s"] + args)
    }

    func seed(_ store: ObjectStore) throws {
        try store.create(.namespace, namespace: nil, .object(["metadata": .object(["name": .string("shop")])]))
        try store.create(.pod, namespace: "shop", labPod("cart-1", namespace: "shop"))
    }

    @Test("get, jsonpath, label and annotate on pods and namespaces")
    func getLabelAnnotate() throws {
        try withKubeAPI { server, c in
            try seed(server.store)
            let table = try kubectl(c, ["get", "pods", "-n", "shop"])
            #expect(table.contains("cart-1") && table.contains("Running"), "\(table)")
            #expect(try kubectl(c, ["get", "pod", "cart-1", "-n", "shop", "-o", "jsonpath={.spec.nodeName}"]) == "n1")
            _ = try kubectl(c, ["label", "namespace", "shop", "istio.io/dataplane-mode=ambient"])
            _ = try kubectl(c, ["label", "pod", "cart-1", "-n", "shop", "app=cart"])
            _ = try kubectl(c, ["annotate", "pod", "cart-1", "-n", "shop", "ambient.istio.io/dns-capture=false"])
            let pod = try server.store.get(.pod, namespace: "shop", name: "cart-1")
            #expect(pod[path: ["metadata", "labels", "app"]]?.string == "cart")
            #expect(pod[path: ["metadata", "annotations", "ambient.istio.io/dns-capture"]]?.string == "false")
            #expect(try server.store.get(.namespace, namespace: nil, name: "shop")[path: ["metadata", "labels", "istio.io/dataplane-mode"]]?.string == "ambient")
            #expect(try kubectl(c, ["get", "namespace", "shop", "-o", "jsonpath={.metadata.labels.istio\\.io/dataplane-mode}"]) == "ambient")
            _ = try kubectl(c, ["label", "pod", "cart-1", "-n", "shop", "app-"])
            #expect(try server.store.get(.pod, namespace: "shop", name: "cart-1")[path: ["metadata", "labels", "app"]] == nil, "a label removed with k-")
        }
    }

    @Test("kubectl get -w sees a change made after it started")
    func watch() throws {
        try withKubeAPI { server, c in
            try seed(server.store)
            let out = c.directory + "/watch.out"
            let fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
            let null = open("/dev/null", O_RDWR | O_CLOEXEC)
            defer { close(null) }
            let watcher = try ChildProcess.spawn(try Command.resolve("kubectl"), ["--kubeconfig", c.kubeconfig, "get", "pods", "-n", "shop", "-w", "--output-watch-events"],
                                                 stdin: null, stdout: fd, stderr: fd)
            close(fd)
            defer { watcher.signal(SIGKILL); _ = watcher.wait() }
            func lines() -> [Substring] { ((try? String(contentsOfFile: out, encoding: .utf8)) ?? "").split(separator: "\n") }
            try waitFor("kubectl lists the pod", seconds: 10) { lines().contains { $0.contains("cart-1") } }
            try server.store.patch(.pod, namespace: "shop", name: "cart-1", .object(["status": .object(["phase": .string("Succeeded")])]), statusOnly: true)
            try waitFor("kubectl shows the change", seconds: 10) { lines().contains { $0.contains("MODIFIED") && $0.contains("Succeeded") } }
        }
    }

    @Test("a watch from a compacted resourceVersion ends with 410 Expired; a wrong token is refused")
    func expiredAndUnauthorized() throws {
        try withKubeAPI { server, c in
            try seed(server.store)
            let rv = server.store.resourceVersion
            try server.store.patch(.pod, namespace: "shop", name: "cart-1", .object(["metadata": .object(["labels": .object(["a": .string("b")])])]))
            let replay = try kubectl(c, ["get", "--raw", "/api/v1/namespaces/shop/pods?watch=1&timeoutSeconds=1&resourceVersion=\(rv)"])
            #expect(replay.contains("\"MODIFIED\"") && replay.contains("\"a\":\"b\""), "the presence: a resumed watch replays what it missed: \(replay)")
            server.store.compact()
            let expired = try kubectl(c, ["get", "--raw", "/api/v1/namespaces/shop/pods?watch=1&timeoutSeconds=1&resourceVersion=\(rv)"])
            #expect(expired.contains("\"ERROR\"") && expired.contains("\"code\":410") && expired.contains("Expired"), "\(expired)")
            let bad = try Command.capture("kubectl", ["--kubeconfig", c.kubeconfig, "--token", "wrong", "get", "pods", "-n", "shop"])
            #expect(bad.status != 0 && bad.stderr.contains("must be logged in"), "\(bad.stderr)")
        }
    }
}
