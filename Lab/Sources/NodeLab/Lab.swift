import Foundation
import KubeStandIn
import Synchronization
import Glibc
import SystemCalls
import BPFLoader
import AgentAPI

/// What lab to build.
public struct LabOptions: Sendable {
    /// Number of nodes: 1 or 2 (two are joined by one link).
    public var nodes = 2
    /// Pods created on each node by ``Lab/up()``.
    public var podsPerNode = 2
    /// Give pods and nodes IPv6 addresses too.
    public var ipv6 = true
    /// Unique prefix of every namespace this lab makes.
    public var runID = Lab.newRunID()
    /// Where the CNI plugins are.
    public var pluginDirectory = "/usr/lib/cni"
    /// Extra directory searched for plugins first (the project's own plugin).
    public var extraPluginDirectories: [String] = []
    /// Start the app server in each pod.
    public var startApps = true
    /// Start the mesh proxy on each node.
    public var startProxies = true
    /// Run a redirect-agent on each node with this dataplane, append redirect-cni to the node's
    /// CNI chain, and feed the proxy over ZDS: pods are enrolled as a runtime creates them.
    public var agentDataplane: String?
    /// A program the agents run under (the seccomp test's filter), with its arguments.
    public var agentWrapper: [String] = []
    /// Extra `redirect-agent run` arguments.
    public var agentExtraArguments: [String] = []
    /// Run each node's proxy and kubelet stand-in in cgroups of their own, and tell the dataplane:
    /// only the proxy's sockets skip capture and only the kubelet's connections are SNATed.
    /// false: Istio's rules (the mark alone, any host process).
    public var identities = true
    /// Run the stand-in Kubernetes API: lab pods and their namespaces become objects in it (with
    /// their labels, before the runtime's ADD, as on a cluster), the runtime passes no labels, and
    /// the agents watch it (`--kubeconfig`, `--node-name`).
    public var kubeAPI = false
    /// Who creates pods: the lab calling the CNI chain as a runtime does (fast), or a real runtime,
    /// containerd's CRI plugin, told over CRI to run each pod's sandbox (it then calls the chain).
    public var runtime: PodRuntime = .cni
    /// Creates the defaults.
    public init() {}
}

/// Who creates a lab's pods.
public enum PodRuntime: String, Sendable {
    /// The lab calls the CNI chain itself, as containerd and CRI-O do.
    case cni
    /// containerd (CRI plugin) in each node's namespace, driven over CRI (``LabContainerd``).
    case containerd
}

/// A lab node: its own network namespace, a CNI bridge for its pods, a link to the other node.
public final class LabNode: Sendable {
    /// `n1`, `n2`.
    public let name: String
    /// 1-based.
    public let index: Int
    /// The node's namespace.
    public let netns: NetworkNamespace
    /// The namespace's name for `ip -n`.
    public let netnsName: String
    /// The node's address on the inter-node link.
    public let address: IPAddress
    /// The node's IPv6 address on the link.
    public let addressV6: IPAddress
    /// Pod subnet.
    public let podCIDR: String
    /// IPv6 pod subnet.
    public let podCIDRv6: String
    /// This node's folder for logs, CNI configuration and sockets.
    public let directory: String
    /// CNI configuration directory the lab's runtime reads.
    public var cniConfDir: String { "\(directory)/net.d" }
    /// The node's own CNI plugin directory (install-cni copies redirect-cni there).
    public var cniBinDir: String { "\(directory)/cni-bin" }
    /// A private bpffs mount for this node's pinned maps, programs and links.
    public var bpffsMount: String { "\(directory)/bpffs" }
    /// The eBPF dataplane's pin root on this node.
    public var bpfPinRoot: String { "\(bpffsMount)/redirect-agent" }
    private struct Processes { var proxy: ManagedProcess?; var agent: ManagedProcess?; var containerd: LabContainerd?; var dns: ManagedProcess? }
    private let processes = Mutex(Processes())
    /// The mesh proxy, if started.
    public internal(set) var proxy: ManagedProcess? { get { processes.read(\.proxy) } set { processes.write(\.proxy, newValue) } }
    /// The node's cluster DNS server (``clusterDNS``), if started.
    public internal(set) var dns: ManagedProcess? { get { processes.read(\.dns) } set { processes.write(\.dns, newValue) } }
    /// The cluster DNS as the node's pods reach it (their gateway, port 53), as kube-dns or a
    /// node-local DNS cache would be: it answers every name, with ``Lab/clusterDNSAddresses``.
    public var clusterDNS: SocketAddress { SocketAddress(IPAddress("10.244.\(index).1")!, 53) }
    /// The same over IPv6.
    public var clusterDNSv6: SocketAddress { SocketAddress(IPAddress("fd00:10:244:\(index)::1")!, 53) }
    /// The node's agent, if started.
    public internal(set) var agent: ManagedProcess? { get { processes.read(\.agent) } set { processes.write(\.agent, newValue) } }
    /// The node's container runtime (with ``PodRuntime/containerd``).
    public internal(set) var containerd: LabContainerd? { get { processes.read(\.containerd) } set { processes.write(\.containerd, newValue) } }
    /// The agent's state directory.
    public var agentDirectory: String { "\(directory)/agent" }
    /// The agent's control socket.
    public var agentControlSocket: String { "\(agentDirectory)/control.sock" }
    /// The agent's ZDS socket.
    public var agentZDSSocket: String { "\(agentDirectory)/ztunnel.sock" }
    /// The proxy's control socket.
    public var proxyControlPath: String { "\(directory)/proxy.sock" }
    /// The proxy's connection records (JSON lines).
    public var proxyRecordsPath: String { "\(directory)/proxy-connections.jsonl" }
    /// The node's cgroup v2 folder: its proxy and kubelet stand-in run in groups below it.
    public let cgroupPath: String
    /// The proxy's cgroup.
    public var proxyCgroupPath: String { "\(cgroupPath)/proxy" }
    /// The kubelet stand-in's cgroup.
    public var kubeletCgroupPath: String { "\(cgroupPath)/kubelet" }
    /// Another host process's cgroup (a node daemon that is not the kubelet).
    public var daemonCgroupPath: String { "\(cgroupPath)/daemon" }

