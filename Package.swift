// swift-tools-version:6.2
import PackageDescription

/// redirect-agent: an eBPF (with iptables fallback) traffic-capture dataplane for Istio ambient.
/// Folder names say the architecture: CShim (thin C over libc/libbpf), SystemCalls (typed errno,
/// sockets, namespaces, subprocesses), Dataplane (capture rules per mode), NodeLab (real CNI pods),
/// MeshProxy (the stand-in ztunnel), LabApp (app server, client, kubelet probe), RedirectAgent (the daemon).
let package = Package(
    name: "redirect-agent",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "redirect-agent", targets: ["RedirectAgent"]),
        .executable(name: "redirect-lab", targets: ["LabCLI"]),
        .executable(name: "mesh-proxy", targets: ["MeshProxyMain"]),
        .executable(name: "lab-app", targets: ["LabApp"]),
        .executable(name: "redirect-cni", targets: ["CNIPlugin"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.28.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
    ],
    targets: [
        .target(name: "CShim", linkerSettings: [.linkedLibrary("bpf"), .linkedLibrary("elf"), .linkedLibrary("z")]),
        .target(name: "SystemCalls", dependencies: ["CShim"]),
        .target(name: "BPFLoader", dependencies: ["CShim", "SystemCalls", .product(name: "Logging", package: "swift-log")]),
        .target(name: "MapSync", dependencies: ["BPFLoader", "CShim", "SystemCalls"]),
        .target(name: "Dataplane", dependencies: ["SystemCalls", "BPFLoader", "MapSync", .product(name: "Logging", package: "swift-log")]),
        .target(name: "NetworkPolicyCheck", dependencies: ["SystemCalls", .product(name: "Yams", package: "Yams")]),
        .target(name: "ZDS", dependencies: ["SystemCalls", "CShim", .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                                            .product(name: "Logging", package: "swift-log")], exclude: ["zds.proto.note"]),
        .target(name: "MeshProxy", dependencies: ["SystemCalls", "BPFLoader", "MapSync", "CShim", "ZDS"]),
        .target(name: "AgentAPI", dependencies: ["SystemCalls"]),
        .target(name: "AgentCore", dependencies: ["AgentAPI", "Dataplane", "BPFLoader", "MapSync", "ZDS", "SystemCalls",
                                                  .product(name: "Logging", package: "swift-log")]),
        .executableTarget(name: "CNIPlugin", dependencies: ["AgentAPI", "SystemCalls"]),
        .target(name: "NodeLab", dependencies: ["SystemCalls", "Dataplane", "MeshProxy", "BPFLoader", "AgentAPI"]),
        .executableTarget(name: "MeshProxyMain", dependencies: [
            "MeshProxy", "SystemCalls", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "LabApp", dependencies: [
            "SystemCalls", "NodeLab", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "LabCLI", dependencies: [
            "NodeLab", "Dataplane", "AgentAPI", "BPFLoader", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "RedirectAgent", dependencies: [
            "Dataplane", "SystemCalls", "NetworkPolicyCheck", "AgentCore", "AgentAPI",
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "SystemCallsTests", dependencies: ["SystemCalls"]),
        .testTarget(name: "BPFProgramTests", dependencies: ["BPFLoader", "MapSync", "CShim", "SystemCalls"]),
        .testTarget(name: "DataplaneTests", dependencies: ["Dataplane"], resources: [.copy("Golden")]),
        .testTarget(name: "AgentCoreTests", dependencies: ["AgentCore", .product(name: "Yams", package: "Yams")]),
        .testTarget(name: "NetworkPolicyCheckTests", dependencies: ["NetworkPolicyCheck", "SystemCalls", .product(name: "Yams", package: "Yams")]),
        .testTarget(name: "LabTests", dependencies: ["NodeLab", "Dataplane", "MeshProxy", "MapSync", "AgentAPI", "LabApp", "MeshProxyMain", "RedirectAgent", "CNIPlugin", "LabCLI"]),
    ],
    swiftLanguageModes: [.v5]
)
