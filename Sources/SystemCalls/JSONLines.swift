import Foundation
import Synchronization

/// Reads JSON-lines records.
public func readRecords<T: Decodable>(_ type: T.Type, from path: String) -> [T] {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
    let dec = JSONDecoder()
    return text.split(separator: "\n").compactMap { try? dec.decode(T.self, from: Data($0.utf8)) }
}

/// Appends JSON-lines records to a file, thread-safe.
public final class RecordWriter: Sendable {
    private let handle: Mutex<FileHandle?>

    /// Opens (creates) `path` for appending; nil path writes nothing.
    public init(path: String?) {
        var h: FileHandle?
        if let path {
            _ = FileManager.default.createFile(atPath: path, contents: nil)
            h = FileHandle(forWritingAtPath: path)
            h?.seekToEndOfFile()
        }
        handle = Mutex(h)
    }

    /// Appends one record.
    public func write<T: Encodable>(_ record: T) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        guard var data = try? encoder.encode(record) else { return }
        data.append(0x0a)
        handle.withLock { $0?.write(data) }
    }
}
