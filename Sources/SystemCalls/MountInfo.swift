import Foundation

/// One line of /proc/self/mountinfo (proc(5)): where a mount sits and how it propagates.
public struct MountEntry: Sendable, Equatable {
    /// The mount's ID.
    public var id: Int
    /// The parent mount's ID.
    public var parentID: Int
    /// Where it is mounted, unescaped.
    public var mountPoint: String
    /// The optional fields: `shared:N`, `master:N`, `propagate_from:N`, `unbindable`.
    public var optionalFields: [String]
    /// The filesystem type, e.g. `bpf`.
    public var fsType: String

    /// Creates an entry from its fields.
    public init(id: Int, parentID: Int, mountPoint: String, optionalFields: [String], fsType: String) {
        self.id = id
        self.parentID = parentID
        self.mountPoint = mountPoint
        self.optionalFields = optionalFields
        self.fsType = fsType
    }

    /// A mount made below this one reaches other mount namespaces only when this one is shared.
    public var isShared: Bool { optionalFields.contains { $0.hasPrefix("shared:") } }
}

/// The mount table of the calling process.
public enum MountInfo {
    /// Parses mountinfo text; lines that do not have the documented shape are skipped.
    public static func parse(_ text: String) -> [MountEntry] {
        text.split(separator: "\n").compactMap(entry)
    }

    /// The mount table of this process's mount namespace.
    public static func current() throws -> [MountEntry] {
        guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else {
            throw SystemError("read /proc/self/mountinfo", code: errno == 0 ? ENOENT : errno)
        }
        return parse(text)
    }

    /// The mount that holds `path` (absolute, without `..`): the longest mount point that is a
    /// prefix of it by whole components; of mounts stacked on one point, the last listed (on top).
    public static func mount(containing path: String, in entries: [MountEntry]) -> MountEntry? {
        var best: MountEntry?
        for e in entries where isPrefix(e.mountPoint, of: path) {
            if best == nil || e.mountPoint.count >= best!.mountPoint.count { best = e }
        }
        return best
    }

    private static func isPrefix(_ mountPoint: String, of path: String) -> Bool {
        if mountPoint == "/" || mountPoint == path { return true }
        return path.hasPrefix(mountPoint + "/")
    }

    // "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue"
    private static func entry(_ line: Substring) -> MountEntry? {
        let fields = line.split(separator: " ", omittingEmptySubsequences: false)
        guard fields.count >= 10, let sep = fields.firstIndex(of: "-"), sep >= 6, sep + 1 < fields.count,
              let id = Int(fields[0]), let parent = Int(fields[1]) else { return nil }
        return MountEntry(id: id, parentID: parent, mountPoint: unescape(fields[4]),
                          optionalFields: fields[6..<sep].map(String.init), fsType: String(fields[sep + 1]))
    }

    // The kernel writes space, tab, newline and backslash in paths as \ooo octal.
    private static func unescape(_ s: Substring) -> String {
        var out = [UInt8]()
        let b = Array(s.utf8)
        var i = 0
        while i < b.count {
            if b[i] == UInt8(ascii: "\\"), i + 4 <= b.count,
               let v = UInt8(String(decoding: b[(i + 1)..<(i + 4)], as: UTF8.self), radix: 8) {
                out.append(v)
                i += 4
            } else {
                out.append(b[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