    init(index: Int, runID: String, runDirectory: String) {
        self.index = index
        self.name = "n\(index)"
        self.netnsName = "\(runID)-n\(index)"
        self.netns = NetworkNamespace(named: netnsName)
        self.address = IPAddress("172.30.0.\(index)")!
        self.addressV6 = IPAddress("fd00:172:30::\(index)")!
        self.podCIDR = "10.244.\(index).0/24"
        self.podCIDRv6 = "fd00:10:244:\(index)::/64"
        self.directory = "\(runDirectory)/\(name)"
        self.cgroupPath = "\(Lab.cgroupRoot)/\(runID)/n\(index)"
    }
}

/// A lab pod: a network namespace attached to its node by the CNI chain.
public final class LabPod: Sendable {
    /// Who it is.
    public let identity: PodIdentity
    /// Its node.
    public let node: LabNode
    /// Its namespace.
    public let netns: NetworkNamespace
    /// Its namespace name.
    public let netnsName: String
    private struct Attached {
        var cniResult = Data("{}".utf8)
        var ipv4: IPAddress?
        var ipv6: IPAddress?
        var app: ManagedProcess?
    }
    private let attached = Mutex(Attached())
    /// The CNI ADD result (kept as its JSON text).
    public internal(set) var cniResult: [String: Any] {
        get { ((try? JSONSerialization.jsonObject(with: attached.withLock { $0.cniResult })) as? [String: Any]) ?? [:] }
        set { let data = (try? JSONSerialization.data(withJSONObject: newValue)) ?? Data("{}".utf8); attached.withLock { $0.cniResult = data } }
    }
    /// Its IPv4 address.
    public internal(set) var ipv4: IPAddress? { get { attached.read(\.ipv4) } set { attached.write(\.ipv4, newValue) } }
    /// Its IPv6 address.
    public internal(set) var ipv6: IPAddress? { get { attached.read(\.ipv6) } set { attached.write(\.ipv6, newValue) } }
    /// The app server.
    public internal(set) var app: ManagedProcess? { get { attached.read(\.app) } set { attached.write(\.app, newValue) } }
    /// The app's accepted-connection records (JSON lines).
    public var appRecordsPath: String { "\(node.directory)/\(identity.name)-app.jsonl" }

    /// A pod whose namespace is `netnsName` under /run/netns, or at `netnsPath` (a runtime's own folder).
    init(identity: PodIdentity, node: LabNode, netnsName: String, netnsPath: String? = nil) {
        self.identity = identity
        self.node = node
        self.netnsName = netnsName
        self.netns = netnsPath.map { NetworkNamespace(path: $0) } ?? NetworkNamespace(named: netnsName)
    }

