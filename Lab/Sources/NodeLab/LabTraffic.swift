import Foundation
import MeshProxy
import SystemCalls

/// Traffic the lab makes: kubelet probes from the node, requests from pods, proxy control.
extension Lab {
    /// The kubelet stand-in: an HTTP GET of `path` on the pod's app, from a process in the node's
    /// namespace and in the kubelet's cgroup, as kubelet's prober does.
    public func probe(_ pod: LabPod, path: String = "/healthz", ipv6: Bool = false, timeout: Double = 3) throws -> MiniHTTP.Response {
        try hostGet(pod, cgroup: pod.node.kubeletCgroupPath, path: path, ipv6: ipv6, timeout: timeout)
    }

    /// An HTTP GET of `path` on the pod's app from a host process in `cgroup` (another node
    /// daemon, when it is not the kubelet's).
    /// `mark`: the socket's SO_MARK (what a host process with CAP_NET_RAW can set).
    public func hostGet(_ pod: LabPod, cgroup: String, path: String = "/healthz", ipv6: Bool = false, timeout: Double = 3, mark: UInt32? = nil) throws -> MiniHTTP.Response {
        guard let ip = ipv6 ? pod.ipv6 : pod.ipv4 else { throw LabError("\(pod.name) has no \(ipv6 ? "IPv6" : "IPv4") address") }
        let (exe, args) = try ManagedProcess.inCgroup(cgroup, try LabBinaries.path("lab-app"), [
            "get", "--netns", pod.node.netns.path, "--target", SocketAddress(ip, Lab.httpPort).description,
            "--path", path, "--timeout", "\(timeout)",
        ] + (mark.map { ["--mark", "\($0)"] } ?? []))
        let result = try Command.capture(exe, args)
        guard result.status == 0, let json = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any],
              let status = json["status"] as? Int, let body = json["body"] as? String else {
            throw LabError("GET \(ip) from cgroup \(cgroup) failed: \(result.stderr)\(result.stdout)")
        }
        return MiniHTTP.Response(status: status, body: body)
    }

    /// An HTTP GET from inside `pod` to `target` (the app's /whoami by default).
    /// `sourcePort` binds the client to that port on the pod's own address first.
    public func request(from pod: LabPod, to target: SocketAddress, path: String = "/whoami", timeout: Double = 3,
                        mark: UInt32? = nil, sourcePort: UInt16? = nil) throws -> MiniHTTP.Response {
        let source = try sourcePort.map { port -> SocketAddress in
            guard let ip = target.ip.isIPv6 ? pod.ipv6 : pod.ipv4 else { throw LabError("\(pod.name) has no address of that family") }
            return SocketAddress(ip, port)
        }
        return try get(from: pod.netns, to: target, path: path, timeout: timeout, mark: mark, source: source)
    }

    /// An HTTP GET from a socket made in `netns`.
    public func get(from netns: NetworkNamespace, to target: SocketAddress, path: String, timeout: Double,
                    mark: UInt32? = nil, source: SocketAddress? = nil) throws -> MiniHTTP.Response {
        let socket = try netns.run { try Socket(tcp: target.ip.family) }
        if let mark { try socket.setMark(mark) }
        if let source {
            try socket.setReuseAddress()
            try socket.bind(source)
        }
        try socket.setTimeout(seconds: timeout)
        try socket.connect(target)
        return try MiniHTTP.get(socket, host: target.description, path: path)
    }

    /// Sends one line to the node's proxy control socket and returns its answer.
    @discardableResult
    public func proxyControl(_ node: LabNode, _ line: String) throws -> String {
        let s = try UnixSocket.connect(path: node.proxyControlPath)
        try s.setTimeout(seconds: 10)
        try s.writeAll(line + "\n")
        let answer = try s.readLine() ?? ""
        guard answer.hasPrefix("OK") else { throw LabError("proxy on \(node.name): \(line) -> \(answer)") }
        return answer
    }

    /// Hands `pod` to its node's proxy (listeners on 15001/15006/15008 in the pod).
    /// `spoofSource`: inbound deliveries keep the client's source address (needs capture's policy routing).
    public func enrollInProxy(_ pod: LabPod, spoofSource: Bool) throws {
        let ips = pod.addresses.map(\.description).joined(separator: ",")
        try proxyControl(pod.node, "ADD \(pod.identity.uid) \(pod.netns.path) \(ips) \(spoofSource ? "spoof" : "nospoof")")
    }

    /// Takes `pod` away from its node's proxy.
    public func removeFromProxy(_ pod: LabPod) throws {
        try proxyControl(pod.node, "DEL \(pod.identity.uid)")
    }

    /// The proxy's records on `node` (throws ``RecordError`` when its file is missing or corrupt).
    public func proxyRecords(_ node: LabNode) throws -> [ProxyRecord] { try readRecords(ProxyRecord.self, from: node.proxyRecordsPath) }

    /// The app's records in `pod` (throws ``RecordError`` when its file is missing or corrupt).
    public func appRecords(_ pod: LabPod) throws -> [AppRecord] { try readRecords(AppRecord.self, from: pod.appRecordsPath) }
}

extension Lab {
    /// An HTTP GET from inside `pod` through its proxy's 15001 as an explicit proxy
    /// (`CONNECT <target>` first): the path every capture mode aims to be as fast as.
    public func requestViaProxy(from pod: LabPod, to target: SocketAddress, path: String = "/whoami", timeout: Double = 3) throws -> MiniHTTP.Response {
        let loopback = SocketAddress(IPAddress(target.ip.isIPv6 ? "::1" : "127.0.0.1")!, 15001)
        let socket = try pod.netns.run { try Socket(tcp: target.ip.family) }
        try socket.setTimeout(seconds: timeout)
        try socket.connect(loopback)
        try socket.writeAll("CONNECT \(target)\n")
        return try MiniHTTP.get(socket, host: target.description, path: path)
    }
}

extension Lab {
    /// Runs `program` inside `netns` and returns its stdout (for checks: iptables-save, ip rule, ipset).
    @discardableResult
    public func inNamespace(_ netns: NetworkNamespace, _ program: String, _ args: [String]) throws -> String {
        try Command.run("nsenter", ["--net=\(netns.path)", "--", try Command.resolve(program)] + args)
    }
}
