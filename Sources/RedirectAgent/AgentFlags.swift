import AgentCore
import KubeClient
import ArgumentParser
import BPFLoader
import Dataplane
import Foundation
import SystemCalls

/// An environment variable, for flag defaults: every flag can also come from the environment.
func env(_ name: String) -> String? {
    let v = ProcessInfo.processInfo.environment[name]
    return (v?.isEmpty ?? true) ? nil : v
}

/// The flags `run` and `uninstall` share.
struct AgentFlags: ParsableArguments {
    @Option(help: "ebpf, iptables, nftables or auto (env REDIRECT_DATAPLANE).") var dataplane: String = env("REDIRECT_DATAPLANE") ?? "auto"
    @Option(help: "IPv4 source of kubelet probes (env HOST_PROBE_SNAT_IP, as Istio).") var probeIP: String?
    @Option(name: .customLong("probe-ipv6"), help: "IPv6 source of kubelet probes (env HOST_PROBE_SNAT_IPV6, as Istio).") var probeIPv6: String?
    @Option(help: "State file and sockets (env REDIRECT_STATE_DIR).") var stateDir: String = env("REDIRECT_STATE_DIR") ?? "/run/redirect-agent"
    @Option(help: "Control socket for the CNI plugin and status (env REDIRECT_CONTROL_SOCKET).") var controlSocket: String?
    @Option(help: "ZDS socket the proxy connects to (env REDIRECT_ZDS_SOCKET).") var zdsSocket: String?
    @Option(help: "bpffs directory for pins (env REDIRECT_PIN_ROOT).") var pinRoot: String = env("REDIRECT_PIN_ROOT") ?? "/sys/fs/bpf/redirect-agent"
    @Option(help: "The compiled BPF programs (env REDIRECT_BPF_OBJECT).") var bpfObject: String?
    @Option(help: "clsact or tcx (env REDIRECT_ATTACH).") var attach: String = env("REDIRECT_ATTACH") ?? "clsact"
    @Option(help: "legacy or nft; detected when absent (env REDIRECT_IPTABLES_BACKEND).") var iptablesBackend: String?
    @Option(help: "Node-local pod selection file (env REDIRECT_SELECTION_FILE).") var selectionFile: String?
    @Flag(inversion: .prefixedNo, help: "Capture pods' DNS (UDP and TCP 53) to the proxy's 15053 on their loopback, as Istio does by default; a pod's ambient.istio.io/dns-capture annotation (\"true\" or \"false\") overrides it.")
    var dnsCapture = true
    @Flag(inversion: .prefixedNo, help: "Connections a pod has when it is enrolled keep going uncaptured until they close, as under Istio's iptables rules; with --no-keep-existing-connections they are cut off.")
    var keepExistingConnections = true
    @Option(help: "cgroup v2 path of the proxy: only its sockets skip capture. 'zds-peer': the cgroup of the process connected to the ZDS socket, learned at each connection (until one connects, no socket skips capture). 'none': any socket with the proxy mark, as Istio (env REDIRECT_PROXY_CGROUP).")
    var proxyCgroup: String?
    @Option(help: "cgroup v2 path of the kubelet: only its connections are SNATed to the probe IP. 'auto' (default): the cgroup of the running kubelet process, else 'none'. 'none': every host process, as Istio (env REDIRECT_KUBELET_CGROUP).")
    var kubeletCgroup: String?
    @Option(help: "kubeconfig of the Kubernetes API to watch pods and namespaces in (env KUBECONFIG). Without it, in a pod (KUBERNETES_SERVICE_HOST set), the in-cluster service account; else none: labels come from CNI_ARGS and --selection-file.")
    var kubeconfig: String?
    @Option(help: "This node's name, as the API knows it (env NODE_NAME; default: the host name).") var nodeName: String?
    @Option(help: "Namespaces whose pods are never captured, comma-separated (env REDIRECT_EXCLUDED_NAMESPACES; Istio's cni.excludeNamespaces).")
    var excludedNamespaces: String = env("REDIRECT_EXCLUDED_NAMESPACES") ?? "kube-system"
    @Option(help: "Enter this network namespace first (the lab runs one agent per node namespace).") var netns: String?
    @Option(help: "Where the node's cgroup v2 hierarchy is mounted, when the agent runs in its own cgroup namespace: the ebpf dataplane links its probe programs to its root, and cgroup paths resolve below it (env REDIRECT_CGROUP_ROOT; default: the cgroup2 mount).")
    var cgroupRoot: String = env("REDIRECT_CGROUP_ROOT") ?? ""