    /// Takes the addresses the runtime reported: one per family.
    func assign(_ addresses: [IPAddress]) {
        for addr in addresses {
            if addr.isIPv6 { ipv6 = addr } else { ipv4 = addr }
        }
    }

    /// The pod's name.
    public var name: String { identity.name }
    /// All its addresses.
    public var addresses: [IPAddress] { [ipv4, ipv6].compactMap { $0 } }
}

/// A local node lab: nodes and pods as real network namespaces wired by the real CNI plugins.
///
/// Nothing is changed in the machine's root namespace. Every name carries ``LabOptions/runID``;
/// ``teardown()`` removes all of it and is safe to call twice or after a partial ``up()``.
public final class Lab: Sendable {
    /// The options.
    public let options: LabOptions
    private let members = Mutex<(nodes: [LabNode], pods: [LabPod])>(([], []))
    /// The nodes.
    public var nodes: [LabNode] { members.withLock { $0.nodes } }
    /// The pods, in creation order.
    public var pods: [LabPod] { members.withLock { $0.pods } }
    /// The run's folder under /run/redirect-lab.
    public let directory: String
    private let kubeState = Mutex<(server: APIServer, credentials: Credentials)?>(nil)
    /// The stand-in API server (with ``LabOptions/kubeAPI``).
    public var kube: (server: APIServer, credentials: Credentials)? { kubeState.withLock { $0 } }

    /// The app's ports.
    public static let httpPort: UInt16 = 8080
    /// The echo port.
    public static let echoPort: UInt16 = 7777
    /// Root of every run's folder.
    public static let runRoot = "/run/redirect-lab"
    /// Root of every run's cgroups, below the cgroup2 mount.
    public static let cgroupRoot = "/redirect-lab"

    /// A fresh unique run id: `ra` and 6 hex digits.
    public static func newRunID() -> String {
        "ra" + String(format: "%06x", UInt32.random(in: 0..<0xffffff))
    }

    /// Creates (but does not build) a lab.
    public init(options: LabOptions = LabOptions()) {
        self.options = options
        self.directory = "\(Lab.runRoot)/\(options.runID)"
    }

    /// Builds the nodes, the link between them, and `podsPerNode` pods on each.
    public func up() throws {
        try Lab.retryingSweepRace { try FileManager.default.createDirectory(atPath: self.directory, withIntermediateDirectories: true) }
        for i in 1...options.nodes {
            let node = LabNode(index: i, runID: options.runID, runDirectory: directory)
            members.withLock { $0.nodes.append(node) }
            try makeNode(node)
        }
        if nodes.count == 2 { try link(nodes[0], nodes[1]) }
        if options.kubeAPI { try startKubeAPI() }
        for node in nodes {
            if options.runtime == .containerd { node.containerd = try LabContainerd(node: node) }
            if options.agentDataplane != nil { try startAgent(on: node) }
            if options.startProxies {
                try startClusterDNS(on: node)
                try startProxy(on: node)
            }
            if options.agentDataplane != nil && options.startProxies { try waitForProxyOnAgent(node) }
            for p in 1...max(options.podsPerNode, 1) where options.podsPerNode > 0 {
                _ = try addPod(on: node, name: "\(node.name)-pod\(p)")
            }
        }
    }

    // MARK: nodes

    private func makeNode(_ node: LabNode) throws {
        try FileManager.default.createDirectory(atPath: node.cniConfDir, withIntermediateDirectories: true)
        try ip(["netns", "add", node.netnsName])
        try ip(["-n", node.netnsName, "link", "set", "lo", "up"])
        for path in [node.proxyCgroupPath, node.kubeletCgroupPath, node.daemonCgroupPath] { _ = try Lab.retryingSweepRace { try Cgroup.create(path: path) } }
        try node.netns.run {
            try writeSysctl("net.ipv4.ip_forward", "1")
            if self.options.ipv6 {
                try writeSysctl("net.ipv6.conf.all.forwarding", "1")
                try Lab.disableDAD()
            }
        }
        try writeNetworkList(for: node)
    }

