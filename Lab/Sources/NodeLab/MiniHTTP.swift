import Foundation
import SystemCalls

/// The smallest HTTP/1.1 the lab needs: one GET per connection, `Connection: close`.
public enum MiniHTTP {
    /// A parsed response.
    public struct Response: Sendable {
        /// Status code.
        public var status: Int
        /// Body text.
        public var body: String
    }

    /// Sends `GET path` on `socket` and reads the whole response.
    public static func get(_ socket: Socket, host: String, path: String) throws -> Response {
        try socket.writeAll("GET \(path) HTTP/1.1\r\nHost: \(host)\r\nConnection: close\r\n\r\n")
        let raw = String(decoding: try socket.readToEnd(), as: UTF8.self)
        return try parse(raw)
    }

    /// Parses a raw HTTP response.
    public static func parse(_ raw: String) throws -> Response {
        guard let headEnd = raw.range(of: "\r\n\r\n") else { throw LabError("incomplete HTTP response: \(raw.prefix(200))") }
        let statusLine = raw[..<headEnd.lowerBound].split(separator: "\r\n").first ?? ""
        let parts = statusLine.split(separator: " ")
        guard parts.count >= 2, let code = Int(parts[1]) else { throw LabError("bad status line: \(statusLine)") }
        return Response(status: code, body: String(raw[headEnd.upperBound...]))
    }

    /// Formats a response with a body.
    public static func response(status: Int, reason: String, body: String) -> String {
        "HTTP/1.1 \(status) \(reason)\r\nContent-Type: text/plain\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
    }
}

/// What the app server saw for one accepted connection.
public struct AppRecord: Codable, Sendable {
    /// The pod name.
    public var pod: String
    /// The port it was accepted on.
    public var port: UInt16
    /// The peer as the app sees it.
    public var client: String
    /// The local address.
    public var server: String
    /// The HTTP path, for HTTP.
    public var path: String?
    /// Creates a record.
    public init(pod: String, port: UInt16, client: String, server: String, path: String?) {
        self.pod = pod; self.port = port; self.client = client; self.server = server; self.path = path
    }
}

