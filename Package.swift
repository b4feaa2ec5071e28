// swift-tools-version:6.2
import PackageDescription

/// redirect-agent: an eBPF (with iptables fallback) traffic-capture dataplane for Istio ambient.
///
/// The tree says what ships and what does not:
/// - `Sources/`: what runs on a customer's node (the agent, the CNI plugin, their libraries).
/// - `Lab/Sources/`: the local node lab only (pods as namespaces, the stand-in ztunnel, lab apps, `redirect-lab`).
/// - `Tests/`: unit and kernel tests of the shipped modules; `Lab/Tests/`: end-to-end suites through the lab.
/// Shipped targets never depend on lab targets (checked by `ArchitectureTests`).
/// Targets that use CShim's C structs: without cross-module optimization. Swift 6.3's release
/// build serializes their small functions for other modules, and then fails to find the implicit
/// BitwiseCopyable conformance of an imported C struct (ra_pod_key, ra_node, ...) when another
/// module deserializes them (a compiler crash in `swift build -c release`).
let cStructUser: [SwiftSetting] = [.unsafeFlags(["-disable-cmo"])]

let shipped: [Target] = [
    // Thin C over libc and libbpf (prefixed `cshim_`, no logic).
    .target(name: "CShim", linkerSettings: [.linkedLibrary("bpf"), .linkedLibrary("elf"), .linkedLibrary("z")]),
    // The syscall boundary: errno to typed errors, sockets, netlink, namespaces on dedicated threads.
    .target(name: "SystemCalls", dependencies: ["CShim"], swiftSettings: cStructUser),
    // libbpf: open, load, pin, attach, test-run.
    .target(name: "BPFLoader", dependencies: ["CShim", "SystemCalls", .product(name: "Logging", package: "swift-log")], swiftSettings: cStructUser),
    // Desired state to kernel maps.
    .target(name: "MapSync", dependencies: ["BPFLoader", "CShim", "SystemCalls"], swiftSettings: cStructUser),
    // The capture modes behind one protocol: ebpf and iptables.
    .target(name: "Dataplane", dependencies: ["SystemCalls", "BPFLoader", "MapSync", .product(name: "Logging", package: "swift-log")], swiftSettings: cStructUser),
    // ztunnel's ZDS protocol.
    .target(name: "ZDS", dependencies: ["SystemCalls", "CShim", .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                                        .product(name: "Logging", package: "swift-log")], exclude: ["zds.proto.note"]),
    // The control socket's requests and answers, shared by the agent and the CNI plugin.
    .target(name: "AgentAPI", dependencies: ["SystemCalls"]),
    // A Kubernetes API client: config (in-cluster, kubeconfig), list, watch, informers, pods/status patches.
    .target(name: "KubeClient", dependencies: [
        "SystemCalls", .product(name: "AsyncHTTPClient", package: "async-http-client"), .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOFoundationCompat", package: "swift-nio"), .product(name: "NIOHTTP1", package: "swift-nio"),
        .product(name: "NIOSSL", package: "swift-nio-ssl"), .product(name: "Logging", package: "swift-log"), .product(name: "Yams", package: "Yams"),
    ]),
    // The node agent's logic.
    .target(name: "AgentCore", dependencies: ["AgentAPI", "Dataplane", "BPFLoader", "MapSync", "ZDS", "SystemCalls", "KubeClient",
                                              .product(name: "Logging", package: "swift-log"), .product(name: "Metrics", package: "swift-metrics"),
                                              .product(name: "Prometheus", package: "swift-prometheus")]),
    // NetworkPolicy preflight.
    .target(name: "NetworkPolicyCheck", dependencies: ["SystemCalls", .product(name: "Yams", package: "Yams")]),
    // `redirect-cni`, the chained CNI plugin.
    .executableTarget(name: "CNIPlugin", dependencies: ["AgentAPI", "SystemCalls"]),
    // `redirect-agent`, the daemon and its CLI.
    .executableTarget(name: "RedirectAgent", dependencies: [
        "Dataplane", "MapSync", "BPFLoader", "SystemCalls", "NetworkPolicyCheck", "AgentCore", "AgentAPI", "KubeClient",
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
        .product(name: "Logging", package: "swift-log"),
    ]),
]