    /// The node's network configuration, as a cluster's CNI would install it.
    private func writeNetworkList(for node: LabNode) throws {
        var ranges: [[[String: String]]] = [[["subnet": node.podCIDR]]]
        if options.ipv6 { ranges.append([["subnet": node.podCIDRv6]]) }
        let list: [String: Any] = [
            "cniVersion": "1.0.0",
            "name": "lab-pods",
            "plugins": [[
                "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
                "ipam": ["type": "host-local", "ranges": ranges, "dataDir": "\(node.directory)/ipam",
                         "routes": [["dst": "0.0.0.0/0"]] + (options.ipv6 ? [["dst": "::/0"]] : [])],
            ]],
        ]
        let data = try JSONSerialization.data(withJSONObject: list, options: [.prettyPrinted, .sortedKeys])
        try data.write(to: URL(fileURLWithPath: "\(node.cniConfDir)/10-lab-bridge.conflist"))
        if options.agentDataplane != nil {
            // A second candidate, lexically later: runtimes and install-cni must both pick the
            // first. Its plugin does not exist, so a pod created from it would fail.
            let decoy: [String: Any] = ["cniVersion": "1.0.0", "name": "decoy", "plugins": [["type": "no-such-plugin"]]]
            try JSONSerialization.data(withJSONObject: decoy).write(to: URL(fileURLWithPath: "\(node.cniConfDir)/50-decoy.conflist"))
            // As on a real node: install-cni edits the runtime's configuration and plugin
            // directories; pods are then created from whatever chain that leaves.
            try Command.run(try LabBinaries.path("redirect-agent"), [
                "install-cni", "--cni-conf-dir", node.cniConfDir, "--cni-bin-dir", node.cniBinDir,
                "--agent-socket", node.agentControlSocket, "--state-dir", "\(node.directory)/cni-install",
            ])
        }
    }

    private func link(_ a: LabNode, _ b: LabNode) throws {
        try ip(["-n", a.netnsName, "link", "add", "to-\(b.name)", "type", "veth", "peer", "name", "to-\(a.name)", "netns", b.netnsName])
        for (node, peer) in [(a, b), (b, a)] {
            let dev = "to-\(peer.name)"
            try ip(["-n", node.netnsName, "addr", "add", "\(node.address)/24", "dev", dev])
            if options.ipv6 { try ip(["-n", node.netnsName, "addr", "add", "\(node.addressV6)/64", "dev", dev, "nodad"]) }
            try ip(["-n", node.netnsName, "link", "set", dev, "up"])
            try ip(["-n", node.netnsName, "route", "add", peer.podCIDR, "via", "\(peer.address)"])
            if options.ipv6 { try ip(["-n", node.netnsName, "-6", "route", "add", peer.podCIDRv6, "via", "\(peer.addressV6)"]) }
        }
    }

    // MARK: pods

    /// The CNI runtime for `node`.
    public func runtime(for node: LabNode) -> CNIRuntime {
        let ours = options.agentDataplane != nil ? [node.cniBinDir] : []
        return CNIRuntime(hostNamespace: node.netns, pluginDirectories: options.extraPluginDirectories + ours + [options.pluginDirectory])
    }

    /// Creates a pod on `node` the way a container runtime does: a sandbox namespace, loopback,
    /// then the node's network list, then (optionally) the app server.
    @discardableResult
    public func addPod(on node: LabNode, name: String, namespace: String = "default", labels: [String: String] = [:],
                       inAPI: Bool = true) throws -> LabPod {
        let uid = UUID().uuidString.lowercased()
        if let kube, inAPI { try Self.createObjects(kube.server.store, node: node, name: name, namespace: namespace, uid: uid, labels: labels) }
        let pod: LabPod
        if let containerd = node.containerd {
            pod = try addSandbox(containerd, on: node, name: name, namespace: namespace, uid: uid)
        } else {
            let identity = PodIdentity(name: name, namespace: namespace, uid: uid, containerID: "\(options.runID)-\(name)",
                                       labels: kube == nil ? labels : [:])
            pod = LabPod(identity: identity, node: node, netnsName: "\(options.runID)-\(name)")
            try addNetwork(pod)
        }
        if let kube, inAPI { // as the kubelet reports them once the sandbox has its network
            let ips = pod.addresses.map { JSONValue.object(["ip": .string($0.description)]) }
            try kube.server.store.patch(.pod, namespace: namespace, name: name, .object(["status": .object([
                "podIP": .string(pod.addresses.first?.description ?? ""), "podIPs": .array(ips)])]), statusOnly: true)
        }
        if options.startApps {
            // With the API, as the kubelet places them: in a cgroup named after the pod's UID.
            let group = kube == nil ? nil : "\(node.cgroupPath)/kubepods/pod\(uid)"
            if let group { _ = try Lab.retryingSweepRace { try Cgroup.create(path: group) } }
            try startApp(in: pod, cgroup: group)
        }
        return pod
    }

