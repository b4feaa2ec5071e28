import Foundation

/// Reads JSON-lines records.
public func readRecords<T: Decodable>(_ type: T.Type, from path: String) -> [T] {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
    let dec = JSONDecoder()
    return text.split(separator: "\n").compactMap { try? dec.decode(T.self, from: Data($0.utf8)) }
}

/// Appends JSON-lines records to a file, thread-safe.
public final class RecordWriter: @unchecked Sendable {
    private let handle: FileHandle?
    private let lock = NSLock()
    private let encoder = JSONEncoder()

    /// Opens (creates) `path` for appending; nil path writes nothing.
    public init(path: String?) {
        if let path {
            _ = FileManager.default.createFile(atPath: path, contents: nil)
            handle = FileHandle(forWritingAtPath: path)
            handle?.seekToEndOfFile()
        } else {
            handle = nil
        }
        encoder.outputFormatting = [.sortedKeys]
    }

    /// Appends one record.
    public func write<T: Encodable>(_ record: T) {
        guard let handle, var data = try? encoder.encode(record) else { return }
        data.append(0x0a)
        lock.withLock { handle.write(data) }
    }
}
