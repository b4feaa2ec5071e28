import Foundation

/// Any JSON document, as the stand-in API server stores objects: Kubernetes objects are open-ended,
/// and a merge patch acts on whatever keys it names.
public enum JSONValue: Codable, Sendable, Equatable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    /// Decodes any JSON value.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let n = try? c.decode(Double.self) { self = .number(n) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSONValue].self) { self = .array(a) }
        else { self = .object(try c.decode([String: JSONValue].self)) }
    }

    /// Encodes it back; whole numbers print without a fraction.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .number(let n): if n == n.rounded(), abs(n) < 1e15 { try c.encode(Int64(n)) } else { try c.encode(n) }
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }

    /// Parses a document.
    public static func parse(_ data: Data) throws -> JSONValue { try JSONDecoder().decode(JSONValue.self, from: data) }

    /// Serializes it (keys sorted, so answers are stable).
    public func data() -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? e.encode(self)) ?? Data("null".utf8)
    }

    /// A member of an object (nil for anything else or a missing key); setting on a non-object makes it one.
    public subscript(key: String) -> JSONValue? {
        get { if case .object(let o) = self { return o[key] } else { return nil } }
        set {
            var o: [String: JSONValue] = [:]
            if case .object(let existing) = self { o = existing }
            o[key] = newValue
            self = .object(o)
        }
    }

    /// The value at a path of object keys.
    public subscript(path path: [String]) -> JSONValue? {
        get { path.reduce(Optional(self)) { $0?[$1] } }
        set {
            guard let first = path.first else { self = newValue ?? .null; return }
            if path.count == 1 { self[first] = newValue; return }
            var child = self[first] ?? .object([:])
            child[path: Array(path.dropFirst())] = newValue
            self[first] = child
        }
    }

    /// The string, if it is one.
    public var string: String? { if case .string(let s) = self { return s } else { return nil } }

    /// The object's members as strings (labels, annotations).
    public var stringMap: [String: String] {
        guard case .object(let o) = self else { return [:] }
        return o.compactMapValues(\.string)
    }

    /// RFC 7386 JSON merge patch: objects merge key by key, null deletes, anything else replaces.
    /// (A strategic merge patch acts the same on the maps and scalars the stand-in's clients patch.)
    public func merged(with patch: JSONValue) -> JSONValue {
        guard case .object(let p) = patch else { return patch }
        var out: [String: JSONValue] = [:]
        if case .object(let o) = self { out = o }
        for (k, v) in p {
            if v == .null { out[k] = nil } else { out[k] = (out[k] ?? .null).merged(with: v) }
        }
        return .object(out)
    }
}