    /// The runtime's part of a pod, done by the lab: a namespace, loopback, then the node's
    /// network list.
    private func addNetwork(_ pod: LabPod) throws {
        try ip(["netns", "add", pod.netnsName])
        members.withLock { $0.pods.append(pod) }
        // Addresses must be usable at once: a bridge gateway or pod address still in duplicate
        // address detection drops the first packets, which shows up as slow connects under load.
        if options.ipv6 { try pod.netns.run { try Lab.disableDAD() } }
        let rt = runtime(for: pod.node)
        _ = try rt.add(list: Lab.loopbackList, pod: pod.identity, netns: pod.netns, ifname: "lo")
        let list = try CNIRuntime.loadNetworkList(directory: pod.node.cniConfDir)
        pod.cniResult = try rt.add(list: list, pod: pod.identity, netns: pod.netns)
        pod.assign(CNIRuntime.addresses(in: pod.cniResult))
    }

    /// A pod made by the node's containerd: RunPodSandbox, as the kubelet calls it, with the pod's
    /// cgroups where the kubelet's cgroupfs layout puts them (`kubepods/pod<uid>`).
    private func addSandbox(_ containerd: LabContainerd, on node: LabNode, name: String, namespace: String, uid: String) throws -> LabPod {
        let sandbox = try containerd.runPodSandbox(name: name, namespace: namespace, uid: uid, cgroupParent: "\(node.cgroupPath)/kubepods/pod\(uid)")
        let identity = PodIdentity(name: name, namespace: namespace, uid: uid, containerID: sandbox.id)
        let pod = LabPod(identity: identity, node: node, netnsName: URL(fileURLWithPath: sandbox.netns).lastPathComponent, netnsPath: sandbox.netns)
        members.withLock { $0.pods.append(pod) }
        pod.assign(sandbox.ips)
        return pod
    }

    /// A pod object in the API scheduled on `node`, with no sandbox behind it (what a node's
    /// watch sees of pods the lab does not run).
    public func addPodObject(on node: LabNode, name: String, namespace: String, labels: [String: String] = [:]) throws {
        guard let kube else { throw LabError("the lab runs no Kubernetes API (LabOptions.kubeAPI)") }
        try Self.createObjects(kube.server.store, node: node, name: name, namespace: namespace, uid: UUID().uuidString.lowercased(), labels: labels)
    }

    /// Creates a pod that asks to be in the mesh (label istio.io/dataplane-mode=ambient).
    @discardableResult
    public func addMeshedPod(on node: LabNode, name: String) throws -> LabPod {
        try addPod(on: node, name: name, labels: ["istio.io/dataplane-mode": "ambient"])
    }

    /// Removes a pod the way a runtime does: app stopped, DEL in reverse order, namespace deleted.
    public func removePod(_ pod: LabPod) throws {
        pod.app?.stop()
        pod.app = nil
        if let containerd = pod.node.containerd {
            defer { members.withLock { $0.pods.removeAll { $0 === pod } } }
            return try containerd.removePodSandbox(pod.identity.containerID)
        }
        let rt = runtime(for: pod.node)
        var firstError: Error?
        do {
            let list = try CNIRuntime.loadNetworkList(directory: pod.node.cniConfDir)
            try rt.del(list: list, result: pod.cniResult, pod: pod.identity, netns: pod.netns)
        } catch { firstError = error }
        do { try rt.del(list: Lab.loopbackList, result: nil, pod: pod.identity, netns: pod.netns, ifname: "lo") } catch { firstError = firstError ?? error }
        _ = try? Command.capture("ip", ["netns", "del", pod.netnsName])
        members.withLock { $0.pods.removeAll { $0 === pod } }
        if let firstError { throw firstError }
    }

    static func disableDAD() throws {
        try writeSysctl("net.ipv6.conf.default.accept_dad", "0")
        try writeSysctl("net.ipv6.conf.all.accept_dad", "0")
    }

    static var loopbackList: [String: Any] { ["cniVersion": "1.0.0", "name": "cni-loopback", "plugins": [["type": "loopback"]]] }

    /// The pods of one node.
    public func pods(on node: LabNode) -> [LabPod] { pods.filter { $0.node === node } }

