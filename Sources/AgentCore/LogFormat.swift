import Foundation
import Logging

/// How the agent writes its log: one line per event, every value escaped, as text or JSON.
public enum LogFormat: String, Sendable, CaseIterable {
    /// `time level label: message key="value" ...`
    case text
    /// One JSON object per line, for log pipelines.
    case json

    /// Makes every Logger in the process write this format to stderr.
    public func bootstrap(level: Logger.Level = .info) {
        LoggingSystem.bootstrap { label in
            var h = LineLogHandler(label: label, format: self)
            h.logLevel = level
            return h
        }
    }
}

/// A swift-log handler that can never be made to print two lines for one event: messages and
/// metadata values are escaped (text) or JSON-encoded (json).
public struct LineLogHandler: LogHandler {
    /// The logger's label.
    public let label: String
    /// text or json.
    public let format: LogFormat
    /// Metadata on every line.
    public var metadata: Logger.Metadata = [:]
    /// The lowest level written.
    public var logLevel: Logger.Level = .info

    /// Creates a handler.
    public init(label: String, format: LogFormat) { self.label = label; self.format = format }

    /// Metadata by key.
    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// Writes one event.
    public func log(event: LogEvent) {
        let all = metadata.merging(event.metadata ?? [:]) { $1 }
        let line = Self.render(format: format, label: label, level: event.level, message: "\(event.message)", metadata: all, time: Date())
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }

    /// The line for one event (no trailing newline).
    public static func render(format: LogFormat, label: String, level: Logger.Level, message: String, metadata: Logger.Metadata, time: Date) -> String {
        let stamp = ISO8601DateFormatter().string(from: time)
        let fields = metadata.sorted { $0.key < $1.key }.map { ($0.key, "\($0.value)") }
        switch format {
        case .text:
            let kv = fields.map { " \(LogEscaping.escape($0.0))=\"\(LogEscaping.escape($0.1))\"" }.joined()
            return "\(stamp) \(level) \(LogEscaping.escape(label)): \(LogEscaping.escape(message))\(kv)"
        case .json:
            var object: [String: String] = ["time": stamp, "level": "\(level)", "logger": label, "msg": message]
            for (k, v) in fields where object[k] == nil { object[k] = v }
            let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
            return String(decoding: data, as: UTF8.self)
        }
    }
}
