import CShim
import Foundation
import Glibc
import SwiftProtobuf
import SystemCalls

/// One SOCK_SEQPACKET connection carrying ZDS messages: one protobuf message per datagram, a
/// namespace fd as SCM_RIGHTS beside AddWorkload.
public final class ZDSChannel: Sendable {
    /// The socket.
    public let socket: Socket

    /// Wraps a connected socket.
    public init(socket: Socket) { self.socket = socket }

    /// Connects to the agent's socket at `path`.
    public static func connect(path: String) throws -> ZDSChannel {
        ZDSChannel(socket: try UnixSocket.connect(path: path, type: cshim_sock_seqpacket()))
    }

    /// Sends `message`, with `fd` attached when given.
    public func send<M: SwiftProtobuf.Message>(_ message: M, fd: Int32 = -1) throws {
        let data: [UInt8] = try message.serializedBytes()
        let n = try retryingEINTR("zds send") { data.withUnsafeBytes { cshim_send_with_fd(socket.fd, $0.baseAddress, data.count, fd) } }
        if n != data.count { throw SystemError("zds send: short write", code: EIO) }
    }

    /// Receives one message; nil when the peer closed. Throws on a datagram that does not decode.
    public func receive<M: SwiftProtobuf.Message>(_ type: M.Type) throws -> (M, Int32)? {
        var buf = [UInt8](repeating: 0, count: 65536)
        var fd: Int32 = -1
        let n = try retryingEINTR("zds recv") { buf.withUnsafeMutableBytes { cshim_recv_with_fd(socket.fd, $0.baseAddress, $0.count, &fd) } }
        if n == 0 { return nil }
        do {
            return (try M(serializedBytes: Array(buf[0..<n])), fd)
        } catch {
            if fd >= 0 { close(fd) }
            throw ZDSError("undecodable \(M.self) (\(n) bytes): \(error)")
        }
    }
}

/// A ZDS peer broke the protocol.
public struct ZDSError: Error, CustomStringConvertible {
    /// What happened.
    public var description: String
    /// Creates one.
    public init(_ d: String) { description = d }
}