    /// Looks a pod up by name.
    public func pod(_ name: String) -> LabPod? { pods.first { $0.name == name } }

    // MARK: processes

    /// Starts the app server (HTTP with /healthz and /whoami, TCP echo) in `pod`.
    public func startApp(in pod: LabPod, cgroup: String? = nil) throws {
        let app = try ManagedProcess(try LabBinaries.path("lab-app"), [
            "serve", "--netns", pod.netns.path, "--pod", pod.name,
            "--http-port", "\(Lab.httpPort)", "--echo-port", "\(Lab.echoPort)", "--records", pod.appRecordsPath,
        ], logPath: "\(pod.node.directory)/\(pod.name)-app.log", cgroup: cgroup)
        pod.app = app
        try waitForLine("READY", in: app, what: "app in \(pod.name)")
    }

    /// What the cluster DNS answers for every name (TEST-NET addresses: a name that resolves to
    /// one was answered there, not by the proxy).
    public static let clusterDNSAddresses = [IPAddress("198.51.100.53")!, IPAddress("2001:db8::53")!]

    /// Starts the node's cluster DNS: in the node's namespace, on every address, port 53.
    public func startClusterDNS(on node: LabNode) throws {
        let dns = try ManagedProcess(try LabBinaries.path("lab-app"), [
            "dns", "--netns", node.netns.path, "--port", "53", "--answers", Lab.clusterDNSAddresses.map(\.description).joined(separator: ","),
        ], logPath: "\(node.directory)/cluster-dns.log")
        node.dns = dns
        try waitForLine("READY", in: dns, what: "cluster DNS on \(node.name)")
    }

    /// Starts the mesh proxy for `node`, in the node's proxy cgroup unless another is given. Its DNS
    /// listeners forward what is not the mesh's to the node's cluster DNS.
    public func startProxy(on node: LabNode, cgroup: String? = nil) throws {
        let zds = options.agentDataplane != nil ? ["--zds", node.agentZDSSocket] : []
        let proxy = try ManagedProcess(try LabBinaries.path("mesh-proxy"), [
            "--netns", node.netns.path, "--control", node.proxyControlPath, "--records", node.proxyRecordsPath,
            "--dns-upstream", node.clusterDNS.description,
        ] + zds, logPath: "\(node.directory)/proxy.log", cgroup: cgroup ?? node.proxyCgroupPath)
        node.proxy = proxy
        try waitForLine("READY", in: proxy, what: "mesh proxy on \(node.name)")
    }

    /// The arguments the lab runs `redirect-agent run` with on `node`.
    public func agentArguments(_ node: LabNode, dataplane: String) -> [String] {
        // The proxy's identity as the DaemonSet sets it: learned from the proxy's ZDS connection.
        let identities = options.identities ? ["--proxy-cgroup", "zds-peer", "--kubelet-cgroup", node.kubeletCgroupPath]
                                            : ["--proxy-cgroup", "none", "--kubelet-cgroup", "none"]
        return ["run", "--netns", node.netns.path, "--dataplane", dataplane, "--state-dir", node.agentDirectory,
                "--pin-root", node.bpfPinRoot] + identities + options.agentExtraArguments + ["--metrics-address", "127.0.0.1:15029"]
    }

    /// Starts (or restarts) the node's agent, in the node's namespace with the node's private bpffs.
    public func startAgent(on node: LabNode, dataplane: String? = nil) throws {
        try BPFFS.ensureMounted(node.bpffsMount)
        let mode = dataplane ?? options.agentDataplane ?? "auto"
        let exe = try LabBinaries.path("redirect-agent")
        let args = options.agentWrapper.isEmpty ? agentArguments(node, dataplane: mode) : Array(options.agentWrapper.dropFirst()) + [exe] + agentArguments(node, dataplane: mode)
        let kubeArgs = kube == nil ? [] : ["--kubeconfig", kubeconfig(for: node), "--node-name", node.name]
        let agent = try ManagedProcess(options.agentWrapper.first ?? exe, args + kubeArgs, logPath: "\(node.directory)/agent-\(Date().timeIntervalSince1970).log")
        node.agent = agent
        try waitForLine("READY", in: agent, what: "agent on \(node.name)")
    }

