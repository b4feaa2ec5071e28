import SystemCalls

/// Which dataplane captures traffic.
public enum DataplaneMode: String, Sendable, CaseIterable, Codable {
    /// BPF programs on pod interfaces.
    case ebpf
    /// iptables rules inside each pod (Istio's in-pod mode).
    case iptables
    /// Native nftables rules inside each pod (Istio 1.28's `global.nativeNftables`).
    case nftables
    /// ebpf when the kernel allows it, else nftables or iptables, by what the node uses.
    case auto
}

/// Everything that decides what gets captured, with Istio's values as defaults.
public struct CaptureConfig: Sendable, Equatable, Codable {
    /// The proxy's outbound capture port.
    public var outboundPort: UInt16 = 15001
    /// The proxy's inbound plaintext capture port.
    public var inboundPort: UInt16 = 15006
    /// The proxy's inbound tunnel (HBONE) port, reached directly.
    public var tunnelPort: UInt16 = 15008
    /// The proxy's DNS port.
    public var dnsPort: UInt16 = 15053
    /// The mark the proxy puts on its sockets.
    public var proxyMark: UInt32 = 0x539
    /// The mask the marks are matched with.
    public var markMask: UInt32 = 0xfff
    /// The connmark that routes replies back to the proxy's transparent sockets.
    public var connMark: UInt32 = 0x111
    /// A mark the iptables listener guard puts on SYNs before the socket lookup, to tell "a socket
    /// without the proxy's mark" from "no full socket" (TIME_WAIT): every mask bit that is in neither
    /// the proxy's mark nor the connection mark.
    public var guardSentinelMark: UInt32 { markMask & ~(proxyMark | connMark) }
    /// nftables mode, on the node: the conntrack mark bit that carries "a connection of the
    /// kubelet's" from output (where nft can ask a socket's cgroup) to the probe SNAT in
    /// post-routing. Outside Istio's 0xfff.
    public var probeSNATMark: UInt32 = 0x1000
    /// The policy routing table for those replies.
    public var routeTable: Int = 100
    /// The `ip rule` priority.
    public var rulePriority: Int = 32764
    /// The IPv4 source kubelet probes are SNATed to.
    public var probeIPv4: IPAddress = IPAddress("169.254.7.127")!
    /// The IPv6 source kubelet probes are SNATed to.
    public var probeIPv6: IPAddress = IPAddress("fd16:9254:7127:1337:ffff:ffff:ffff:ffff")!
    /// Capture DNS (UDP and TCP 53) to the proxy's DNS port, unless a pod says otherwise
    /// (``PodSpec/dnsCapture``). On by default, as in Istio since 1.25.
    public var dnsCapture = true
    /// Prefix of every chain: `ISTIO` gives ISTIO_PRERT, ISTIO_OUTPUT, ISTIO_POSTRT.
    public var chainPrefix = "ISTIO"
    /// Prefix of the node's ipsets of in-mesh pod IPs (`-v4`/`-v6` appended).
    public var ipsetPrefix = "istio-inpod-probes"

    /// Only sockets in this cgroup are the proxy's; nil: any socket with the proxy mark (Istio's
    /// rule, which any app with CAP_NET_RAW can forge).
    public var proxyCgroup: Cgroup?
    /// Proxies that another has replaced (a ztunnel rolling upgrade) and that still run: their
    /// sockets are the proxy's too, so the connections they drain keep flowing, until they exit.
    /// Only with ``proxyCgroup``.
    public var drainingProxyCgroups: [Cgroup] = []
    /// Every cgroup whose sockets are the proxy's: the proxy's, then the draining ones.
    public var proxyCgroups: [Cgroup] {
        guard let proxy = proxyCgroup else { return [] }
        return [proxy] + drainingProxyCgroups.filter { $0 != proxy }
    }
    /// The proxy's cgroup is learned from its ZDS connection and no proxy has connected yet
    /// (``proxyCgroup`` is nil): no socket is the proxy's, whatever its mark.
    public var proxyUnknown = false
    /// Only connections from this cgroup (the kubelet's) are SNATed to the probe IP; nil: any
    /// socket of the node (Istio's rule).
    public var kubeletCgroup: Cgroup?

    /// Connections a pod has when it is enrolled keep going uncaptured until they close (as under
    /// Istio's iptables rules); false: they are cut off (ebpf mode drops their packets, iptables
    /// mode redirects them mid-stream and the proxy resets them).
    public var keepExistingConnections = true

    /// Istio's defaults.
    public init() {}

    /// Whether `pod`'s DNS is captured: its own setting, else the node's.
    public func capturesDNS(_ pod: PodSpec) -> Bool { pod.dnsCapture ?? dnsCapture }

    /// The probe IP of `family` (AF_INET or AF_INET6).
    public func probeIP(ipv6: Bool) -> IPAddress { ipv6 ? probeIPv6 : probeIPv4 }

    /// The ipset of one family.
    public func ipsetName(ipv6: Bool) -> String { "\(ipsetPrefix)-\(ipv6 ? "v6" : "v4")" }

    /// Sets the probe IPs from text, as the agent reads them from flags or
    /// `HOST_PROBE_SNAT_IP`/`HOST_PROBE_SNAT_IPV6`; nil leaves a family unchanged.
    public mutating func setProbeIPs(v4: String?, v6: String?) throws {
        if let v4 {
            guard let ip = IPAddress(v4), !ip.isIPv6 else { throw ConfigError("HOST_PROBE_SNAT_IP: '\(v4)' is not an IPv4 address") }
            try Self.checkUsable(ip, v4)
            probeIPv4 = ip
        }
        if let v6 {
            guard let ip = IPAddress(v6), ip.isIPv6 else { throw ConfigError("HOST_PROBE_SNAT_IPV6: '\(v6)' is not an IPv6 address") }
            try Self.checkUsable(ip, v6)
            probeIPv6 = ip
        }
    }

    private static func checkUsable(_ ip: IPAddress, _ text: String) throws {
        let b = ip.bytes
        if b.allSatisfy({ $0 == 0 }) { throw ConfigError("probe IP '\(text)' is unspecified") }
        if !ip.isIPv6 && (b[0] == 127 || b[0] >= 224) { throw ConfigError("probe IP '\(text)' is loopback, multicast or reserved") }
        if ip.isIPv6 && (b == [UInt8](repeating: 0, count: 15) + [1] || b[0] == 0xff) { throw ConfigError("probe IP '\(text)' is loopback or multicast") }
    }
}

/// A configuration value was rejected.
public struct ConfigError: Error, CustomStringConvertible, Equatable {
    /// What is wrong.
    public var description: String
    /// Creates an error.
    public init(_ d: String) { description = d }
}