    /// The agent options these flags describe.
    func options() throws -> AgentOptions {
        // Flags win over the environment (flags with optional values take no defaults).
        let probeIP = probeIP ?? env("HOST_PROBE_SNAT_IP")
        let probeIPv6 = probeIPv6 ?? env("HOST_PROBE_SNAT_IPV6")
        let controlSocket = controlSocket ?? env("REDIRECT_CONTROL_SOCKET")
        let zdsSocket = zdsSocket ?? env("REDIRECT_ZDS_SOCKET")
        let bpfObject = bpfObject ?? env("REDIRECT_BPF_OBJECT")
        let iptablesBackend = iptablesBackend ?? env("REDIRECT_IPTABLES_BACKEND")
        let selectionFile = selectionFile ?? env("REDIRECT_SELECTION_FILE")
        if !cgroupRoot.isEmpty { Cgroup.useHierarchy(at: cgroupRoot) }
        guard let mode = DataplaneMode(rawValue: dataplane) else { throw ValidationError("--dataplane: expected ebpf, iptables, nftables or auto, got '\(dataplane)'") }
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var o = AgentOptions(bpfObject: bpfObject ?? EBPFOptions.defaultObjectPath(besides: (exe as NSString).deletingLastPathComponent))
        o.mode = mode
        do { try o.capture.setProbeIPs(v4: probeIP, v6: probeIPv6) } catch { throw ValidationError("\(error)") }
        o.capture.dnsCapture = dnsCapture
        o.capture.keepExistingConnections = keepExistingConnections
        let proxy = proxyCgroup ?? env("REDIRECT_PROXY_CGROUP") ?? "none"
        o.learnProxyCgroup = proxy == "zds-peer"
        if !o.learnProxyCgroup { o.capture.proxyCgroup = try Self.cgroup(proxy, flag: "--proxy-cgroup", auto: nil) }
        o.capture.kubeletCgroup = try Self.cgroup(kubeletCgroup ?? env("REDIRECT_KUBELET_CGROUP") ?? "auto", flag: "--kubelet-cgroup",
                                                  auto: { KubeletProcess.cgroup() })
        o.stateDirectory = stateDir
        o.controlSocket = controlSocket ?? "\(stateDir)/control.sock"
        o.zdsSocket = zdsSocket ?? "\(stateDir)/ztunnel.sock"
        o.bpf.pinRoot = pinRoot
        guard let a = AttachMode(rawValue: attach) else { throw ValidationError("--attach: expected clsact or tcx") }
        o.bpf.attach = a
        if let b = iptablesBackend {
            guard let backend = IptablesBackend(rawValue: b) else { throw ValidationError("--iptables-backend: expected legacy or nft") }
            o.iptablesBackend = backend
        }
        o.selectionFile = selectionFile
        o.kube = try Self.kubeConfig(kubeconfig ?? env("KUBECONFIG"))
        if let name = nodeName ?? env("NODE_NAME") { o.nodeName = name }
        o.meshRules.excludedNamespaces = Set(excludedNamespaces.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty })
        return o
    }

    /// The API to watch: a kubeconfig, else the in-cluster service account, else none.
    static func kubeConfig(_ path: String?) throws -> KubeConfig? {
        do {
            if let path { return try KubeConfig.file(path) }
            if env("KUBERNETES_SERVICE_HOST") != nil { return try KubeConfig.inCluster() }
            return nil
        } catch { throw ValidationError("Kubernetes API: \(error)") }
    }

    /// Resolves a cgroup flag: `none`, `auto` (when `auto` is given) or a path that must exist.
    static func cgroup(_ value: String, flag: String, auto: (() -> Cgroup?)?) throws -> Cgroup? {
        switch value {
        case "none": return nil
        case "auto" where auto != nil: return auto!()
        default:
            do { return try Cgroup(path: value) } catch { throw ValidationError("\(flag): \(error)") }
        }
    }

    /// Enters `--netns` on the main thread, before any other thread exists.
    func enterNamespace() throws {
        if let netns { try NetworkNamespace(path: netns).enterOnMainThread() }
    }
}