    /// Waits until the node's agent reports its proxy connected over ZDS.
    public func waitForProxyOnAgent(_ node: LabNode) throws {
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if let r = try? AgentClient.call(ControlRequest(op: "status"), socket: node.agentControlSocket), r.status?.proxyConnected == true { return }
            usleep(20_000)
        }
        throw LabError("the proxy on \(node.name) did not connect to the agent over ZDS: \(node.proxy?.log() ?? "")")
    }

    private func waitForLine(_ marker: String, in process: ManagedProcess, what: String) throws {
        // Generous: an agent loading every program takes several seconds in the kernel matrix's emulated VMs.
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            if process.log().contains(marker) { return }
            if !process.isRunning { break }
            usleep(5_000)
        }
        throw LabError("\(what) did not start: \(process.log())")
    }

    // MARK: teardown

    /// Removes every process, pod, node and file of this lab. Safe after a failed or partial up.
    public func teardown() {
        for pod in pods.reversed() { try? removePod(pod) }
        for node in nodes {
            node.containerd?.stop()
            node.agent?.stop()
            node.proxy?.stop()
            node.dns?.stop()
        }
        kubeState.withLock { k in
            k?.server.shutdown()
            k = nil
        }
        for node in nodes {
            _ = try? Command.capture("ip", ["netns", "del", node.netnsName])
            if BPFFS.isMounted(node.bpffsMount) { BPFFS.unmount(node.bpffsMount) }
        }
        members.withLock { $0.nodes.removeAll() }
        Lab.sweep(runID: options.runID)
    }

    /// Removes whatever a lab with `runID` (or every lab, when nil) left: namespaces and folders.
    /// For recovery after a crash; processes die with their parent (see ``ParentWatch``).
    public static func sweep(runID: String? = nil) {
        // Agents, proxies and apps of a crashed run outlive their runner; their command lines name
        // the run's folder. Then the run's bpffs mounts, before the folder goes.
        let root = runID.map { "\(runRoot)/\($0)" } ?? runRoot
        _ = try? Command.capture("pkill", ["-KILL", "-f", root])
        let mounts = (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)) ?? ""
        for line in mounts.split(separator: "\n") {
            let point = String(line.split(separator: " ").dropFirst().first ?? "")
            if point.hasPrefix(root + "/") { BPFFS.unmount(point) }
        }
        let prefix = runID.map { "\($0)-" } ?? "ra"
        let list = (try? Command.run("ip", ["netns", "list"])) ?? ""
        for line in list.split(separator: "\n") {
            let name = String(line.split(separator: " ").first ?? "")
            guard name.hasPrefix(prefix), runID != nil || isLabName(name) else { continue }
            _ = try? Command.capture("ip", ["netns", "del", name])
        }
        removeCgroups(runID: runID)
        if let runID {
            try? FileManager.default.removeItem(atPath: "\(runRoot)/\(runID)")
            rmdir(runRoot) // only when no other lab is running
        } else {
            try? FileManager.default.removeItem(atPath: runRoot)
        }
    }

    /// Removes the run's cgroups (every run's, when nil), deepest first, in the cgroup2 hierarchy
    /// and in any v1 hierarchy (where runc puts a containerd sandbox's groups too). A process still
    /// in one (a crashed run's pause) is killed; it leaves its group a moment after, hence the retries.
    static func removeCgroups(runID: String?) {
        for mount in cgroupMounts() {
            let top = mount + cgroupRoot + (runID.map { "/\($0)" } ?? "")
            var dirs: [String] = []
            let walk = FileManager.default.fileExists(atPath: top) ? FileManager.default.enumerator(atPath: top) : nil
            while let sub = walk?.nextObject() as? String {
                var isDir: ObjCBool = false
                if FileManager.default.fileExists(atPath: "\(top)/\(sub)", isDirectory: &isDir), isDir.boolValue { dirs.append("\(top)/\(sub)") }
            }
            for dir in dirs.sorted(by: { $0.count > $1.count }) + [top] {
                let procs = (try? String(contentsOfFile: "\(dir)/cgroup.procs", encoding: .utf8)) ?? ""
                for pid in procs.split(separator: "\n").compactMap({ Int32($0) }) { kill(pid, SIGKILL) }
                for _ in 0..<100 where rmdir(dir) != 0 && errno == EBUSY { usleep(20_000) }
            }
            rmdir(mount + cgroupRoot) // only when no other lab is running
        }
    }

    /// Where every cgroup hierarchy is mounted, cgroup2 first.
    static func cgroupMounts() -> [String] {
        let v2 = (try? Cgroup.mountPoint()).map { [$0] } ?? []
        let mounts = (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)) ?? ""
        let v1 = mounts.split(separator: "\n").compactMap { line -> String? in
            let f = line.split(separator: " ")
            return f.count > 2 && f[2] == "cgroup" ? String(f[1]) : nil
        }
        return v2 + v1.filter { !v2.contains($0) }
    }

    /// Runs `make` (a create with intermediate directories) again when it fails: another lab's
    /// sweep removes the shared root when it is empty, which it can be between the two mkdirs.
    @discardableResult
    static func retryingSweepRace<T>(_ make: () throws -> T) throws -> T {
        for _ in 1..<5 { if let made = try? make() { return made } }
        return try make()
    }

    private static func isLabName(_ name: String) -> Bool {
        name.range(of: "^ra[0-9a-f]{6}-", options: .regularExpression) != nil
    }

    /// Runs `ip` with `args`.
    @discardableResult
    public func ip(_ args: [String]) throws -> String { try Command.run("ip", args) }
}