let lab: [Target] = [
    // The stand-in ztunnel: library and `mesh-proxy`.
    .target(name: "MeshProxy", dependencies: ["SystemCalls", "ZDS"], path: "Lab/Sources/MeshProxy"),
    .executableTarget(name: "MeshProxyMain", dependencies: [
        "MeshProxy", "SystemCalls", .product(name: "ArgumentParser", package: "swift-argument-parser"),
    ], path: "Lab/Sources/MeshProxyMain"),
    // Nodes and pods as network namespaces wired by the real CNI plugins.
    .target(name: "NodeLab", dependencies: ["SystemCalls", "Dataplane", "MeshProxy", "BPFLoader", "AgentAPI", "KubeStandIn"], path: "Lab/Sources/NodeLab"),
    // `lab-app`: the workload in each lab pod.
    .executableTarget(name: "LabApp", dependencies: [
        "SystemCalls", "NodeLab", "MeshProxy", .product(name: "ArgumentParser", package: "swift-argument-parser"),
    ], path: "Lab/Sources/LabApp"),
    // The lab's Kubernetes API server (no kube-apiserver runs here): pods and namespaces over HTTPS.
    .target(name: "KubeStandIn", dependencies: [
        "SystemCalls", .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "NIOHTTP1", package: "swift-nio"), .product(name: "NIOSSL", package: "swift-nio-ssl"),
        .product(name: "NIOFoundationCompat", package: "swift-nio"),
    ], path: "Lab/Sources/KubeStandIn"),
    // `redirect-lab`: demo, bench, cleanup.
    .executableTarget(name: "LabCLI", dependencies: [
        "NodeLab", "MeshProxy", "Dataplane", "AgentAPI", "BPFLoader", "KubeStandIn", .product(name: "ArgumentParser", package: "swift-argument-parser"),
    ], path: "Lab/Sources/LabCLI"),
]

let tests: [Target] = [
    // Generators of hostile input for the property-based tests.
    .target(name: "HostileInput", dependencies: [.product(name: "PropertyBased", package: "swift-property-based")], path: "Tests/HostileInput"),
    .testTarget(name: "ArchitectureTests"),
    .testTarget(name: "SystemCallsTests", dependencies: ["SystemCalls"]),
    .testTarget(name: "BPFProgramTests", dependencies: ["BPFLoader", "MapSync", "CShim", "SystemCalls"]),
    .testTarget(name: "DataplaneTests", dependencies: ["Dataplane"], resources: [.copy("Golden"), .copy("IstioReference")]),
    .testTarget(name: "AgentCoreTests", dependencies: ["AgentCore", "AgentAPI", "Dataplane", "SystemCalls", "KubeClient", .product(name: "Yams", package: "Yams"),
                                                      "HostileInput", .product(name: "PropertyBased", package: "swift-property-based")]),
    .testTarget(name: "NetworkPolicyCheckTests", dependencies: ["NetworkPolicyCheck", "SystemCalls", .product(name: "Yams", package: "Yams")]),
    .testTarget(name: "EndToEndTests", dependencies: ["NodeLab", "Dataplane", "BPFLoader", "MeshProxy", "MapSync", "AgentAPI", "LabApp", "MeshProxyMain",
                                                      "RedirectAgent", "CNIPlugin", "LabCLI", "KubeStandIn", "KubeClient",
                                                      "HostileInput", .product(name: "PropertyBased", package: "swift-property-based")],
                  path: "Lab/Tests/EndToEndTests"),
]

let package = Package(
    name: "redirect-agent",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "redirect-agent", targets: ["RedirectAgent"]),
        .executable(name: "redirect-cni", targets: ["CNIPlugin"]),
        .executable(name: "redirect-lab", targets: ["LabCLI"]),
        .executable(name: "mesh-proxy", targets: ["MeshProxyMain"]),
        .executable(name: "lab-app", targets: ["LabApp"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.28.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: shipped + lab + tests,
    swiftLanguageModes: [.v6]
)
