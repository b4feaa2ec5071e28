import CShim
import Foundation
import SystemCalls

/// One capture decision from the programs' ring buffer (struct ra_event), decoded.
public struct CaptureEvent: Codable, Sendable, Equatable {
    /// When, as wall-clock time (from the event's CLOCK_MONOTONIC stamp).
    public var time: Date
    /// The pod's counter index (0: no pod entry matched).
    public var podIndex: UInt32
    /// namespace/name, where known.
    public var pod: String?
    /// Where it was decided: `tc-egress`, `tc-ingress`, `socket`.
    public var hook: String
    /// `tcp`, `udp`, or the protocol number.
    public var proto: String
    /// Source `address:port` (`?` from a socket hook, which sees only the destination).
    public var source: String
    /// Destination `address:port`.
    public var destination: String
    /// The decision (``Decision``'s name).
    public var decision: String
    /// The proxy port the traffic was handed to, for captures.
    public var proxyPort: UInt16?
    /// The interface index (tc hooks).
    public var ifindex: UInt32

    /// Decodes one ring buffer record; nil when it is not one. `monotonicNow` and `wallNow` place
    /// its stamp in wall-clock time; `config` gives the proxy ports.
    public init?(record: [UInt8], monotonicNow: UInt64, wallNow: Date, config: KernelConfig?) {
        guard record.count >= MemoryLayout<ra_event>.size else { return nil }
        let e = record.withUnsafeBytes { $0.loadUnaligned(as: ra_event.self) }
        guard let decision = Decision(rawValue: e.decision) else { return nil }
        time = wallNow.addingTimeInterval(-Double(Int64(bitPattern: monotonicNow &- e.time_ns)) / 1e9)
        podIndex = e.pod_index
        hook = ["tc-egress", "tc-ingress", "socket"][Int(min(e.hook, 2))]
        proto = e.protocol == 6 ? "tcp" : e.protocol == 17 ? "udp" : "\(e.protocol)"
        let family = e.family == 10 ? UInt32(10) : 2
        let src = MapSync.ip(family: family, e.src), dst = MapSync.ip(family: family, e.dst)
        source = e.hook == UInt8(RA_HOOK_SOCKET.rawValue) ? "?" : SocketAddress(src, UInt16(bigEndian: e.sport)).description
        destination = SocketAddress(dst, UInt16(bigEndian: e.dport)).description
        self.decision = decision.description
        proxyPort = config.flatMap { c in
            switch decision {
            case .outboundCaptured: c.outboundPort
            case .inboundCaptured: c.inboundPort
            case .hbonePass: c.tunnelPort
            case .dnsCaptured: c.dnsPort
            default: nil
            }
        }
        ifindex = e.ifindex
    }

    /// One line: time, pod, hook, flow, decision.
    public var text: String {
        let stamp = ISO8601DateFormatter.string(from: time, timeZone: TimeZone(identifier: "UTC")!, formatOptions: [.withInternetDateTime, .withFractionalSeconds])
        return "\(stamp)  \(pod ?? "pod \(podIndex)")  \(hook)  \(proto) \(source) -> \(destination)  \(decision)" + (proxyPort.map { " (to the proxy's \($0))" } ?? "")
    }
}
