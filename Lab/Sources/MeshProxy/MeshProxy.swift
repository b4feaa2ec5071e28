import Foundation
import Synchronization
import Glibc
import SystemCalls

/// The ports and mark of the proxy, with ztunnel's values as defaults.
public struct ProxyPorts: Sendable {
    /// Outbound capture listener.
    public var outbound: UInt16 = 15001
    /// Inbound plaintext capture listener.
    public var inbound: UInt16 = 15006
    /// Inbound tunnel (HBONE stand-in) listener, reached directly.
    public var tunnel: UInt16 = 15008
    /// DNS listener on each pod's loopback (127.0.0.1 and ::1), where DNS capture sends queries.
    public var dns: UInt16 = 15053
    /// Where the DNS listener forwards names outside ``MeshProxy/dnsZone`` (nil: it refuses them).
    public var dnsUpstream: SocketAddress?
    /// SO_MARK on every socket the proxy opens.
    public var mark: UInt32 = 0x539
    /// Creates the defaults.
    public init() {}
}

/// One enrolled pod as the proxy knows it.
public struct ProxyWorkload: Sendable {
    /// Pod UID.
    public var uid: String
    /// Path of the pod's network namespace.
    public var netns: String
    /// The pod's addresses.
    public var addresses: [IPAddress]
    /// Deliver inbound connections with the original client's source address (transparent).
    public var spoofSource: Bool
    /// Creates a workload.
    public init(uid: String, netns: String, addresses: [IPAddress], spoofSource: Bool) {
        self.uid = uid; self.netns = netns; self.addresses = addresses; self.spoofSource = spoofSource
    }
}

/// A stand-in for ztunnel: per enrolled pod, listeners inside the pod's network namespace on
/// 15001/15006/15008 (IP_TRANSPARENT, SO_MARK 0x539); outbound connections are tunnelled to the
/// destination pod's 15008 with a one-line `CONNECT <dst> <client>` header; inbound ones are
/// delivered to the local app. Each handled connection is recorded.
public final class MeshProxy: Sendable {
    /// Ports and mark.
    public let ports: ProxyPorts
    private let records: RecordWriter
    private let workloads = Mutex<[String: PodListeners]>([:])

    /// Creates a proxy writing its connection records to `records`.
    public init(ports: ProxyPorts = ProxyPorts(), records: RecordWriter) {
        self.ports = ports
        self.records = records
    }

    /// Whether listeners use SO_REUSEPORT (so a new proxy can listen beside a draining one): only
    /// where bpf_sk_assign takes reuseport sockets (Linux 6.5+).
    static let reusePort = KernelRelease.atLeast(6, 5)

    /// The names the proxy answers itself, as ztunnel answers for the mesh's services.
    public static let dnsZone = "mesh.lab."
    /// What every name of that zone resolves to (Istio allocates such addresses from 240.240.0.0/16
    /// and 2001:2::/48).
    public static let dnsZoneAddresses = [IPAddress("240.240.0.1")!, IPAddress("2001:2::1")!]

    /// The DNS answers of this proxy.
    var dnsResponder: DNSResponder {
        DNSResponder(zone: Self.dnsZone, addresses: Self.dnsZoneAddresses, upstream: ports.dnsUpstream, mark: ports.mark)
    }

    /// Records one answered DNS query of `workload`'s.
    func recordDNS(_ workload: ProxyWorkload, client: SocketAddress, transport: String, by: String) {
        var r = ProxyRecord(pod: workload.uid, listener: ports.dns, client: client.description)
        r.method = "dns-\(transport)"
        r.upstream = by
        records.write(r)
    }

    /// Enrolled pod UIDs.
    public var enrolled: [String] { workloads.withLock { Array($0.keys).sorted() } }

    /// Opens the pod's listeners. A pod already served keeps its listeners (an agent that
    /// restarts hands every pod over again; closing listeners then would drop connections).
    public func add(_ workload: ProxyWorkload) throws {
        if workloads.withLock({ $0[workload.uid] != nil }) { return }
        let listeners = try PodListeners.open(workload, proxy: self)
        workloads.withLock { $0[workload.uid] = listeners }
    }

    /// Closes the pod's listeners (connections in flight finish). No-op for an unknown pod.
    public func remove(uid: String) {
        let old = workloads.withLock { $0.removeValue(forKey: uid) }
        old?.close()
    }

    // MARK: connection handling (runs on threads inside the pod's namespace)

    func handle(_ conn: Socket, listener: UInt16, workload: ProxyWorkload) {
        let client = (try? conn.peerAddress()) ?? SocketAddress(IPAddress("0.0.0.0")!, 0)
        try? conn.setNoDelay()
        var record = ProxyRecord(pod: workload.uid, listener: listener, client: client.description)
        do {
            let upstream: Socket
            switch listener {
            case ports.outbound: upstream = try outbound(conn, client: client, record: &record)
            case ports.tunnel: upstream = try tunnelInbound(conn, workload: workload, record: &record)
            default: upstream = try plainInbound(conn, client: client, workload: workload, record: &record)
            }
            records.write(record)
            Relay.run(conn, upstream)
        } catch {
            record.error = "\(error)"
            records.write(record)
            conn.close()
        }
    }

