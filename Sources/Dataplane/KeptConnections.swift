import SystemCalls

/// A TCP connection a pod had when it was enrolled. It keeps going uncaptured until it closes, as
/// under Istio's iptables rules (conntrack knows it, and the nat table acts on new flows only);
/// every connection opened later is captured.
public struct KeptConnection: Sendable, Hashable {
    /// The pod socket's cookie: how the ebpf programs recognise it (cookies are never reused).
    public var cookie: UInt64
    /// Who opened it (the pod for its outbound connections, the peer for inbound ones).
    public var from: SocketAddress
    /// Where it was opened to.
    public var to: SocketAddress
}

/// Finds the connections to keep in a pod that is about to be enrolled.
public enum KeptConnections {
    /// The connections of the namespace at `netns` that capture would break: established or
    /// closing, with a peer outside the namespace. Read before capture is attached, so none of them
    /// can be a captured one.
    public static func snapshot(netns: String) throws -> [KeptConnection] {
        try NetworkNamespace(path: netns).run { try current() }
    }

    /// Tells conntrack about the connections of the namespace at `netns` (of the families given,
    /// `true` for IPv6) before rules that need conntrack load: one opened before has no entry, and
    /// its next packet would look new to a nat table, which would redirect it mid-stream (the proxy
    /// resets it). Each gets an established entry; connections opened from then on are new and captured.
    public static func keepInConntrack(netns: String, families: [Bool]) throws {
        try NetworkNamespace(path: netns).run {
            for c in try current() where families.contains(c.from.ip.isIPv6) {
                try Conntrack.insertEstablished(from: c.from, to: c.to)
            }
        }
    }

    /// The same, in the calling thread's namespace.
    public static func current() throws -> [KeptConnection] {
        let sockets = try SocketDiag.tcp(states: SocketDiag.connectedStates + [SocketDiag.listenState])
        return select(sockets, localAddresses: Set(try Netlink.addresses()))
    }

    /// The connections among `sockets` that reach outside the namespace, each with its direction:
    /// inbound when its local port is one the namespace listens on (conntrack only needs the
    /// direction to tell replies from requests). Connections over loopback or to the namespace's
    /// own addresses never cross the pod's interfaces and are not captured anyway.
    public static func select(_ sockets: [SocketDiag.Connection], localAddresses: Set<IPAddress>) -> [KeptConnection] {
        let listening = Set(sockets.filter { $0.state == SocketDiag.listenState }.map(\.local.port))
        return sockets.compactMap { s in
            guard s.state != SocketDiag.listenState, !s.remote.ip.isReserved, !localAddresses.contains(s.remote.ip) else { return nil }
            let inbound = listening.contains(s.local.port)
            return KeptConnection(cookie: s.cookie, from: inbound ? s.remote : s.local, to: inbound ? s.local : s.remote)
        }
    }
}