/// A lab operation failed.
public struct LabError: Error, CustomStringConvertible {
    /// What went wrong.
    public var description: String
    /// Creates an error.
    public init(_ description: String) { self.description = description }
}

extension Mutex {
    /// One field of the guarded value.
    func read<T: Sendable>(_ field: any KeyPath<Value, T> & Sendable) -> T { withLock { $0[keyPath: field] } }
    /// Replaces one field of the guarded value.
    func write<T: Sendable>(_ field: any WritableKeyPath<Value, T> & Sendable, _ value: T) { withLock { $0[keyPath: field] = value } }
}

extension Lab {
    /// Starts the stand-in API server, with credentials in the run's folder.
    /// It runs on the first node, as a control plane would: the first node's agent reaches it on
    /// loopback, the others over the node link; each node gets its own kubeconfig, each with another
    /// kind of user, so every kind is what some agent (and kubectl, with the first node's) runs on:
    /// a client certificate, an exec credential plugin, then a token.
    func startKubeAPI() throws {
        let home = nodes[0]
        let creds = try Credentials.make(in: "\(directory)/kube", hosts: ["127.0.0.1", home.address.description])
        let server = try APIServer(store: ObjectStore(), netns: home.netns, certificate: creds.certificateFile, key: creds.keyFile,
                                   token: creds.token, clientCA: creds.caFile, bookmarkInterval: .seconds(2))
        kubeState.withLock { $0 = (server, creds) }
        let plugin = "\(directory)/kube/exec-credential"
        try creds.writeExecPlugin(to: plugin)
        for (i, node) in nodes.enumerated() {
            let host = node === home ? "127.0.0.1" : home.address.description
            let kinds: [Credentials.User] = [.clientCertificate, .exec(command: plugin)]
            let user = i < kinds.count ? kinds[i] : .token
            try creds.writeKubeconfig(server: "https://\(host):\(server.port)", to: kubeconfig(for: node), user: user)
        }
    }

    /// The kubeconfig `node`'s agent uses.
    public func kubeconfig(for node: LabNode) -> String { "\(directory)/kube/kubeconfig-\(node.name)" }

    /// The pod's object (and its namespace's, if new), as the scheduler leaves them before the
    /// kubelet asks the runtime for the sandbox.
    static func createObjects(_ store: ObjectStore, node: LabNode, name: String, namespace: String, uid: String, labels: [String: String]) throws {
        if (try? store.get(.namespace, namespace: nil, name: namespace)) == nil {
            try store.create(.namespace, namespace: nil, .object(["metadata": .object(["name": .string(namespace)])]))
        }
        try store.create(.pod, namespace: namespace, .object([
            "metadata": .object(["name": .string(name), "uid": .string(uid), "labels": .object(labels.mapValues(JSONValue.string))]),
            "spec": .object(["nodeName": .string(node.name), "containers": .array([.object(["name": .string("app"), "image": .string("lab-app")])])]),
            "status": .object(["phase": .string("Running")]),
        ]))
    }

    /// `kubectl` against the stand-in, with the lab's kubeconfig.
    public func kubectl(_ args: [String]) throws -> String {
        guard let kube else { throw LabError("the lab runs no Kubernetes API (LabOptions.kubeAPI)") }
        _ = kube
        let home = nodes[0]
        return try Command.run("nsenter", ["--net=\(home.netns.path)", "--", try Command.resolve("kubectl"), "--kubeconfig", kubeconfig(for: home),
                                           "--request-timeout", "10s"] + args)
    }
}