    /// 15001: find where the app meant to go, open a tunnel to that pod's 15008.
    private func outbound(_ conn: Socket, client: SocketAddress, record: inout ProxyRecord) throws -> Socket {
        let (dst, method) = try destination(of: conn, listener: ports.outbound)
        record.originalDestination = dst.description
        record.method = method
        let tunnelAddr = SocketAddress(dst.ip, ports.tunnel)
        record.upstream = tunnelAddr.description
        do {
            let up = try Socket.connected(to: tunnelAddr, mark: ports.mark, timeout: 5)
            try up.setTimeout(seconds: 0)
            try up.writeAll("CONNECT \(dst) \(client)\n")
            return up
        } catch let e as SystemError where e.code == ECONNREFUSED {
            // No tunnel listener: the destination is outside the mesh. Like ztunnel for a
            // workload it has no HBONE for, pass the connection through in plaintext.
            record.method += "+passthrough"
            record.upstream = dst.description
            let up = try Socket.connected(to: dst, mark: ports.mark, timeout: 5)
            try up.setTimeout(seconds: 0)
            return up
        }
    }

    /// 15008: read the tunnel header and deliver to the local app.
    private func tunnelInbound(_ conn: Socket, workload: ProxyWorkload, record: inout ProxyRecord) throws -> Socket {
        try conn.setTimeout(seconds: 5)
        guard let line = try conn.readLine() else { throw ProxyError("tunnel closed before its header") }
        try conn.setTimeout(seconds: 0)
        let parts = line.split(separator: " ").map(String.init)
        guard parts.count == 3, parts[0] == "CONNECT", let dst = SocketAddress(parsing: parts[1]),
              let origin = SocketAddress(parsing: parts[2]) else { throw ProxyError("bad tunnel header: \(line.prefix(100))") }
        record.originalDestination = dst.description
        record.method = "tunnel"
        record.client = origin.description
        return try deliver(to: dst, from: origin, workload: workload, record: &record)
    }

    /// 15006: plaintext inbound captured by the dataplane.
    private func plainInbound(_ conn: Socket, client: SocketAddress, workload: ProxyWorkload, record: inout ProxyRecord) throws -> Socket {
        let (dst, method) = try destination(of: conn, listener: ports.inbound)
        record.originalDestination = dst.description
        record.method = method
        return try deliver(to: dst, from: client, workload: workload, record: &record)
    }

    private func deliver(to dst: SocketAddress, from origin: SocketAddress, workload: ProxyWorkload, record: inout ProxyRecord) throws -> Socket {
        guard workload.addresses.contains(dst.ip) else { throw ProxyError("\(dst) is not an address of this pod") }
        guard ![ports.outbound, ports.inbound, ports.tunnel].contains(dst.port) else { throw ProxyError("refusing to loop to \(dst)") }
        record.upstream = dst.description
        let source = workload.spoofSource && origin.ip.family == dst.ip.family ? SocketAddress(origin.ip, 0) : nil
        let up = try Socket.connected(to: dst, from: source, mark: ports.mark, timeout: 5)
        try up.setTimeout(seconds: 0)
        return up
    }

    /// The original destination: SO_ORIGINAL_DST after NAT, the local address after transparent
    /// delivery, or an explicit `CONNECT host:port` line from a client that talks to the proxy.
    private func destination(of conn: Socket, listener: UInt16) throws -> (SocketAddress, String) {
        let local = try conn.localAddress()
        if let o = conn.originalDestination(ipv6: local.ip.isIPv6), o != local { return (o, "original-dst") }
        if local.port != listener { return (local, "local-address") }
        try conn.setTimeout(seconds: 5)
        defer { try? conn.setTimeout(seconds: 0) }
        guard let line = try conn.readLine(), line.hasPrefix("CONNECT "),
              let dst = SocketAddress(parsing: String(line.dropFirst(8)).trimmingCharacters(in: .whitespaces)) else {
            throw ProxyError("explicit client sent no CONNECT line")
        }
        return (dst, "explicit")
    }
}

/// A proxy error with a message.
public struct ProxyError: Error, CustomStringConvertible {
    /// The message.
    public var description: String
    /// Creates one.
    public init(_ d: String) { description = d }
}

/// What the proxy handled for one connection, written as one JSON line.
public struct ProxyRecord: Codable, Sendable {
    /// Pod UID.
    public var pod: String
    /// Listener port.
    public var listener: UInt16
    /// The client as accepted (for 15008: the origin named in the tunnel header).
    public var client: String
    /// The destination the client meant.
    public var originalDestination = ""
    /// How it was found: `original-dst` (NAT), `local-address` (transparent delivery),
    /// `explicit` (the client sent CONNECT), `tunnel` (the 15008 header).
    public var method = ""
    /// Where it went.
    public var upstream = ""
    /// Failure, if any.
    public var error: String?
    init(pod: String, listener: UInt16, client: String) { self.pod = pod; self.listener = listener; self.client = client }
}

