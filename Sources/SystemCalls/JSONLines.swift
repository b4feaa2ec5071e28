import Foundation
import Synchronization

/// A records file that cannot be read, or holds a line that is not a record.
public struct RecordError: Error, CustomStringConvertible {
    /// The file.
    public var path: String
    /// What is wrong.
    public var reason: String
    /// One line: the file and the reason.
    public var description: String { "\(path): \(reason)" }
}

/// Reads JSON-lines records. A missing file or a complete line that does not decode is an error,
/// never an empty answer (a check that something did not happen must not pass on nothing); a
/// last line without its newline is still being written and is left for the next read.
public func readRecords<T: Decodable>(_ type: T.Type, from path: String) throws -> [T] {
    let text: String
    do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
        throw RecordError(path: path, reason: "cannot be read: \(error.localizedDescription)")
    }
    let dec = JSONDecoder()
    return try text.split(separator: "\n", omittingEmptySubsequences: false).dropLast().enumerated().map { i, line in
        do { return try dec.decode(T.self, from: Data(line.utf8)) } catch {
            throw RecordError(path: path, reason: "line \(i + 1) is not a \(T.self): \(line.prefix(200))")
        }
    }
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
